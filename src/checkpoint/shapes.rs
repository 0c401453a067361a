//! The tensors a configuration needs — every reference name with its shape — computed without
//! building the model, and the comparison with what a file holds that lists every difference.
//!
//! Why a second description of the names beside the model builder: a file is checked before
//! anything is allocated for it (a forged header must not make us build a 10⁹-parameter model).
//! The test below holds both descriptions equal for every family.

use std::collections::BTreeMap;

use crate::config::{Family, ModelConfig};

/// Every tensor of the model `cfg` builds, in registration order.
pub fn expected(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (n, d, k) = (cfg.num_tokens(), cfg.embed_dim, cfg.num_classes);
    let (dt, dc) = (cfg.tokens_dim(), cfg.channels_dim());
    let mut out = Vec::new();
    let mut put = |name: String, shape: Vec<usize>| out.push((name, shape));
    put(
        "stem.proj.weight".into(),
        vec![d, cfg.in_chans, cfg.patch_size, cfg.patch_size],
    );
    put("stem.proj.bias".into(), vec![d]);
    let ln: Vec<usize> = if cfg.family.is_paper2() {
        vec![n, d]
    } else {
        vec![d]
    };
    for i in 0..cfg.depth {
        let b = format!("blocks.{i}");
        let norm = |put: &mut dyn FnMut(String, Vec<usize>), name: &str| {
            put(format!("{b}.{name}.weight"), ln.clone());
            put(format!("{b}.{name}.bias"), ln.clone());
        };
        // fc1: dim → hidden, fc2: hidden → dim (weights are (out, in)).
        let mlp = |put: &mut dyn FnMut(String, Vec<usize>),
                   m: &str,
                   dim: usize,
                   hidden: usize,
                   bias: bool| {
            put(format!("{b}.{m}.fc1.weight"), vec![hidden, dim]);
            if bias {
                put(format!("{b}.{m}.fc1.bias"), vec![hidden]);
            }
            put(format!("{b}.{m}.fc2.weight"), vec![dim, hidden]);
            if bias {
                put(format!("{b}.{m}.fc2.bias"), vec![dim]);
            }
        };
        match cfg.family {
            Family::Mixer | Family::VanillaMixer => {
                let bias = cfg.family == Family::Mixer;
                norm(&mut put, "norm1");
                mlp(&mut put, "mlp_tokens", n, dt, bias);
                norm(&mut put, "norm2");
                mlp(&mut put, "mlp_channels", d, dc, bias);
            }
            Family::IMixer => {
                let inner = cfg.imlp_inner_dim();
                norm(&mut put, "norm1");
                let t = format!("{b}.mlp_tokens");
                put(format!("{t}.fc1.weight"), vec![dt, n]);
                put(format!("{t}.fc1.bias"), vec![dt]);
                for (sn, fan_in, fan_out) in [("fc_sn1", dt, inner), ("fc_sn2", inner, dt)] {
                    put(format!("{t}.{sn}.bias"), vec![fan_out]);
                    put(format!("{t}.{sn}.weight_u"), vec![fan_out]);
                    put(format!("{t}.{sn}.weight_v"), vec![fan_in]);
                    put(format!("{t}.{sn}.weight_sigma"), vec![1]);
                    put(format!("{t}.{sn}.weight_orig"), vec![fan_out, fan_in]);
                }
                put(format!("{t}.fc2.weight"), vec![n, dt]);
                put(format!("{t}.fc2.bias"), vec![n]);
                norm(&mut put, "norm2");
                mlp(&mut put, "mlp_channels", d, dc, true);
            }
            Family::ParaMixer | Family::AsymMixer => {
                norm(&mut put, "norm");
                mlp(&mut put, "mlp_tokens", n, dt, false);
                mlp(&mut put, "mlp_channels", d, dc, false);
            }
            Family::SymMixer => {
                norm(&mut put, "norm");
                put(format!("{b}.mlp_tokens.fc2.weight"), vec![dt, n]);
                put(format!("{b}.mlp_channels.fc2.weight"), vec![dc, d]);
            }
        }
    }
    put("norm.weight".into(), vec![d]);
    put("norm.bias".into(), vec![d]);
    put("head.weight".into(), vec![k, d]);
    put("head.bias".into(), vec![k]);
    out
}

/// Number of blocks a file holds (highest `blocks.<i>` index + 1).
pub fn block_count<'a>(names: impl IntoIterator<Item = &'a String>) -> usize {
    names
        .into_iter()
        .filter_map(|k| {
            k.strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |b| b + 1)
}

/// Every difference between the tensors `cfg` needs and the `found` ones: the block count and
/// parameter totals first, then each missing, unexpected or mis-shaped tensor. Empty when the
/// file fits the model exactly.
pub fn mismatches(cfg: &ModelConfig, found: &BTreeMap<String, Vec<usize>>) -> Vec<String> {
    let want = expected(cfg);
    let mut problems = Vec::new();
    let blocks = block_count(found.keys());
    if blocks != cfg.depth {
        problems.push(format!(
            "the configuration has depth {} but the file holds {blocks} blocks",
            cfg.depth
        ));
    }
    let needed: u128 = want.iter().map(|(_, s)| numel(s)).sum();
    let held: u128 = found.values().map(|s| numel(s)).sum();
    if needed > held {
        problems.push(format!(
            "the configuration needs {needed} parameters but the file holds {held} values"
        ));
    }
    let wanted: BTreeMap<&str, &Vec<usize>> = want.iter().map(|(n, s)| (n.as_str(), s)).collect();
    for (name, shape) in &want {
        match found.get(name) {
            None => problems.push(format!("missing {name} {shape:?}")),
            Some(have) if have != shape => problems.push(format!(
                "{name}: file has shape {have:?}, model needs {shape:?}"
            )),
            Some(_) => {}
        }
    }
    for (name, shape) in found {
        if !wanted.contains_key(name.as_str()) {
            problems.push(format!("unexpected {name} {shape:?}"));
        }
    }
    problems
}

fn numel(shape: &[usize]) -> u128 {
    shape.iter().map(|&v| v as u128).product()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::MixerNet;
    use candle_core::Device;

    #[test]
    fn the_expected_shapes_are_the_models_for_every_family() {
        for family in Family::ALL {
            let cfg = ModelConfig {
                family,
                img_size: 8,
                in_chans: 2,
                patch_size: 2,
                embed_dim: 6,
                depth: 2,
                num_classes: 3,
                ..ModelConfig::default()
            };
            let net = MixerNet::new(&cfg, 0, &Device::Cpu).unwrap();
            let built: Vec<(String, Vec<usize>)> = net
                .params
                .entries()
                .iter()
                .map(|e| (e.name.clone(), e.var.dims().to_vec()))
                .collect();
            assert_eq!(expected(&cfg), built, "{family}");
            let found: BTreeMap<String, Vec<usize>> = built.into_iter().collect();
            assert!(mismatches(&cfg, &found).is_empty());
        }
    }

    #[test]
    fn every_difference_is_listed() {
        let cfg = ModelConfig {
            family: Family::Mixer,
            img_size: 8,
            patch_size: 4,
            embed_dim: 4,
            depth: 1,
            ..ModelConfig::default()
        };
        let mut found: BTreeMap<String, Vec<usize>> = expected(&cfg).into_iter().collect();
        found.insert("head.weight".into(), vec![100, 4]);
        found.insert("head.bias".into(), vec![100]);
        found.remove("norm.bias");
        found.insert("blocks.1.norm1.weight".into(), vec![4]);
        let p = mismatches(&cfg, &found);
        assert_eq!(
            p,
            [
                "the configuration has depth 1 but the file holds 2 blocks",
                "missing norm.bias [4]",
                "head.weight: file has shape [100, 4], model needs [10, 4]",
                "head.bias: file has shape [100], model needs [10]",
                "unexpected blocks.1.norm1.weight [4]",
            ]
        );
    }
}
