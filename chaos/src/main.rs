//! `rouse-chaos run --nodes N --duration DUR --seed S [--report FILE]
//! [--history FILE] [--sabotage stale-reads]`: exits 0 only when every
//! invariant holds.
//!
//! `rouse-chaos check [--checker wgl|jit] FILE`: checks a register history
//! written by `--history` (or any tool writing that format); exits 0 only
//! when every register's history is linearizable. `jit` is a second checker
//! sharing no code with the first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rouse_chaos::check::linearizable::{self, Budget};
use rouse_chaos::registers::RegisterConfig;

#[derive(Parser)]
#[command(
    name = "rouse-chaos",
    about = "Seeded fault injection against a real rouse cluster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Sabotage {
    /// Nodes answer reads from local state without the leader check.
    StaleReads,
}

/// What checking one register may spend; over budget is "unknown", a
/// failure.
#[derive(Args)]
struct BudgetArgs {
    /// Time budget per register, e.g. 20s.
    #[arg(long, default_value = "20s")]
    check_time_per_register: String,
    /// Memory budget per register (the search's own estimate), in MiB.
    #[arg(long, default_value_t = 256)]
    check_memory_per_register_mib: usize,
}

impl BudgetArgs {
    fn budget(&self) -> Result<Budget, String> {
        let time = parse_duration("check-time-per-register", &self.check_time_per_register)?;
        if time.is_zero() || self.check_memory_per_register_mib == 0 {
            return Err("check budget: time and memory per register must be above zero".into());
        }
        Ok(Budget {
            time,
            memory_bytes: self.check_memory_per_register_mib.saturating_mul(1 << 20),
        })
    }
}

fn parse_duration(flag: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{flag}: {text:?} is not a duration such as 60s ({e})"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Check a register history file (JSON lines, as --history writes).
    Check {
        /// The history file.
        file: PathBuf,
        /// Every register's value before its first write.
        #[arg(long, default_value = rouse_chaos::workload::INITIAL)]
        initial_value: String,
        /// Write the per-register verdicts and costs here as JSON.
        #[arg(long)]
        report: Option<PathBuf>,
        #[command(flatten)]
        budget: BudgetArgs,
        /// Which checker: `wgl` (the run's own: Wing & Gong / Lowe search
        /// with porcupine-style caching) or `jit` (an independent one,
        /// sharing no code with it: Lowe's just-in-time linearization).
        #[arg(long, default_value = "wgl", value_parser = ["wgl", "jit"])]
        checker: String,
    },
    /// Start a cluster, run clients and faults, heal, check, report.
    Run {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// How long the workload and faults run, e.g. 60s.
        #[arg(long, default_value = "60s")]
        duration: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the JSON report here (and the timeline next to it, .svg).
        #[arg(long)]
        report: Option<PathBuf>,
        #[arg(long, value_enum)]
        sabotage: Option<Sabotage>,
        #[arg(long, default_value_t = 5)]
        clients: usize,
        /// Keep the run's directory (data dirs and node logs).
        #[arg(long)]
        keep: bool,
        /// containerd socket: adds a mesh workload (needs --registry).
        #[arg(long, env = "ROUSE_TEST_CONTAINERD", requires = "registry")]
        containerd: Option<String>,
        /// Plain-HTTP registry on loopback for the mesh workload's image.
        #[arg(long, env = "ROUSE_TEST_REGISTRY")]
        registry: Option<String>,
        /// Write the register history here as JSON lines (one event each).
        #[arg(long)]
        history: Option<PathBuf>,
        /// Print operations and faults so far this often (0s: never).
        #[arg(long, default_value = "15s")]
        progress: String,
        /// Operations on one register before clients move to a fresh one.
        #[arg(long, default_value_t = RegisterConfig::default().ops_per_register)]
        ops_per_register: usize,
        /// Unknown-outcome writes on one register before clients move on.
        #[arg(long, default_value_t = RegisterConfig::default().unknown_writes_per_register)]
        unknown_writes_per_register: usize,
        #[command(flatten)]
        budget: BudgetArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check {
            file,
            initial_value,
            checker,
            ..
        } if checker == "jit" => check_jit(&file, &initial_value),
        Cmd::Check {
            file,
            initial_value,
            report,
            budget,
            ..
        } => check(&file, &initial_value, report.as_deref(), &budget),
        Cmd::Run {
            nodes,
            duration,
            seed,
            report,
            sabotage,
            clients,
            keep,
            containerd,
            registry,
            history,
            progress,
            ops_per_register,
            unknown_writes_per_register,
            budget,
        } => {
            let parsed = (|| {
                let duration = parse_duration("duration", &duration)?;
                let progress = parse_duration("progress", &progress)?;
                if ops_per_register == 0 || unknown_writes_per_register == 0 {
                    return Err(
                        "ops-per-register and unknown-writes-per-register must be above zero"
                            .to_string(),
                    );
                }
                Ok((duration, progress, budget.budget()?))
            })();
            let (duration, progress, budget) = match parsed {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("rouse-chaos: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = rouse_chaos::run::Options {
                nodes,
                duration,
                seed,
                sabotage_stale_reads: sabotage == Some(Sabotage::StaleReads),
                clients,
                runtime: containerd.zip(registry),
                registers: RegisterConfig {
                    ops_per_register,
                    unknown_writes_per_register,
                    ..RegisterConfig::default()
                },
                budget,
                history,
                progress: (!progress.is_zero()).then_some(progress),
            };
            run(opts, report, keep)
        }
    }
}

/// Checks a history file with the independent checker: 0 linearizable, 1
/// not (or over budget), 2 unreadable.
fn check_jit(file: &std::path::Path, initial: &str) -> ExitCode {
    let started = std::time::Instant::now();
    let answers = std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|text| rouse_chaos::jit::check_text(&text, initial, 20_000_000));
    let answers = match answers {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rouse-chaos: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let with = |want: rouse_chaos::jit::Answer| -> Vec<&str> {
        answers
            .iter()
            .filter(|(_, a)| **a == want)
            .map(|(k, _)| k.as_str())
            .collect()
    };
    let (bad, unknown) = (
        with(rouse_chaos::jit::Answer::NotLinearizable),
        with(rouse_chaos::jit::Answer::Unknown),
    );
    println!(
        "jit checker: {} registers in {:.2} s; not linearizable: {bad:?}; over budget: {unknown:?}",
        answers.len(),
        started.elapsed().as_secs_f64()
    );
    if bad.is_empty() && unknown.is_empty() {
        println!("PASS");
        ExitCode::SUCCESS
    } else {
        println!("FAIL");
        ExitCode::FAILURE
    }
}

/// Checks a history file: 0 linearizable, 1 not (or unknown), 2 unreadable.
fn check(
    file: &std::path::Path,
    initial: &str,
    report: Option<&std::path::Path>,
    budget: &BudgetArgs,
) -> ExitCode {
    let budget = match budget.budget() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("rouse-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let by_key = std::fs::File::open(file)
        .map_err(rouse_chaos::history::HistoryError::from)
        .and_then(|f| rouse_chaos::history::read(std::io::BufReader::new(f)))
        .and_then(|lines| rouse_chaos::history::ops_by_key(&lines));
    let by_key = match by_key {
        Ok(k) => k,
        Err(e) => {
            eprintln!("rouse-chaos: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let checked = linearizable::check_keys(initial, &by_key, &budget);
    print!("{}", rouse_chaos::report::check_summary(&checked));
    if let Some(rss) = rouse_chaos::run::peak_rss_bytes() {
        println!(
            "peak memory (whole process): {:.1} MiB",
            rss as f64 / f64::from(1 << 20)
        );
    }
    if let Some(path) = report {
        let json = serde_json::to_string_pretty(&checked).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("rouse-chaos: report: {e}");
        }
    }
    if checked.linearizable == Some(true) {
        println!("PASS");
        ExitCode::SUCCESS
    } else {
        println!("FAIL");
        ExitCode::FAILURE
    }
}

fn run(opts: rouse_chaos::run::Options, report: Option<PathBuf>, keep: bool) -> ExitCode {
    let nodes = opts.nodes;
    if !(1..=7).contains(&nodes) {
        eprintln!("rouse-chaos: nodes: {nodes} is outside 1..=7");
        return ExitCode::from(2);
    }
    let bin = match std::env::current_exe().map(|p| p.parent().map(PathBuf::from)) {
        Ok(Some(p)) if p.join("rouse-node").exists() => p,
        _ => {
            eprintln!("rouse-chaos: rouse-node is not next to rouse-chaos: cargo build --bins");
            return ExitCode::from(2);
        }
    };
    let dir = match tempfile::Builder::new().prefix("rouse-chaos-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("rouse-chaos: temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rouse-chaos: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(rouse_chaos::run::run(opts, dir.path().to_path_buf(), bin));
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    let code = match result {
        Ok(r) => {
            print!("{}", rouse_chaos::report::summary(&r));
            if let Some(path) = &report {
                let json = serde_json::to_string_pretty(&r).unwrap_or_default();
                if let Err(e) = std::fs::write(path, json) {
                    eprintln!("rouse-chaos: report: {e}");
                }
                let svg = path.with_extension("svg");
                if let Err(e) = std::fs::write(&svg, rouse_chaos::report::svg(&r)) {
                    eprintln!("rouse-chaos: timeline: {e}");
                }
                println!("report: {}  timeline: {}", path.display(), svg.display());
            }
            if r.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("rouse-chaos: the run could not complete: {e:#}");
            ExitCode::FAILURE
        }
    };
    if keep {
        let kept = dir.keep();
        println!("run directory kept: {}", kept.display());
    }
    code
}
