//! Runs a sweep: every planned run as its own `imixer train` process, as many side by side as
//! the thread budget allows, skipping finished runs and resuming interrupted ones.
//!
//! Why processes and not threads: a run's thread pools, kernel choices and precision are
//! process-wide, and a run that dies (out of memory, a diverging loss) must not take the others
//! with it. Each run is exactly what `imixer train --config DIR/<id>/sweep-run.toml --out
//! DIR/<id>` gives, and since results depend on the seed and shard count but never on the
//! thread count, a run inside a sweep gives the same bits as the same run alone.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::{Doing, Result, SweepError};
use crate::files::FileError;

use super::plan::{describe, plan, PlannedRun};
use super::report;
use super::results::{read_results, write_results, RunResult};
use super::spec::SweepSpec;
use crate::train::TrainConfig;

/// How a sweep runs (nothing here changes a result).
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The `imixer` binary that trains each run (the running one, for the CLI).
    pub exe: PathBuf,
    /// `--device` of every run.
    pub device: String,
    /// Print a line per started and finished run.
    pub progress: bool,
    /// Ctrl-C/SIGTERM count: the first stops new runs and asks running ones to save and stop,
    /// a second ends them at once.
    pub signals: Arc<AtomicUsize>,
}

/// What a call of [`run_sweep`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SweepOutcome {
    pub planned: usize,
    /// Finished before this call (skipped).
    pub skipped: usize,
    /// Finished by this call.
    pub finished: usize,
    /// (run id, reason).
    pub failed: Vec<(String, String)>,
    /// Stopped by a signal; `imixer sweep` again resumes them.
    pub interrupted: Vec<String>,
    pub results: PathBuf,
    pub summary: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// Exit status with which `imixer train` reports an interrupted run.
const INTERRUPTED: i32 = 130;

/// Shared state of the workers.
struct Shared {
    queue: Mutex<VecDeque<PlannedRun>>,
    results: Mutex<Vec<RunResult>>,
    failed: Mutex<Vec<(String, String)>>,
    interrupted: Mutex<Vec<String>>,
    finished: AtomicUsize,
}

pub fn run_sweep(spec_path: &Path, out: &Path, opts: &SweepOptions) -> Result<SweepOutcome> {
    let spec = SweepSpec::read(spec_path)?;
    let planned = plan(&spec).doing(|| format!("in {}", spec_path.display()))?;
    std::fs::create_dir_all(out)
        .map_err(|e| FileError::new("create the sweep directory", out, e))?;
    let _lock = lock(out)?;
    crate::files::write_atomically(
        &out.join("sweep.toml"),
        std::fs::read(spec_path)
            .map_err(|e| FileError::new("read", spec_path, e))?
            .as_slice(),
    )?;
    let results_path = out.join("results.jsonl");
    let mut done = read_results(&results_path)?;
    for r in &done {
        if let Some(p) = planned.iter().find(|p| p.id == r.id) {
            check_unchanged(p, &out.join(&p.id))?;
        }
    }
    let pending: VecDeque<PlannedRun> = planned
        .iter()
        .filter(|p| !done.iter().any(|r| r.id == p.id))
        .cloned()
        .collect();
    let skipped = planned.len() - pending.len();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (threads, parallel) = spec.budget(cores);
    if opts.progress {
        eprintln!(
            "sweep {}: {} runs ({} finished earlier), {} side by side with {} thread(s) each",
            out.display(),
            planned.len(),
            skipped,
            parallel.min(pending.len().max(1)),
            threads
        );
    }
    // Results of runs no longer in the sweep file stay in results.jsonl, untouched.
    done.sort_by_key(|r| {
        planned
            .iter()
            .position(|p| p.id == r.id)
            .unwrap_or(usize::MAX)
    });
    let shared = Arc::new(Shared {
        queue: Mutex::new(pending),
        results: Mutex::new(done),
        failed: Mutex::new(Vec::new()),
        interrupted: Mutex::new(Vec::new()),
        finished: AtomicUsize::new(0),
    });
    let ctx = Arc::new(SweepJob {
        out: out.to_path_buf(),
        spec,
        planned: planned.clone(),
        threads,
        opts: opts.clone(),
    });
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            let (shared, ctx) = (shared.clone(), ctx.clone());
            scope.spawn(move || worker(&shared, &ctx));
        }
    });
    let results = shared.results.lock().map(|r| r.clone()).unwrap_or_default();
    let failed = shared.failed.lock().map(|f| f.clone()).unwrap_or_default();
    let plots = report::write(out, &ctx.spec, &planned, &results, &failed)?;
    for p in &ctx.spec.plot {
        if !plots.contains(&out.join(p.file_name())) && !results.is_empty() {
            eprintln!(
                "warning: no plot {}: no finished run has `{}` (results.jsonl lists each run's metrics; `epoch` plots read its history)",
                p.file_name(),
                p.y
            );
        }
    }
    Ok(SweepOutcome {
        planned: planned.len(),
        skipped,
        finished: shared.finished.load(Ordering::SeqCst),
        failed,
        interrupted: shared
            .interrupted
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default(),
        results: results_path,
        summary: out.join("summary.md"),
        plots,
    })
}

/// What every worker needs: the sweep, its runs and the per-run budget.
struct SweepJob {
    out: PathBuf,
    spec: SweepSpec,
    planned: Vec<PlannedRun>,
    threads: usize,
    opts: SweepOptions,
}

fn worker(shared: &Shared, ctx: &SweepJob) {
    loop {
        if ctx.opts.signals.load(Ordering::SeqCst) > 0 {
            return;
        }
        let Some(run) = shared.queue.lock().ok().and_then(|mut q| q.pop_front()) else {
            return;
        };
        match run_one(&run, ctx) {
            Ok(Finished::Done(result)) => {
                if ctx.opts.progress {
                    eprintln!(
                        "finished {}: val top-1 {:.4}",
                        run.id,
                        result
                            .metrics
                            .get("final_val_top1")
                            .copied()
                            .unwrap_or(f64::NAN)
                    );
                }
                shared.finished.fetch_add(1, Ordering::SeqCst);
                let Ok(mut all) = shared.results.lock() else {
                    return;
                };
                all.push(result);
                all.sort_by_key(|r| {
                    ctx.planned
                        .iter()
                        .position(|p| p.id == r.id)
                        .unwrap_or(usize::MAX)
                });
                let failed = shared.failed.lock().map(|f| f.clone()).unwrap_or_default();
                // Written after every run, so an interrupted sweep keeps what it has.
                let written = write_results(&ctx.out.join("results.jsonl"), &all)
                    .and_then(|()| report::write(&ctx.out, &ctx.spec, &ctx.planned, &all, &failed));
                if let Err(e) = written {
                    eprintln!("warning: cannot update the sweep results: {e:#}");
                }
            }
            Ok(Finished::Interrupted) => {
                if let Ok(mut i) = shared.interrupted.lock() {
                    i.push(run.id.clone());
                }
            }
            Err(e) => {
                eprintln!("run {} failed: {e:#}", run.id);
                if let Ok(mut f) = shared.failed.lock() {
                    f.push((run.id.clone(), format!("{e:#}")));
                }
            }
        }
    }
}

enum Finished {
    Done(RunResult),
    Interrupted,
}

/// Trains one run in `DIR/<id>` (resuming it when a checkpoint is there) and collects its result.
fn run_one(run: &PlannedRun, ctx: &SweepJob) -> Result<Finished> {
    let dir = ctx.out.join(&run.id);
    std::fs::create_dir_all(&dir).map_err(|e| FileError::new("create", &dir, e))?;
    let config = dir.join("sweep-run.toml");
    crate::files::write_atomically(&config, toml::to_string(&run.table)?.as_bytes())?;
    let resume = dir.join("last.safetensors").is_file();
    let log_path = dir.join("train.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| FileError::new("open", &log_path, e))?;
    let mut cmd = Command::new(&ctx.opts.exe);
    cmd.arg("train")
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&dir)
        .args(["--threads", &ctx.threads.to_string()])
        .args(["--device", &ctx.opts.device])
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // The sweep directory owns its runs: a run that never saved a checkpoint starts afresh.
    cmd.arg(if resume { "--resume" } else { "--overwrite" });
    // Its own process group: a terminal's Ctrl-C reaches the sweep only, which then forwards
    // exactly one SIGTERM (a second signal would make the run stop without saving).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if ctx.opts.progress {
        eprintln!(
            "{} {} ({}, seed {})",
            if resume { "resuming" } else { "starting" },
            run.id,
            describe(&run.settings),
            run.seed
        );
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| SweepError::Run(format!("cannot start {}: {e}", ctx.opts.exe.display())))?;
    let status = wait_forwarding_signals(&mut child, &ctx.opts.signals)?;
    let mut stdout = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut stdout).ok();
    }
    match status.code() {
        Some(0) => {}
        Some(INTERRUPTED) => return Ok(Finished::Interrupted),
        _ => {
            return Err(SweepError::Run(format!(
                "imixer train exited with {status}; its log {} ends with: {}",
                log_path.display(),
                log_tail(&log_path)
            )))
        }
    }
    let params = serde_json::from_str::<serde_json::Value>(stdout.trim())
        .ok()
        .and_then(|v| v.get("params").and_then(|p| p.as_f64()));
    Ok(Finished::Done(RunResult::collect(run, &dir, params)?))
}

/// Waits for `child`, sending it one SIGTERM per signal the sweep receives.
fn wait_forwarding_signals(
    child: &mut Child,
    signals: &AtomicUsize,
) -> Result<std::process::ExitStatus> {
    let mut forwarded = 0;
    loop {
        let waited = child
            .try_wait()
            .map_err(|e| SweepError::Run(format!("cannot wait for imixer train: {e}")))?;
        if let Some(status) = waited {
            return Ok(status);
        }
        let seen = signals.load(Ordering::SeqCst);
        if seen > forwarded {
            forwarded = seen;
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            // An already-exited child is fine: try_wait reports it next time round.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last non-empty line of a run's log (its error message), for the failure report.
fn log_tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "(empty)".into())
}

/// A finished run is kept only while its saved configuration still matches the sweep file.
fn check_unchanged(run: &PlannedRun, dir: &Path) -> Result<()> {
    let saved_path = dir.join("config.toml");
    let Ok(text) = std::fs::read_to_string(&saved_path) else {
        return Ok(());
    };
    let saved: TrainConfig = toml::from_str(&text).map_err(|e| SweepError::Unusable {
        path: saved_path.clone(),
        problem: format!("not a training config ({e})"),
    })?;
    let now = TrainConfig::from_table(None, run.table.clone())?;
    let diff = crate::train::trainer::result_differences(&saved, &now);
    if !diff.is_empty() {
        return Err(SweepError::Changed {
            run: run.id.clone(),
            dir: dir.to_path_buf(),
            differences: diff,
        });
    }
    Ok(())
}

/// One sweep per directory at a time.
fn lock(out: &Path) -> Result<std::fs::File> {
    Ok(crate::train::trainer::lock_dir(
        out,
        ".sweep.lock",
        "imixer sweep",
    )?)
}
