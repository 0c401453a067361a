//! `imixer models`: the registry with parameter counts.

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Args;

use super::output::outln;
use imixer::registry;

#[derive(Args)]
pub struct ModelsArgs {
    /// Only names containing this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Number of classes the counts assume.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ModelsArgs) -> Result<()> {
    for (name, mut cfg) in registry::all() {
        if args.filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        cfg.num_classes = args.classes;
        let count = cfg.num_params();
        if args.json {
            outln!(
                "{}",
                serde_json::json!({"name": name, "params": count, "config": cfg})
            )?;
        } else {
            outln!("{name:<32} {:>14}", group_thousands(count))?;
        }
    }
    let _ = (DType::F32, Device::Cpu);
    Ok(())
}

fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
