//! `rouse-chaos run --nodes N --duration DUR --seed S [--report FILE]
//! [--sabotage stale-reads]`: exits 0 only when every invariant holds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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

#[derive(Subcommand)]
enum Cmd {
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Cmd::Run {
        nodes,
        duration,
        seed,
        report,
        sabotage,
        clients,
        keep,
        containerd,
        registry,
    } = cli.cmd;
    let duration = match humantime::parse_duration(&duration) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("rouse-chaos: duration: {duration:?} is not a duration such as 60s ({e})");
            return ExitCode::from(2);
        }
    };
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
    let opts = rouse_chaos::run::Options {
        nodes,
        duration,
        seed,
        sabotage_stale_reads: sabotage == Some(Sabotage::StaleReads),
        clients,
        runtime: containerd.zip(registry),
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
