//! Simulated nodes, and `rouse-bench scale`: what a large state costs.
//!
//! The scale run measures the same figures twice on one 3-node cluster:
//! with a small state (the baseline: `--containers / 1000` containers) and
//! with the full one (10,000 containers × 5 instances on 1,000 simulated
//! nodes by default), and prints each ratio. A fourth node joins at the end
//! and installs the large state from a snapshot.

use std::time::{Duration, Instant};

use super::{p50_p99, three_nodes, Rouse};

/// Registers `nodes` simulated nodes (ids from 1000, zone `zone-N`, region
/// `sim`) through node 1's peer service, as a member would register itself;
/// a `simulated-nodes` build of rouse-node lets node 1's certificate do it.
pub async fn register_simulated_nodes(rouse: &Rouse, nodes: u64) -> anyhow::Result<()> {
    use rouse_node::state::{Command, NodeRecord, Proposal};
    let tls = rouse_node::tls::Tls::new(false);
    tls.set(
        rouse_node::tls::load(&rouse.data_dir(1))?
            .ok_or_else(|| anyhow::anyhow!("node 1 has no certificate"))?,
    );
    let ch =
        tonic::transport::Endpoint::from_shared(rouse.endpoint(1).replace("http://", "https://"))?
            .connect_with_connector(rouse_node::tls::connector(&tls, None, true))
            .await?;
    let mut peer = rouse_proto::peer::raft_peer_client::RaftPeerClient::new(ch);
    for id in 0..nodes {
        let node = NodeRecord {
            id: 1000 + id,
            // Loopback addresses nothing listens on: simulated nodes are never contacted.
            api_addr: format!("127.1.{}.{}:1", id / 250, id % 250),
            http_addr: String::new(),
            hop_addr: String::new(),
            zone: format!("zone-{}", id % 10),
            region: "sim".into(),
            cpu_capacity_mvcpu: 64_000,
            memory_capacity_mb: 262_144,
            cert_sha256: String::new(),
        };
        let p = Proposal::new(0, Command::RegisterNode { node });
        peer.forward(rouse_proto::peer::RaftMessage {
            payload: serde_json::to_vec(&p)?,
        })
        .await?;
    }
    Ok(())
}

/// A container of the simulation, pinned to the simulated region.
pub fn simulated(name: String, per: u32) -> rouse_client::pb::DeployContainerRequest {
    rouse_client::pb::DeployContainerRequest {
        namespace: "sim".into(),
        name,
        image: Some("registry.invalid/sim:1".into()),
        min_scale: Some(per),
        max_scale: Some(per),
        cpu_mvcpu: Some(100),
        memory_mb: Some(64),
        region: Some("sim".into()),
        ..Default::default()
    }
}

/// Deploys containers `from..to` with `parallel` concurrent clients.
pub async fn deploy_range(
    rouse: &Rouse,
    from: u32,
    to: u32,
    per: u32,
    parallel: u32,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for w in 0..parallel {
        let mut c = rouse.connect(1).await?;
        tasks.push(tokio::spawn(async move {
            let mut i = from + w;
            while i < to {
                c.deploy_container(simulated(format!("c{i}"), per)).await?;
                i += parallel;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Waits until `total` instances are placed in namespace `sim`.
async fn placed(rouse: &Rouse, total: u64) -> anyhow::Result<()> {
    let mut c = rouse.connect(1).await?;
    let t = Instant::now();
    loop {
        let n: u64 = c
            .list_containers("sim", true)
            .await?
            .iter()
            .map(|ct| ct.instances.len() as u64)
            .sum();
        if n >= total {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(900),
            "only {n} of {total} placed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn proc_field(pid: u32, file: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/{file}"))?)
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = proc_field(pid, "status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    Ok(kb / 1024.0)
}

/// CPU seconds (user + system) the process has used.
fn cpu_s(pid: u32) -> anyhow::Result<f64> {
    let stat = proc_field(pid, "stat")?;
    // Fields after the command name (which may hold spaces), 1-based
    // utime = 14, stime = 15 of the whole line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// One set of figures.
struct Figures {
    rss_mb: Vec<f64>,
    list_ms: f64,
    list_p99_ms: f64,
    apply_ms: f64,
    apply_p99_ms: f64,
    idle_cpu: f64,
    /// Log entries applied per second while idle.
    idle_writes: f64,
}

async fn measure(rouse: &Rouse, label: &str, idle_for: Duration) -> anyhow::Result<Figures> {
    let leader = rouse.kit.leader().await;
    let mut c = rouse.connect(leader).await?;
    // Idle first: nothing but the cluster's own loops.
    let pid = rouse.kit.nodes[&leader]
        .pid()
        .ok_or_else(|| anyhow::anyhow!("leader not running"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let i0 = c.node_info().await?.last_applied_index;
    let (c0, t0) = (cpu_s(pid)?, Instant::now());
    tokio::time::sleep(idle_for).await;
    let idle_cpu = (cpu_s(pid)? - c0) / t0.elapsed().as_secs_f64();
    let idle_writes =
        (c.node_info().await?.last_applied_index - i0) as f64 / t0.elapsed().as_secs_f64();
    let mut list = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        c.list_containers("sim", false).await?;
        list.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut apply = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        c.create_namespace(&format!("probe-{label}-{i}"), Default::default())
            .await?;
        apply.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut rss = Vec::new();
    for id in [1, 2, 3] {
        if let Some(p) = rouse.kit.nodes[&id].pid() {
            rss.push(rss_mb(p)?);
        }
    }
    let (list_ms, list_p99_ms) = p50_p99(list);
    let (apply_ms, apply_p99_ms) = p50_p99(apply);
    Ok(Figures {
        rss_mb: rss,
        list_ms,
        list_p99_ms,
        apply_ms,
        apply_p99_ms,
        idle_cpu,
        idle_writes,
    })
}

/// `took_ms` of the last log line with `what` in node `id`'s log.
fn last_took_ms(rouse: &Rouse, id: u64, what: &str) -> Option<(u64, u64)> {
    let log = rouse.kit.nodes[&id].log_text();
    let line = log.lines().rev().find(|l| l.contains(what))?;
    let field = |name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((field("took_ms")?, field("bytes")?))
}

pub async fn scale(nodes: u64, containers: u32, per: u32, parallel: u32) -> anyhow::Result<()> {
    let small = (containers / 1000).max(1);
    let mut rouse = three_nodes(&["--log", "warn,rouse_node::store=info"]).await;
    register_simulated_nodes(&rouse, nodes).await?;
    let mut c = rouse.connect(1).await?;
    c.create_namespace("sim", Default::default()).await?;
    deploy_range(&rouse, 0, small, per, parallel.min(small)).await?;
    placed(&rouse, u64::from(small) * u64::from(per)).await?;
    let before = measure(&rouse, "small", Duration::from_secs(10)).await?;

    let t = Instant::now();
    deploy_range(&rouse, small, containers, per, parallel).await?;
    let deployed = t.elapsed();
    let total = u64::from(containers) * u64::from(per);
    placed(&rouse, total).await?;
    let placed_in = t.elapsed();
    let after = measure(&rouse, "large", Duration::from_secs(10)).await?;
    let leader = rouse.kit.leader().await;
    let built = last_took_ms(&rouse, leader, "built snapshot");

    // A fresh node joins and installs the large state from a snapshot.
    let want = rouse
        .connect(leader)
        .await?
        .node_info()
        .await?
        .last_applied_index;
    let t = Instant::now();
    rouse
        .kit
        .add(4, Some(1), &[])
        .await
        .map_err(|e| anyhow::anyhow!("adding node 4: {e:#}"))?;
    let mut n4 = loop {
        match rouse.connect(4).await {
            Ok(c) => break c,
            Err(_) if t.elapsed() < Duration::from_secs(120) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => anyhow::bail!("node 4: {e}"),
        }
    };
    loop {
        if let Ok(i) = n4.node_info().await {
            if i.last_applied_index >= want {
                break;
            }
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(300),
            "node 4 did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined = t.elapsed();
    let installed = last_took_ms(&rouse, 4, "installed snapshot");

    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    println!(
        "state at scale: 3 nodes on loopback, {nodes} simulated nodes; small = {small} containers x {per}, \
         large = {containers} containers x {per} = {total} instances"
    );
    println!(
        "  deploys: {:.1} s ({:.0}/s with {parallel} clients); all placed {:.1} s after the first",
        deployed.as_secs_f64(),
        f64::from(containers - small) / deployed.as_secs_f64(),
        placed_in.as_secs_f64()
    );
    println!("  figure                              small      large   large/small   goal");
    println!(
        "  node RSS, max of 3 (MB)          {:>8.1}   {:>8.1}   {:>8.2}      < 200 MB",
        max(&before.rss_mb),
        max(&after.rss_mb),
        ratio(max(&after.rss_mb), max(&before.rss_mb))
    );
    println!(
        "  apply latency p50 (ms)           {:>8.2}   {:>8.2}   {:>8.2}      within 20 % (<= 1.20)",
        before.apply_ms,
        after.apply_ms,
        ratio(after.apply_ms, before.apply_ms)
    );
    println!(
        "  apply latency p99 (ms)           {:>8.2}   {:>8.2}   {:>8.2}",
        before.apply_p99_ms,
        after.apply_p99_ms,
        ratio(after.apply_p99_ms, before.apply_p99_ms)
    );
    println!(
        "  list namespace p50 (ms)          {:>8.2}   {:>8.2}   {:>8.2}",
        before.list_ms,
        after.list_ms,
        ratio(after.list_ms, before.list_ms)
    );
    println!(
        "  list namespace p99 (ms)          {:>8.2}   {:>8.2}   {:>8.2}",
        before.list_p99_ms,
        after.list_p99_ms,
        ratio(after.list_p99_ms, before.list_p99_ms)
    );
    println!(
        "  idle leader CPU (% of a core)    {:>8.2}   {:>8.2}   {:>8.2}      < 2 %",
        before.idle_cpu * 100.0,
        after.idle_cpu * 100.0,
        ratio(after.idle_cpu, before.idle_cpu)
    );
    println!(
        "  idle log entries/s               {:>8.2}   {:>8.2}",
        before.idle_writes, after.idle_writes
    );
    match built {
        Some((ms, bytes)) => println!(
            "  snapshot build (leader, last)    {ms} ms for {:.1} MB",
            bytes as f64 / 1e6
        ),
        None => println!("  snapshot build: none logged"),
    }
    match installed {
        Some((ms, bytes)) => println!(
            "  snapshot install (new node)      {ms} ms for {:.1} MB; join to caught up {:.2} s   goal < 2 s",
            bytes as f64 / 1e6,
            joined.as_secs_f64()
        ),
        None => println!(
            "  snapshot install: none logged (caught up from the log); join to caught up {:.2} s",
            joined.as_secs_f64()
        ),
    }
    Ok(())
}
