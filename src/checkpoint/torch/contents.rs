//! What a PyTorch checkpoint holds: the model weights (a bare state_dict, or one inside a
//! training dict under `state_dict` / `model` / `module`), the EMA weights (`state_dict_ema`,
//! `model_ema`), and everything else — described in notes, never executed. The official
//! `train.py` (timm's `CheckpointSaver`) also stores its `args`, an `argparse.Namespace`; its
//! attribute dict is plain data, so the model settings it records (`model`, `num_classes`,
//! `img_size`, `h_ratio`, `n_iter`, `n_power`) are read as hints.

use std::collections::HashSet;

use super::error::{bail, Context, Result};

use super::pickle::{Id, Node, Pickle};
use super::tensor::{tensor_ref, TensorRef};
use crate::checkpoint::infer::Hints;

/// Keys of a training dict that hold the model weights, in order of preference.
pub const MODEL_KEYS: [&str; 3] = ["state_dict", "model", "module"];
/// Keys that hold the EMA weights.
pub const EMA_KEYS: [&str; 2] = ["state_dict_ema", "model_ema"];

/// The tensors of one state_dict, under the names the file uses.
#[derive(Debug)]
pub struct StateDict {
    /// Where in the file it was found (`state_dict`, or `the top level`).
    pub source: String,
    pub tensors: Vec<(String, TensorRef)>,
    /// Entries that are not tensors, described.
    pub skipped: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Contents {
    pub model: Option<StateDict>,
    pub ema: Option<StateDict>,
    pub hints: Hints,
    /// What else the file holds and what was skipped, one line each.
    pub notes: Vec<String>,
}

/// Interprets the unpickled root object.
pub fn read(p: &Pickle) -> Result<Contents> {
    let root = p.root;
    if p.dict(root).is_none() {
        let what = describe(p, root);
        bail!("the file holds {what}, not a state_dict or a checkpoint dict: save `model.state_dict()` with torch.save");
    }
    let mut c = Contents::default();
    let find = |keys: &[&'static str]| {
        keys.iter().find_map(|k| {
            p.get(root, k)
                .filter(|&v| holds_tensors(p, v))
                .map(|v| (*k, v))
        })
    };
    let model = find(&MODEL_KEYS);
    let ema = find(&EMA_KEYS);
    if model.is_none() && ema.is_none() {
        if !holds_tensors(p, root) {
            bail!(
                "the file holds a dict without tensors (keys: {}): no model weights",
                keys(p, root)
            );
        }
        c.model = Some(state_dict(p, root, "the top level")?);
        return Ok(c);
    }
    if let Some((k, v)) = model {
        c.model = Some(state_dict(p, v, k)?);
    }
    if let Some((k, v)) = ema {
        c.ema = Some(state_dict(p, v, k)?);
    }
    let used: HashSet<&str> = model.iter().chain(&ema).map(|(k, _)| *k).collect();
    let (mut values, mut skipped) = (Vec::new(), Vec::new());
    for &(k, v) in p.dict(root).unwrap_or(&[]) {
        let Some(key) = p.str(k) else { continue };
        if used.contains(key) {
            continue;
        }
        if key == "args" || is_namespace(p, v) {
            c.notes.push(read_args(p, v, &mut c.hints, key));
            continue;
        }
        if key == "arch" {
            if let Some(s) = p.str(v) {
                c.hints.model.get_or_insert_with(|| s.to_string());
            }
        }
        let what = describe(p, v);
        match p.node(v) {
            Node::Dict(_) | Node::List(_) | Node::Tuple(_) | Node::Set(_) | Node::Object { .. } => {
                skipped.push(format!("{key} ({what})"))
            }
            _ => values.push(format!("{key} = {what}")),
        }
    }
    if !values.is_empty() {
        c.notes
            .push(format!("also in the file: {}", values.join(", ")));
    }
    if !skipped.is_empty() {
        c.notes.push(format!("skipped: {}", skipped.join(", ")));
    }
    Ok(c)
}

fn keys(p: &Pickle, dict: Id) -> String {
    let names: Vec<String> = p
        .dict(dict)
        .unwrap_or(&[])
        .iter()
        .take(12)
        .map(|(k, _)| p.str(*k).unwrap_or("?").to_string())
        .collect();
    names.join(", ")
}

/// A dict with at least one tensor-like value.
fn holds_tensors(p: &Pickle, id: Id) -> bool {
    p.dict(id).is_some_and(|d| {
        d.iter().any(|(_, v)| {
            p.class_name(*v).is_some_and(|c| {
                c.starts_with("torch._utils._rebuild") || c.starts_with("torch._tensor._rebuild")
            })
        })
    })
}

fn state_dict(p: &Pickle, dict: Id, source: &str) -> Result<StateDict> {
    let mut sd = StateDict {
        source: source.to_string(),
        tensors: Vec::new(),
        skipped: Vec::new(),
    };
    let mut seen = HashSet::new();
    for &(k, v) in p.dict(dict).unwrap_or(&[]) {
        let Some(name) = p.str(k) else {
            sd.skipped
                .push(format!("an entry with a {} key", describe(p, k)));
            continue;
        };
        match tensor_ref(p, v).with_context(|| format!("tensor {name} of {source}"))? {
            Some(t) => {
                if !seen.insert(name) {
                    bail!("tensor {name} appears twice in {source}");
                }
                sd.tensors.push((name.to_string(), t))
            }
            None => sd.skipped.push(format!("{name} ({})", describe(p, v))),
        }
    }
    Ok(sd)
}

fn is_namespace(p: &Pickle, id: Id) -> bool {
    p.class_name(id).as_deref() == Some("argparse.Namespace")
}

/// Reads the model settings of the training script's arguments into `hints`.
fn read_args(p: &Pickle, id: Id, hints: &mut Hints, key: &str) -> String {
    let attrs = match p.node(id) {
        Node::Object { state: Some(s), .. } if p.dict(*s).is_some() => *s,
        Node::Dict(_) => id,
        _ => return format!("skipped {key} ({}): not plain data", describe(p, id)),
    };
    let get = |name: &str| p.get(attrs, name);
    let int = |name: &str| {
        get(name)
            .and_then(|v| p.int(v))
            .and_then(|v| usize::try_from(v).ok())
    };
    let float = |name: &str| {
        get(name).and_then(|v| match p.node(v) {
            Node::Float(f) => Some(*f),
            Node::Int(i) => Some(*i as f64),
            _ => None,
        })
    };
    let mut read = Vec::new();
    if let Some(m) = get("model").and_then(|v| p.str(v)) {
        hints.model = Some(m.to_string());
        read.push(format!("model = {m:?}"));
    }
    if let Some(k) = int("num_classes") {
        hints.num_classes = Some(k);
        read.push(format!("num_classes = {k}"));
    }
    if let Some(s) = int("img_size") {
        hints.img_size = Some(s);
        read.push(format!("img_size = {s}"));
    }
    if let Some(dims) = get("input_size").and_then(|v| p.tuple(v)) {
        let d: Vec<Option<usize>> = dims
            .iter()
            .map(|&x| p.int(x).and_then(|v| usize::try_from(v).ok()))
            .collect();
        if let [Some(c), Some(h), Some(w)] = d[..] {
            hints.in_chans = Some(c);
            if h == w {
                hints.img_size = Some(h);
            }
            read.push(format!("input_size = ({c}, {h}, {w})"));
        }
    }
    if let Some(r) = float("h_ratio") {
        hints.hidden_ratio = Some(r);
        read.push(format!("h_ratio = {r}"));
    }
    if let Some(n) = int("n_iter") {
        hints.n_iter = Some(n);
        read.push(format!("n_iter = {n}"));
    }
    if let Some(n) = int("n_power") {
        hints.n_power = Some(n);
        read.push(format!("n_power = {n}"));
    }
    let what = describe(p, id);
    if read.is_empty() {
        format!("skipped {key} ({what}): no model settings in it")
    } else {
        format!(
            "{key} ({what}) is not unpickled, only read as data: {}",
            read.join(", ")
        )
    }
}

/// A short description of a value for notes and errors.
pub fn describe(p: &Pickle, id: Id) -> String {
    match p.node(id) {
        Node::None => "None".into(),
        Node::Bool(b) => if *b { "True" } else { "False" }.into(),
        Node::Int(v) => v.to_string(),
        Node::BigInt(_) => "a large integer".into(),
        Node::Float(v) => v.to_string(),
        Node::Str(s) if s.chars().count() <= 40 => format!("{s:?}"),
        Node::Str(s) => format!("{:?}…", s.chars().take(40).collect::<String>()),
        Node::Bytes(b) => format!("{} bytes", b.len()),
        Node::Tuple(v) => format!("a tuple of {}", v.len()),
        Node::List(v) => format!("a list of {}", v.len()),
        Node::Set(v) => format!("a set of {}", v.len()),
        Node::Dict(v) => format!("a dict of {} entries", v.len()),
        Node::Global { module, name } => format!("the class {module}.{name}"),
        Node::Object { .. } => match p.class_name(id) {
            Some(c) => format!("an object of class {c}"),
            None => "an object".into(),
        },
        Node::PersistentId(_) => "a storage reference".into(),
    }
}
