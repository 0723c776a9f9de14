//! One chaos run: start, load, break, heal, check, report.
//!
//! ```text
//!  start N nodes (+ a fault proxy each) ─▶ clients record a history
//!      ─▶ seeded faults: process (kill, pause), network (partitions,
//!         delay), membership (remove a node, add a fresh one)
//!      ─▶ heal ─▶ convergence (equal digests) ─▶ checks ─▶ report
//! ```
//!
//! While it runs, a line of progress (operations and faults so far) goes to
//! stderr every `Options::progress`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::check::linearizable::{self, Budget, Checked};
use crate::cluster::Cluster;
use crate::registers::{RegisterConfig, Registers};
use crate::workload::{self, Event, Outcome};

pub struct Options {
    pub nodes: u64,
    pub duration: Duration,
    pub seed: u64,
    pub sabotage_stale_reads: bool,
    pub clients: usize,
    /// containerd socket and registry: adds a mesh workload on a min-scale 2
    /// container.
    pub runtime: Option<(String, String)>,
    /// How registers rotate.
    pub registers: RegisterConfig,
    /// What checking one register may spend.
    pub budget: Budget,
    /// Write the register history here, as JSON lines.
    pub history: Option<PathBuf>,
    /// Print progress this often (`None`: never).
    pub progress: Option<Duration>,
}

/// What the mesh workload saw.
#[derive(Debug, Clone, Serialize, Default)]
pub struct MeshReport {
    pub requests: usize,
    /// HTTP status (or "error" for no answer) → count.
    pub answers: BTreeMap<String, usize>,
    pub ok_after_heal: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub kind: String,
    pub detail: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The registers a run went through.
#[derive(Debug, Clone, Serialize)]
pub struct RegistersReport {
    #[serde(flatten)]
    pub config: RegisterConfig,
    pub created: usize,
    /// Retired and deleted during the run.
    pub deleted: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: u64,
    pub duration_s: f64,
    pub sabotage: Option<String>,
    pub clients: usize,
    pub operations: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub faults: Vec<Fault>,
    /// `true`, `false`, or `null` when the checker ran out of budget.
    pub linearizable: Option<bool>,
    /// Each register's verdict.
    pub keys: BTreeMap<String, String>,
    /// Every register's value before its first write.
    pub initial_value: String,
    pub registers: RegistersReport,
    /// The checker's verdicts, time, memory and budget, per register.
    pub check: Checked,
    /// Where the register history was written (JSON lines).
    pub history_file: Option<String>,
    /// The harness process's peak resident memory (Linux `VmHWM`), checker
    /// included.
    pub process_peak_rss_bytes: Option<u64>,
    pub lost_acknowledged_writes: usize,
    pub lost: Vec<String>,
    pub converged: bool,
    pub converged_after_s: Option<f64>,
    pub write_after_heal: bool,
    pub panics: Vec<String>,
    pub mesh: Option<MeshReport>,
    /// After the membership fault: the removed node came back with
    /// everything it kept (data dir, CA key, master key; its certificate
    /// wiped and re-signed by itself) and stayed out. `null` when no node
    /// was removed.
    pub removed_node_stayed_out: Option<bool>,
    /// With the mesh workload: the cron trigger's invariant, "no tick
    /// claimed twice (`trigger_ticks_claimed_twice`), no acknowledged tick
    /// lost (`trigger_ticks_lost`)".
    pub triggers: Option<crate::triggers::TriggerReport>,
    pub passed: bool,
    #[serde(skip)]
    pub history: Vec<Event>,
}

/// A removed node restarts from its data dir (master key, state copy with
/// the sealed CA key), its certificate wiped, so that it signs itself a new
/// one with the CA key it kept: it must stay out. True when the members do
/// not count it, and a member refuses that certificate both for the peer
/// service and for the master key. The node is stopped again.
async fn removed_stays_out(cluster: &mut Cluster, v: u64, via: u64) -> bool {
    let tls = cluster.data_dir(v).join("tls");
    let _ = std::fs::remove_dir_all(&tls);
    if cluster.restart(v).is_err() {
        return false;
    }
    let mut material = None;
    for _ in 0..100 {
        let read = |f: &str| std::fs::read_to_string(tls.join(f)).ok();
        if let (Some(ca), Some(cert), Some(key)) =
            (read("ca.crt"), read("node.crt"), read("node.key"))
        {
            material = Some((ca, cert, key));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = match material {
        // It could not even sign itself a certificate: out.
        None => true,
        Some((ca, cert, key)) => peer_refuses(&cluster.endpoint(via), &ca, &cert, &key).await,
    };
    let counted = match crate::connect(&cluster.endpoint(via)).await {
        Ok(mut c) => match c.cluster_status().await {
            Ok(s) => s.members.iter().any(|m| m.id == v),
            Err(_) => true,
        },
        Err(_) => true,
    };
    cluster.kill(v);
    refused && !counted
}

/// Whether the peer service at `endpoint` refuses the holder of `cert`
/// (UNAUTHENTICATED for a ping and for the master key).
async fn peer_refuses(endpoint: &str, ca: &str, cert: &str, key: &str) -> bool {
    use rouse_proto::peer::raft_peer_client::RaftPeerClient;
    let t = rouse_node::tls::Tls::new(false);
    let Ok(m) = rouse_node::tls::Material::new(ca, Some((cert, key))) else {
        return false;
    };
    t.set(m);
    let url = endpoint.replace("http://", "https://");
    let Ok(ep) = tonic::transport::Endpoint::from_shared(url) else {
        return false;
    };
    let ch = match ep
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect_with_connector(rouse_node::tls::https_connector(
            t.client_config(),
            None,
            true,
        ))
        .await
    {
        Ok(ch) => ch,
        // The handshake itself failed: refused too.
        Err(_) => return true,
    };
    let mut peer = RaftPeerClient::new(ch);
    let ping = peer.ping(rouse_proto::peer::PingRequest {}).await;
    let key = peer
        .fetch_master_key(rouse_proto::peer::FetchMasterKeyRequest {})
        .await;
    let ping_refused = matches!(&ping, Err(s) if s.code() == tonic::Code::Unauthenticated);
    let key_refused = matches!(&key, Err(s) if s.code() == tonic::Code::Unauthenticated);
    ping_refused && key_refused
}

async fn node_info(url: &str) -> Option<rouse_client::pb::NodeInfoResponse> {
    let fut = async {
        let mut c = crate::connect(url).await.ok()?;
        c.node_info().await.ok()
    };
    tokio::time::timeout(Duration::from_millis(800), fut)
        .await
        .ok()
        .flatten()
}

async fn leader(cluster: &Cluster) -> Option<u64> {
    for id in cluster.members() {
        if cluster.is_paused(id) || !cluster.is_running(id) {
            continue;
        }
        if let Some(i) = node_info(&cluster.endpoint(id)).await {
            if i.leader_id != 0 && cluster.members().contains(&i.leader_id) {
                return Some(i.leader_id);
            }
        }
    }
    None
}

async fn wait_voters(cluster: &Cluster, n: usize, within: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        for id in cluster.members() {
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_millis(500),
                crate::connect(&cluster.endpoint(id)),
            )
            .await
            {
                if let Ok(Ok(s)) =
                    tokio::time::timeout(Duration::from_secs(2), c.cluster_status()).await
                {
                    if s.leader_id != 0
                        && s.members
                            .iter()
                            .filter(|m| m.role == "voter" && m.healthy)
                            .count()
                            >= n
                    {
                        return Ok(());
                    }
                }
            }
        }
        anyhow::ensure!(
            t.elapsed() < within,
            "the cluster did not form {n} healthy voters within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn endpoints_of(cluster: &Cluster) -> Vec<(u64, String)> {
    cluster
        .members()
        .into_iter()
        .map(|id| (id, cluster.endpoint(id)))
        .collect()
}

pub async fn run(opts: Options, dir: PathBuf, bin: PathBuf) -> anyhow::Result<Report> {
    let mut extra = Vec::new();
    if opts.sabotage_stale_reads {
        extra.push("--sabotage-stale-reads".to_string());
    }
    let mut cluster = Cluster::new(&dir, bin, extra);
    let ctr_ns = format!("rouse-chaos-{}", std::process::id());
    cluster.set_runtime(
        opts.runtime
            .clone()
            .map(|(sock, reg)| (sock, reg, ctr_ns.clone())),
    );
    cluster.add(1, None).await?;
    let t = Instant::now();
    let token = loop {
        if let Some(t) = cluster.admin_token() {
            break t;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(20),
            "node 1 wrote no admin token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = crate::TOKEN.set(token);
    wait_voters(&cluster, 1, Duration::from_secs(20)).await?;
    for id in 2..=opts.nodes {
        cluster.add(id, Some(1)).await?;
    }
    wait_voters(&cluster, opts.nodes as usize, Duration::from_secs(60)).await?;
    let registers = Arc::new(Mutex::new(Registers::new(opts.registers)));
    workload::setup(&cluster.endpoint(1), &registers).await?;
    let mesh_on = match &opts.runtime {
        Some((_, reg)) => {
            crate::mesh::deploy(&cluster.endpoint(1), reg).await?;
            true
        }
        None => false,
    };
    // With the mesh: a 2-second cron trigger on its container all along.
    let trigger_since = if mesh_on {
        Some(crate::triggers::create(&cluster.endpoint(1)).await?)
    } else {
        None
    };

    let history: workload::History = Arc::new(Mutex::new(Vec::new()));
    let endpoints = Arc::new(Mutex::new(endpoints_of(&cluster)));
    let start = Instant::now();
    let until = start + opts.duration;
    // Every member's mesh, kept current across membership changes.
    let mesh_of = |cluster: &Cluster| {
        cluster
            .members()
            .iter()
            .filter_map(|id| cluster.http(*id))
            .collect::<Vec<_>>()
    };
    let mesh_addrs = Arc::new(Mutex::new(mesh_of(&cluster)));
    let mesh_counts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let mut mesh_clients = Vec::new();
    if mesh_on {
        for k in 0..2u64 {
            mesh_clients.push(tokio::spawn(crate::mesh::client(
                opts.seed ^ k,
                mesh_addrs.clone(),
                until,
                mesh_counts.clone(),
            )));
        }
    }
    let shared = workload::Shared {
        endpoints: endpoints.clone(),
        registers: registers.clone(),
        history: history.clone(),
        start,
        until,
        clients: opts.clients,
    };
    let mut clients = Vec::new();
    for id in 0..opts.clients {
        clients.push(tokio::spawn(workload::client(
            id,
            opts.seed,
            shared.clone(),
        )));
    }
    let keeper = tokio::spawn(workload::keeper(
        opts.seed,
        registers.clone(),
        endpoints.clone(),
        until,
    ));
    let faults_so_far = Arc::new(AtomicUsize::new(0));
    let progress = opts.progress.map(|every| {
        tokio::spawn(progress(
            every,
            start,
            opts.duration,
            shared.clone(),
            faults_so_far.clone(),
            mesh_counts.clone(),
        ))
    });

    // The fault schedule comes from the seed alone.
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let ms = |t: Instant| u64::try_from(t.duration_since(start).as_millis()).unwrap_or(u64::MAX);
    let mut faults: Vec<Fault> = Vec::new();
    let mut membership_done = false;
    let mut removed_node_stayed_out = None;
    let mut next_id = opts.nodes + 1;
    let mut first = true;
    tokio::time::sleep(Duration::from_secs(2)).await;
    while Instant::now() + Duration::from_secs(5) < until {
        let hold = Duration::from_millis(rng.random_range(1500..3500));
        let members = cluster.members();
        let kinds = [
            "kill",
            "pause",
            "isolate-leader",
            "split",
            "bridge",
            "delay",
            "membership",
            "isolate-follower",
        ];
        let kind = if first {
            "isolate-follower"
        } else {
            kinds[rng.random_range(0..kinds.len())]
        };
        first = false;
        let pick = |rng: &mut StdRng, from: &[u64]| from[rng.random_range(0..from.len())];
        let t0 = Instant::now();
        let lead = leader(&cluster).await;
        let (kind_label, detail) = match kind {
            "kill" => {
                let v = pick(&mut rng, &members);
                cluster.kill(v);
                tokio::time::sleep(hold).await;
                cluster.restart(v)?;
                (
                    "process-kill",
                    format!("SIGKILL node {v}, restarted after {hold:?}"),
                )
            }
            "pause" => {
                let v = pick(&mut rng, &members);
                cluster.pause(v);
                tokio::time::sleep(hold).await;
                cluster.resume(v);
                ("process-pause", format!("SIGSTOP node {v} for {hold:?}"))
            }
            "isolate-leader" | "isolate-follower" => {
                let followers: Vec<u64> = members
                    .iter()
                    .copied()
                    .filter(|m| Some(*m) != lead)
                    .collect();
                let v = if kind == "isolate-leader" {
                    lead.unwrap_or(members[0])
                } else {
                    pick(&mut rng, &followers)
                };
                let rest: Vec<u64> = members.iter().copied().filter(|m| *m != v).collect();
                cluster.net.partition(&[v], &rest);
                tokio::time::sleep(hold).await;
                cluster.net.heal();
                (
                    "network-isolate",
                    format!(
                        "isolated node {v} ({}) for {hold:?}",
                        if Some(v) == lead {
                            "leader"
                        } else {
                            "follower"
                        }
                    ),
                )
            }
            "split" => {
                let mut shuffled = members.clone();
                for i in (1..shuffled.len()).rev() {
                    let j = rng.random_range(0..=i);
                    shuffled.swap(i, j);
                }
                let (minority, majority) = shuffled.split_at(shuffled.len() / 2);
                cluster.net.partition(minority, majority);
                tokio::time::sleep(hold).await;
                cluster.net.heal();
                (
                    "network-split",
                    format!("minority {minority:?} / majority {majority:?} for {hold:?}"),
                )
            }
            "bridge" if members.len() >= 3 => {
                // Two halves that only the bridge node sees both of.
                let b = pick(&mut rng, &members);
                let others: Vec<u64> = members.iter().copied().filter(|m| *m != b).collect();
                let (x, y) = others.split_at(others.len() / 2);
                cluster.net.partition(x, y);
                tokio::time::sleep(hold).await;
                cluster.net.heal();
                (
                    "network-bridge",
                    format!("bridge through node {b}: {x:?} cut from {y:?} for {hold:?}"),
                )
            }
            "delay" => {
                let v = pick(&mut rng, &members);
                let d = Duration::from_millis(rng.random_range(30..150));
                cluster.net.set_delay(v, d);
                tokio::time::sleep(hold).await;
                cluster.net.heal();
                (
                    "network-delay",
                    format!("{d:?} added latency on links to node {v} for {hold:?}"),
                )
            }
            "membership" if !membership_done && members.len() >= 3 => {
                membership_done = true;
                let followers: Vec<u64> = members
                    .iter()
                    .copied()
                    .filter(|m| Some(*m) != lead)
                    .collect();
                let v = pick(&mut rng, &followers);
                let via = members.iter().copied().find(|m| *m != v).unwrap_or(1);
                let removed = match crate::connect(&cluster.endpoint(via)).await {
                    Ok(mut c) => tokio::time::timeout(Duration::from_secs(10), c.remove_node(v))
                        .await
                        .map(|r| r.is_ok())
                        .unwrap_or(false),
                    Err(_) => false,
                };
                if removed {
                    cluster.mark_removed(v);
                    *endpoints.lock().unwrap_or_else(|p| p.into_inner()) = endpoints_of(&cluster);
                    *mesh_addrs.lock().unwrap_or_else(|p| p.into_inner()) = mesh_of(&cluster);
                    cluster.kill(v);
                    let out = removed_stays_out(&mut cluster, v, via).await;
                    removed_node_stayed_out = Some(out);
                    let fresh = next_id;
                    next_id += 1;
                    cluster.add(fresh, Some(via)).await?;
                    let joined = wait_voters(&cluster, members.len(), Duration::from_secs(20))
                        .await
                        .is_ok();
                    *endpoints.lock().unwrap_or_else(|p| p.into_inner()) = endpoints_of(&cluster);
                    *mesh_addrs.lock().unwrap_or_else(|p| p.into_inner()) = mesh_of(&cluster);
                    (
                        "membership",
                        format!(
                            "removed node {v} (came back with what it kept: stayed out: {out}), added fresh node {fresh} (joined: {joined})"
                        ),
                    )
                } else {
                    (
                        "membership",
                        "remove refused (no quorum?); membership unchanged".to_string(),
                    )
                }
            }
            _ => {
                let v = pick(&mut rng, &members);
                cluster.pause(v);
                tokio::time::sleep(hold).await;
                cluster.resume(v);
                ("process-pause", format!("SIGSTOP node {v} for {hold:?}"))
            }
        };
        faults_so_far.fetch_add(1, Ordering::Relaxed);
        faults.push(Fault {
            kind: kind_label.to_string(),
            detail,
            start_ms: ms(t0),
            end_ms: ms(Instant::now()),
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2500))).await;
    }
    for c in clients {
        let _ = c.await;
    }
    for c in mesh_clients {
        let _ = c.await;
    }
    let _ = keeper.await;
    if let Some(p) = progress {
        p.abort();
    }

    // Heal everything.
    cluster.net.heal();
    for id in cluster.members() {
        cluster.resume(id);
        if !cluster.is_running(id) {
            cluster.restart(id)?;
        }
    }
    let heal_start = Instant::now();
    let mut converged_after = None;
    while heal_start.elapsed() < Duration::from_secs(30) {
        let mut infos = Vec::new();
        for id in cluster.members() {
            infos.push(
                node_info(&cluster.endpoint(id))
                    .await
                    .map(|i| (i.last_applied_index, i.state_digest)),
            );
        }
        if infos.iter().all(|i| i.is_some()) && infos.windows(2).all(|w| w[0] == w[1]) {
            converged_after = Some(heal_start.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut write_after_heal = false;
    for id in cluster.members() {
        if let Ok(mut c) = crate::connect(&cluster.endpoint(id)).await {
            if tokio::time::timeout(
                Duration::from_secs(10),
                c.create_namespace("after-heal", Default::default()),
            )
            .await
            .is_ok_and(|r| r.is_ok())
            {
                write_after_heal = true;
                break;
            }
        }
    }

    let mut triggers = None;
    let mesh = if mesh_on {
        let addrs: Vec<std::net::SocketAddr> = cluster
            .members()
            .iter()
            .filter_map(|id| cluster.http(*id))
            .collect();
        let mut ok_after_heal = false;
        let t = Instant::now();
        while !ok_after_heal && t.elapsed() < Duration::from_secs(30) {
            ok_after_heal = true;
            for a in &addrs {
                ok_after_heal &= crate::mesh::get(*a).await == Some(200);
            }
            if !ok_after_heal {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let answers = mesh_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(since) = trigger_since {
            let eps: Vec<String> = cluster
                .members()
                .iter()
                .map(|id| cluster.endpoint(*id))
                .collect();
            let r = crate::triggers::check(&eps, &cluster.all_data_dirs(), since).await;
            triggers = Some(r);
        }
        crate::mesh::undeploy(&cluster.endpoint(cluster.members()[0])).await;
        Some(MeshReport {
            requests: answers.values().sum(),
            answers,
            ok_after_heal,
        })
    } else {
        None
    };
    let history = history.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // No acknowledged create lost, on any node.
    let mut lost: BTreeSet<String> = BTreeSet::new();
    for id in cluster.members() {
        let names: BTreeSet<String> = match crate::connect(&cluster.endpoint(id)).await {
            Ok(mut c) => c
                .list_namespaces(true)
                .await
                .map(|v| v.into_iter().map(|n| n.name).collect())
                .unwrap_or_default(),
            Err(_) => BTreeSet::new(),
        };
        lost.extend(crate::check::lost::missing(&history, &names));
    }

    // Per-key linearizability, over the history as exported.
    let lines = crate::history::from_events(&history);
    let history_file = match &opts.history {
        Some(path) => match write_history(path, &lines) {
            Ok(()) => Some(path.display().to_string()),
            Err(e) => {
                eprintln!("rouse-chaos: {}: {e}", path.display());
                None
            }
        },
        None => None,
    };
    let by_key = crate::history::ops_by_key(&lines)?;
    drop(lines);
    let budget = opts.budget;
    eprintln!(
        "rouse-chaos: checking {} registers ({} operations)",
        by_key.len(),
        by_key.values().map(Vec::len).sum::<usize>()
    );
    let checked = tokio::task::spawn_blocking(move || {
        linearizable::check_keys(workload::INITIAL, &by_key, &budget)
    })
    .await?;
    let keys: BTreeMap<String, String> = checked
        .keys
        .iter()
        .map(|(k, c)| (k.clone(), verdict_name(c.verdict)))
        .collect();
    let linearizable = checked.linearizable;
    let panics = cluster.panics();
    let count = |o: Outcome| history.iter().filter(|e| e.outcome == o).count();
    let converged = converged_after.is_some();
    let passed = linearizable == Some(true)
        && lost.is_empty()
        && converged
        && write_after_heal
        && panics.is_empty()
        && mesh.as_ref().is_none_or(|m| m.ok_after_heal)
        && removed_node_stayed_out != Some(false)
        && triggers
            .as_ref()
            .is_none_or(crate::triggers::TriggerReport::ok);
    cluster.stop_all();
    if let Some((sock, _)) = &opts.runtime {
        crate::mesh::remove_leftovers(sock, &ctr_ns);
    }
    Ok(Report {
        seed: opts.seed,
        nodes: opts.nodes,
        duration_s: opts.duration.as_secs_f64(),
        sabotage: opts.sabotage_stale_reads.then(|| "stale-reads".to_string()),
        clients: opts.clients,
        operations: history.len(),
        ok: count(Outcome::Ok),
        failed: count(Outcome::Fail),
        unknown: count(Outcome::Unknown),
        faults,
        linearizable,
        keys,
        initial_value: workload::INITIAL.to_string(),
        registers: {
            let r = registers.lock().unwrap_or_else(|p| p.into_inner());
            RegistersReport {
                config: r.config(),
                created: r.created_count(),
                deleted: r.deleted_count(),
            }
        },
        check: checked,
        history_file,
        process_peak_rss_bytes: peak_rss_bytes(),
        lost_acknowledged_writes: lost.len(),
        lost: lost.into_iter().collect(),
        converged,
        converged_after_s: converged_after,
        write_after_heal,
        panics,
        mesh,
        removed_node_stayed_out,
        triggers,
        passed,
        history,
    })
}

fn verdict_name(v: linearizable::Verdict) -> String {
    match v {
        linearizable::Verdict::Linearizable => "linearizable",
        linearizable::Verdict::NotLinearizable => "not_linearizable",
        linearizable::Verdict::Unknown => "unknown",
    }
    .to_string()
}

fn write_history(
    path: &std::path::Path,
    lines: &[crate::history::Line],
) -> Result<(), crate::history::HistoryError> {
    let file = std::fs::File::create(path)?;
    crate::history::write(std::io::BufWriter::new(file), lines)
}

/// This process's peak resident set size, where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Prints, every `every`, how far the run is: operations and faults so far.
async fn progress(
    every: Duration,
    start: Instant,
    duration: Duration,
    shared: workload::Shared,
    faults: Arc<AtomicUsize>,
    mesh: Arc<Mutex<BTreeMap<String, usize>>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (ops, unknown) = {
            let h = shared.history.lock().unwrap_or_else(|p| p.into_inner());
            let unknown = h.iter().filter(|e| e.outcome == Outcome::Unknown).count();
            (h.len(), unknown)
        };
        let (created, deleted) = {
            let r = shared.registers.lock().unwrap_or_else(|p| p.into_inner());
            (r.created_count(), r.deleted_count())
        };
        let mesh: usize = mesh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum();
        let mesh = if mesh > 0 {
            format!(", mesh requests {mesh}")
        } else {
            String::new()
        };
        eprintln!(
            "rouse-chaos: [{:>5.0}s/{:.0}s] operations {ops} ({unknown} unknown), faults {}, registers {created} ({} live){mesh}",
            start.elapsed().as_secs_f64(),
            duration.as_secs_f64(),
            faults.load(Ordering::Relaxed),
            created - deleted,
        );
    }
}
