//! PyTorch checkpoints written by PyTorch itself (`tests/fixtures/pytorch/`, made by
//! `scripts/make_pytorch_fixtures.py`; no Python is needed here): every format and layout reads
//! back the values the script wrote, `imixer export` writes exactly the reference key set, and
//! truncated or corrupted copies are errors, never panics.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device};
use common::run_bin;
use imixer::checkpoint::shapes::expected;
use imixer::checkpoint::{load_model, Checkpoint, Format, ModelSpec, Weights};
use imixer::config::{Family, ModelConfig};
use imixer::MixerNet;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pytorch")
        .join(name)
}

/// The script's values: ((7j + 3·len(name)) mod 17 − 8) / 16, + 0.5 for the EMA copies.
fn pattern(name: &str, n: usize, ema: bool) -> Vec<f32> {
    (0..n)
        .map(|j| ((7 * j + 3 * name.len()) % 17) as f32 / 16.0 - 0.5 + if ema { 0.5 } else { 0.0 })
        .collect()
}

/// The fixture models (the script's MODELS table).
fn fixture_config(family: Family) -> ModelConfig {
    let (img, chans, patch, dim, depth, classes) = match family {
        Family::IMixer => (8, 3, 4, 8, 2, 5),
        Family::ParaMixer => (8, 1, 2, 6, 2, 4),
        _ => (12, 3, 4, 4, 1, 3),
    };
    let mut cfg = ModelConfig {
        family,
        img_size: img,
        in_chans: chans,
        patch_size: patch,
        embed_dim: dim,
        depth,
        num_classes: classes,
        ..ModelConfig::default()
    };
    if family == Family::IMixer {
        cfg.imixer.hidden_ratio = 1.5;
        cfg.imixer.n_iter = 4;
    }
    cfg
}

fn reference_names(cfg: &ModelConfig) -> BTreeSet<String> {
    expected(cfg).into_iter().map(|(n, _)| n).collect()
}

/// Opens and decodes `path`, checking every value against the pattern.
fn check_values(path: &Path, weights: Weights, family: Family, dtype: DType) -> Checkpoint {
    let ckpt = Checkpoint::open(path, weights).unwrap();
    let names: BTreeSet<String> = ckpt.shapes.keys().cloned().collect();
    assert_eq!(
        names,
        reference_names(&fixture_config(family)),
        "{}",
        path.display()
    );
    let notes = ckpt.notes.clone();
    let reopened = Checkpoint::open(path, weights).unwrap();
    for (name, t) in reopened.decode(&Device::Cpu).unwrap() {
        assert_eq!(t.dtype(), dtype, "{name}");
        let v = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            v,
            pattern(&name, v.len(), weights == Weights::Ema),
            "{name} of {}",
            path.display()
        );
    }
    assert!(!notes.is_empty());
    ckpt
}

#[test]
fn the_official_training_checkpoint_reads_in_both_formats() {
    for (file, format) in [
        ("imixer_train.pth.tar", Format::TorchZip),
        ("imixer_train_legacy.pth.tar", Format::TorchLegacy),
    ] {
        let path = fixture(file);
        let ckpt = check_values(&path, Weights::Model, Family::IMixer, DType::F32);
        assert_eq!(ckpt.format, format);
        let notes = ckpt.notes.join("\n");
        for says in [
            "read 50 tensors from state_dict",
            "stripped the DDP prefix `module.`",
            "optimizer (a dict of 2 entries)",
            "args (an object of class argparse.Namespace) is not unpickled",
            "epoch = 3",
            "pass --ema",
        ] {
            assert!(notes.contains(says), "{file}: {says:?} not in\n{notes}");
        }
        assert_eq!(ckpt.hints.n_iter, Some(4));
        assert_eq!(ckpt.hints.hidden_ratio, Some(1.5));
        check_values(&path, Weights::Ema, Family::IMixer, DType::F32);

        // The settings: shapes for the sizes and h_ratio, the training args for n_iter.
        let loaded = load_model(&path, &ModelSpec::default(), &Device::Cpu).unwrap();
        assert_eq!(loaded.net.config, fixture_config(Family::IMixer));
        assert!(
            loaded.resolved.warnings.is_empty(),
            "{:?}",
            loaded.resolved.warnings
        );
        // A flag beats the file's args.
        let spec = ModelSpec {
            n_iter: Some(2),
            ..ModelSpec::default()
        };
        let net = load_model(&path, &spec, &Device::Cpu).unwrap().net;
        assert_eq!(net.config.imixer.n_iter, 2);
    }
}

#[test]
fn bare_state_dicts_half_precision_and_strided_views_read() {
    let para = fixture("paramixer_fp16.bin");
    let ckpt = check_values(&para, Weights::Model, Family::ParaMixer, DType::F16);
    assert_eq!(ckpt.format, Format::TorchZip);
    // ParaMixer and AsymMixer have the same tensors: the family must be given.
    let err = format!(
        "{:#}",
        load_model(&para, &ModelSpec::default(), &Device::Cpu)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("--family") && err.contains("paramixer_fp16.bin"),
        "{err}"
    );
    let spec = ModelSpec {
        family: Some(Family::ParaMixer),
        ..ModelSpec::default()
    };
    let loaded = load_model(&para, &spec, &Device::Cpu).unwrap();
    assert_eq!(loaded.net.config, fixture_config(Family::ParaMixer));
    // Nothing tells the block repeats of a bare state_dict: assumed, and said so.
    assert!(loaded
        .resolved
        .warnings
        .iter()
        .any(|w| w.contains("n_iter")));
    assert!(matches!(
        Checkpoint::open(&para, Weights::Ema),
        Err(e) if format!("{e:#}").contains("no EMA weights")
            && matches!(e.root(), imixer::checkpoint::CheckpointError::NoWeights { weights: Weights::Ema, .. })
    ));

    // {"model": state_dict} in the legacy format at pickle protocol 4, head.weight a transposed
    // view of its storage.
    let mixer = fixture("mixer_model_legacy_p4.pth");
    let ckpt = check_values(&mixer, Weights::Model, Family::Mixer, DType::F32);
    assert_eq!(ckpt.format, Format::TorchLegacy);
    let net = MixerNet::load(&mixer, None, &Device::Cpu).unwrap();
    assert_eq!(net.config, fixture_config(Family::Mixer));
}

#[test]
fn registry_settings_are_overridden_and_misfits_listed() {
    let path = fixture("imixer_train.pth.tar");
    let mut spec = ModelSpec::named("imixer_s16_224").unwrap();
    spec.num_classes = Some(100);
    let err = format!(
        "{:#}",
        load_model(&path, &spec, &Device::Cpu).err().unwrap()
    );
    for says in [
        "does not match the imixer model from the registered model imixer_s16_224 with --num-classes",
        "head.weight: file has shape [5, 8], model needs [100, 512]",
        "blocks.1.mlp_tokens.fc_sn1.weight_orig: file has shape [6, 4], model needs [512, 256]",
        "the configuration has depth 8 but the file holds 2 blocks",
    ] {
        assert!(err.contains(says), "{says:?} not in\n{err}");
    }
    for (spec, says) in [
        (
            ModelSpec {
                hidden_ratio: Some(2.0),
                ..ModelSpec::default()
            },
            "blocks.0.mlp_tokens.fc_sn1.weight_orig: file has shape [6, 4], model needs [8, 4]",
        ),
        (
            ModelSpec {
                num_classes: Some(7),
                ..ModelSpec::default()
            },
            "head.bias: file has shape [5], model needs [7]",
        ),
        (
            ModelSpec {
                family: Some(Family::Mixer),
                ..ModelSpec::default()
            },
            "unexpected blocks.0.mlp_tokens.fc_sn1.bias [6]",
        ),
    ] {
        let err = format!(
            "{:#}",
            load_model(&path, &spec, &Device::Cpu).err().unwrap()
        );
        assert!(err.contains(says), "{says:?} not in\n{err}");
    }
    let spec = ModelSpec {
        n_iter: Some(3),
        ..ModelSpec::default()
    };
    let err = load_model(&fixture("mixer_model_legacy_p4.pth"), &spec, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(err.root(), imixer::checkpoint::CheckpointError::Settings(_)),
        "{err:?}"
    );
    let err = format!("{err:#}");
    assert!(err.contains("--n-iter does not apply to mixer"), "{err}");
}

/// Names and shapes of a safetensors file.
fn safetensors_shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let f = imixer::checkpoint::read(path, &Device::Cpu).unwrap();
    f.tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect()
}

#[test]
fn export_writes_exactly_the_reference_state_dict() {
    common::single_thread();
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(120);
    for (file, extra, family, ema) in [
        ("imixer_train.pth.tar", vec![], Family::IMixer, false),
        (
            "imixer_train_legacy.pth.tar",
            vec!["--ema"],
            Family::IMixer,
            true,
        ),
        (
            "paramixer_fp16.bin",
            vec!["--family", "paramixer"],
            Family::ParaMixer,
            false,
        ),
        ("mixer_model_legacy_p4.pth", vec![], Family::Mixer, false),
    ] {
        let out = dir.path().join(format!("{file}.safetensors"));
        let config = dir.path().join(format!("{file}.json"));
        let mut args = vec![
            "export".to_string(),
            "--checkpoint".into(),
            fixture(file).display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--config-out".into(),
            config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run_bin(&args, limit).ok(file);
        let cfg = fixture_config(family);
        let shapes = safetensors_shapes(&out);
        let want: BTreeMap<String, Vec<usize>> = expected(&cfg).into_iter().collect();
        assert_eq!(shapes, want, "{file}");
        let written: ModelConfig =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        let mut cfg_want = cfg.clone();
        if family == Family::ParaMixer {
            cfg_want.n_iter = 1;
        }
        assert_eq!(written, cfg_want, "{file}");
        // The export is self-describing for imixer and holds the same values.
        let net = MixerNet::load(&out, None, &Device::Cpu).unwrap();
        assert_eq!(net.config, cfg_want);
        for (name, t) in net.state_dict() {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(v, pattern(&name, v.len(), ema), "{name} of {file}");
        }
    }

    // An imixer training checkpoint exports to the model alone (no optimizer tensors), and
    // --ema on a file without EMA weights is a clear error.
    let cfg = fixture_config(Family::Mixer);
    let net = MixerNet::new(&cfg, 3, &Device::Cpu).unwrap();
    let opt = imixer::optim::AdamW::new(&net.params, Default::default()).unwrap();
    let last = dir.path().join("last.safetensors");
    imixer::train::state::save(
        &last,
        &net,
        Some(&opt),
        None,
        &imixer::train::state::RunState::start(),
        "",
        &["a".into(), "b".into(), "c".into()],
    )
    .unwrap();
    assert!(safetensors_shapes(&last)
        .keys()
        .any(|k| k.starts_with("optimizer.")));
    let out = dir.path().join("model.safetensors");
    let s = |p: &Path| p.display().to_string();
    run_bin(
        &["export", "--checkpoint", &s(&last), "--out", &s(&out)],
        limit,
    )
    .ok("export last");
    assert_eq!(
        safetensors_shapes(&out),
        expected(&cfg).into_iter().collect::<BTreeMap<_, _>>()
    );
    assert!(dir.path().join("config.json").is_file());
    let o = run_bin(
        &[
            "export",
            "--checkpoint",
            &s(&last),
            "--ema",
            "--out",
            &s(&out),
        ],
        limit,
    )
    .failed("export --ema");
    assert!(o.stderr.contains("no EMA weights"), "{}", o.stderr);

    // With EMA weights (`ema.` + reference name): --ema exports them, without it the raw ones.
    let other = MixerNet::new(&cfg, 9, &Device::Cpu).unwrap();
    let ema = imixer::train::ema::ModelEma::new(&other, 0.99).unwrap();
    let with_ema = dir.path().join("with_ema.safetensors");
    imixer::train::state::save(
        &with_ema,
        &net,
        Some(&opt),
        Some(&ema),
        &imixer::train::state::RunState::start(),
        "",
        &["a".into(), "b".into(), "c".into()],
    )
    .unwrap();
    for (flag, source) in [(None, &net), (Some("--ema"), &other)] {
        let mut args = vec!["export", "--checkpoint", &s(&with_ema), "--out", &s(&out)]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(flag.map(String::from));
        run_bin(&args, limit).ok("export with EMA");
        let back = MixerNet::load(&out, None, &Device::Cpu).unwrap();
        assert_eq!(safetensors_shapes(&out).len(), expected(&cfg).len());
        for ((name, a), (_, b)) in back.state_dict().into_iter().zip(source.state_dict()) {
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(a, b, "{name} ({flag:?})");
        }
    }
}

/// Every prefix of every fixture is an error; byte flips never panic, and in the zip format
/// (CRC-checked) a flip either is an error or changes nothing that is read.
#[test]
fn truncated_and_corrupted_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.pth");
    let read = |p: &Path| -> anyhow::Result<Vec<(String, Vec<f32>)>> {
        let ckpt = Checkpoint::open(p, Weights::Model)?;
        let _ = imixer::checkpoint::load::resolve(&ckpt, &ModelSpec::default());
        ckpt.decode(&Device::Cpu)?
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)))
            .collect()
    };
    for file in [
        "imixer_train.pth.tar",
        "imixer_train_legacy.pth.tar",
        "paramixer_fp16.bin",
        "mixer_model_legacy_p4.pth",
    ] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        let clean = read(&fixture(file)).unwrap();
        let step = (bytes.len() / 150).max(1);
        for cut in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
            std::fs::write(&copy, &bytes[..cut]).unwrap();
            assert!(
                read(&copy).is_err(),
                "{file} cut at {cut} of {} reads",
                bytes.len()
            );
        }
        let zip = bytes.starts_with(b"PK");
        for at in (0..bytes.len()).step_by(step / 2 + 1) {
            let mut bad = bytes.clone();
            bad[at] ^= 0x5a;
            std::fs::File::create(&copy)
                .unwrap()
                .write_all(&bad)
                .unwrap();
            // The legacy format has no checksum: a flipped value byte reads as another value
            // (as it does in PyTorch); everything else must be caught.
            if let (Ok(values), true) = (read(&copy), zip) {
                assert_eq!(
                    values, clean,
                    "{file}: a flipped byte at {at} went unnoticed"
                );
            }
        }
    }
}

/// Hand-made zip archives with hostile pickles: clear errors, never a panic or an abort.
#[test]
fn hostile_archives_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write_zip = |name: &str, pickle: &[u8], storages: &[(&str, &[u8])]| -> PathBuf {
        let p = dir.path().join(name);
        let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(pickle).unwrap();
        for (key, data) in storages {
            z.start_file(format!("archive/data/{key}"), opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
        p
    };
    // {'w': _rebuild_tensor_v2(<storage 0, 4 floats>, offset, size, stride, False, {})}
    let tensor = |offset: u8, size: &[u8], stride: &[u8]| -> Vec<u8> {
        let mut v = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
        v.extend_from_slice(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ");
        v.extend_from_slice(&[b'K', offset, b'(']);
        for s in size {
            v.extend_from_slice(&[b'K', *s]);
        }
        v.push(b't');
        v.push(b'(');
        for s in stride {
            v.extend_from_slice(&[b'K', *s]);
        }
        v.extend_from_slice(b"t\x89}tRs.");
        v
    };
    let four = [0u8; 16];
    // A well-formed one reads.
    let ok = write_zip("ok.pth", &tensor(0, &[2, 2], &[2, 1]), &[("0", &four)]);
    let c = Checkpoint::open(&ok, Weights::Model).unwrap();
    assert_eq!(c.shapes["w"], [2, 2]);
    c.decode(&Device::Cpu).unwrap();
    let short_args = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n)Rs.".to_vec();
    let huge_string = [&b"\x80\x02X"[..], &0xFFFF_FFF0u32.to_le_bytes(), b"abc"].concat();
    let deep = [&b"\x80\x02"[..], &[b']'; 300_000], &[b'a'; 299_999], b"."].concat();
    for (name, pickle, storages, says) in [
        ("short.pth", short_args, vec![], "0 arguments"),
        ("huge.pth", huge_string, vec![], "truncated"),
        ("deep.pth", deep, vec![], "not a state_dict"),
        (
            "outside.pth",
            tensor(1, &[2, 2], &[2, 1]),
            vec![("0", &four[..])],
            "reaches element 5",
        ),
        (
            "broadcast.pth",
            tensor(0, &[200, 200], &[0, 0]),
            vec![("0", &four[..])],
            "broadcast",
        ),
        (
            "nostorage.pth",
            tensor(0, &[2], &[1]),
            vec![],
            "storage archive/data/0 is missing",
        ),
    ] {
        let p = write_zip(name, &pickle, &storages);
        let err = match Checkpoint::open(&p, Weights::Model) {
            Ok(c) => c.decode(&Device::Cpu).expect_err(name),
            Err(e) => e,
        };
        let err = format!("{err:#}");
        assert!(
            err.contains(says) && err.contains(name),
            "{name}: {says:?} not in {err}"
        );
    }
}

/// The official code's own state_dicts (the golden files, written by the authors' PyTorch
/// models): the settings read off their shapes are the sidecars' and every tensor fits.
#[test]
fn settings_are_read_off_the_official_state_dicts() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for family in Family::ALL {
        let sidecar: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(golden.join(format!("{family}.json"))).unwrap(),
        )
        .unwrap();
        let names: BTreeSet<String> = ["param_names", "buffer_names"]
            .iter()
            .flat_map(|k| sidecar[k].as_array().unwrap().iter())
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let file =
            imixer::checkpoint::read(&golden.join(format!("{family}.safetensors")), &Device::Cpu)
                .unwrap();
        let shapes: BTreeMap<String, Vec<usize>> = names
            .iter()
            .map(|n| (n.clone(), file.tensors[n].dims().to_vec()))
            .collect();
        let hint = matches!(family, Family::ParaMixer | Family::AsymMixer).then_some(family);
        let cfg = imixer::checkpoint::infer::infer(&shapes, hint).unwrap();
        let c = &sidecar["config"];
        let n = |k: &str| c[k].as_u64().unwrap() as usize;
        assert_eq!(cfg.family, family);
        assert_eq!(
            (
                cfg.img_size,
                cfg.in_chans,
                cfg.patch_size,
                cfg.embed_dim,
                cfg.depth,
                cfg.num_classes
            ),
            (
                n("img_size"),
                n("in_chans"),
                n("patch_size"),
                n("embed_dim"),
                n("num_blocks"),
                n("num_classes")
            ),
            "{family}"
        );
        assert_eq!(
            (cfg.tokens_dim(), cfg.channels_dim()),
            (n("tokens_dim"), n("channels_dim"))
        );
        if family == Family::IMixer {
            assert_eq!(
                cfg.imixer.hidden_ratio,
                sidecar["model_args"]["hidden_ratio"].as_f64().unwrap()
            );
        }
        assert!(
            imixer::checkpoint::shapes::mismatches(&cfg, &shapes).is_empty(),
            "{family}"
        );
    }
}
