//! `rouse apply`, `rouse diff`, `rouse export`, `rouse schema`: the
//! rouse.yaml workflow (see `rouse_client::manifest` and
//! `rouse_client::apply`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use rouse_client::apply::{self, Plan};
use rouse_client::manifest::Manifest;
use rouse_client::Client;

use super::{Fail, Format};

#[derive(Args)]
pub struct ApplyArgs {
    /// The rouse.yaml to apply.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Print the changes and make none.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the containers, triggers and secrets of the file's
    /// namespaces that the file no longer names (never other namespaces).
    #[arg(long)]
    pub prune: bool,
    /// Wait until every changed container has its min-scale instances
    /// ready; fail if one fails.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (default 5m).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub timeout: String,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The rouse.yaml to compare with the cluster.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Show what --prune would delete too.
    #[arg(long)]
    pub prune: bool,
}

/// Reads and checks a file.
fn read(file: &Path) -> Result<Manifest, Fail> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Fail(format!("file: cannot read {}: {e}", file.display())))?;
    Manifest::parse(&file.display().to_string(), &text).map_err(|e| Fail(e.to_string()))
}

/// The plan for `file` against the cluster now.
async fn plan_for(c: &mut Client, file: &Path, prune: bool) -> Result<(Manifest, Plan), Fail> {
    let m = read(file)?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut secrets = apply::resolve_secrets(&m, base).map_err(Fail)?;
    apply::cluster_fingerprints(c, &m, &mut secrets).await?;
    let names: Vec<&str> = m.namespaces.iter().map(|n| n.name.0.as_str()).collect();
    let observed = apply::observe(c, &names).await?;
    let images = super::build::images(&m, base, &observed).map_err(Fail)?;
    let plan = apply::plan(&m, &observed, &secrets, &images, prune);
    Ok((m, plan))
}

fn show(fmt: Format, plan: &Plan) -> Result<(), Fail> {
    match fmt {
        Format::Table => print!("{}", plan.text()),
        _ => super::emit(fmt, plan, String::new)?,
    }
    Ok(())
}

pub async fn diff(c: &mut Client, fmt: Format, a: DiffArgs) -> Result<(), Fail> {
    let (_, plan) = plan_for(c, &a.file, a.prune).await?;
    show(fmt, &plan)
}

pub async fn run(c: &mut Client, fmt: Format, a: ApplyArgs) -> Result<(), Fail> {
    let timeout = humantime::parse_duration(&a.timeout).map_err(|_| {
        Fail(format!(
            "timeout: {:?} is not a duration (5m, 90s)",
            a.timeout
        ))
    })?;
    let (m, plan) = plan_for(c, &a.file, a.prune).await?;
    show(fmt, &plan)?;
    if a.dry_run || !plan.changes() {
        return Ok(());
    }
    let base = a.file.parent().unwrap_or(Path::new("."));
    for (image, file) in super::build::run_builds(&m, base, &plan).map_err(Fail)? {
        c.import_image(&file, Some(&image)).await?;
        let _ = std::fs::remove_file(&file);
    }
    let plain = fmt != Format::Table;
    // Progress on stderr: stdout keeps the plan (or its JSON).
    apply::execute(c, &plan, |i| eprintln!("applied: {} {}", i.kind, i.name)).await?;
    if a.wait {
        wait(c, &plan.deployed(), timeout, plain).await?;
    }
    Ok(())
}

/// Waits for `containers` with progress on stderr — a line per instance
/// that updates in place on a terminal, plain lines when stderr is not a
/// terminal or `plain` (`-o json`/`yaml`) — and a one-line failure.
pub async fn wait(
    c: &mut Client,
    containers: &[(String, String, u32)],
    timeout: Duration,
    plain: bool,
) -> Result<(), Fail> {
    use std::io::IsTerminal;
    let bars = (!plain && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
    let mut lines: std::collections::BTreeMap<String, indicatif::ProgressBar> = Default::default();
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let r = apply::wait_ready(c, containers, timeout, |p| match (&bars, p) {
        (None, p) => eprintln!("{p}"),
        (
            Some(m),
            apply::Progress::Instance {
                container,
                id,
                node,
                state,
            },
        ) => {
            let bar = lines.entry(id.to_string()).or_insert_with(|| {
                let b = m.add(indicatif::ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(format!("{container} {id} (node {node})"));
                b.enable_steady_tick(Duration::from_millis(120));
                b
            });
            bar.set_message(state.to_string());
        }
        (Some(m), apply::Progress::Pending { .. }) => {
            let _ = m.println(p.to_string());
        }
        (Some(m), apply::Progress::Ready { container, .. }) => {
            let prefix = container.replace('/', "-");
            for (id, b) in &lines {
                if id.starts_with(&prefix) {
                    b.finish();
                }
            }
            let _ = m.println(p.to_string());
        }
    })
    .await;
    for b in lines.values() {
        b.finish();
    }
    r.map_err(|e| Fail(e.to_string()))
}

pub async fn export(c: &mut Client, ns: &str) -> Result<(), Fail> {
    let observed = apply::observe(c, &[ns]).await?;
    let o = observed.get(ns).cloned().unwrap_or_default();
    if !o.exists {
        return Err(Fail(format!("namespace: {ns:?} not found")));
    }
    let m = apply::export(ns, &o);
    let text = serde_yaml::to_string(&m).map_err(|e| Fail(format!("output: {e}")))?;
    print!("{text}");
    Ok(())
}

pub fn schema() -> Result<(), Fail> {
    let text = serde_json::to_string_pretty(&Manifest::schema())
        .map_err(|e| Fail(format!("output: {e}")))?;
    println!("{text}");
    Ok(())
}
