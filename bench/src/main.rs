//! `rouse-bench`: benchmarks that always measure a baseline in the same run
//! and print the ratio. Not a test.
//!
//! `rouse-bench control-plane` — replicated writes on a 3-node rouse
//! cluster on loopback vs a 3-member etcd cluster on loopback, both driven
//! by this harness at 1 and 64 concurrent clients.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ctr::{first_200, CniConf, Ctr, Net};

mod ctr;
mod scale;
use rouse_testkit::cluster::{Cluster as Kit, Template};

#[derive(Parser)]
#[command(name = "rouse-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Control-plane writes: rouse vs etcd, same harness, same run.
    ControlPlane {
        /// Writes per client at concurrency 1.
        #[arg(long, default_value_t = 1000)]
        serial_writes: usize,
        /// Writes in all at concurrency 64.
        #[arg(long, default_value_t = 10000)]
        parallel_writes: usize,
        /// Concurrent clients for the parallel round.
        #[arg(long, default_value_t = 64)]
        clients: usize,
    },
    /// Cold deploy to first 200 (pull + unpack + start) vs `ctr images
    /// pull` + `ctr run` of an identical image, same containerd, same run.
    /// Needs ROUSE_TEST_CONTAINERD and ROUSE_TEST_REGISTRY
    /// (`eval "$(bash deploy/test-env.sh start)"`).
    Runtime {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The mesh: cold start (image cached) through the mesh vs `ctr run`
    /// to first 200; warm throughput and latency with wrk through the mesh
    /// vs straight to the instance vs nginx proxy_pass to it.
    /// Placements per second committed through a real 3-node Raft cluster
    /// with simulated nodes, batched vs one placement per proposal.
    Placement {
        #[arg(long, default_value_t = 1000)]
        nodes: u64,
        #[arg(long, default_value_t = 100)]
        containers: u32,
        #[arg(long, default_value_t = 50)]
        per_container: u32,
    },
    /// What a large state costs: RSS, apply and list latency, idle leader
    /// CPU, snapshot build and install, small state vs large (needs a
    /// `simulated-nodes` build of rouse-node).
    Scale {
        #[arg(long, default_value_t = 1000)]
        nodes: u64,
        #[arg(long, default_value_t = 10_000)]
        containers: u32,
        #[arg(long, default_value_t = 5)]
        per_container: u32,
        /// Concurrent deploying clients.
        #[arg(long, default_value_t = 16)]
        parallel: u32,
    },
    Mesh {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Run the rouse node's instances on the host network
        /// (`--instance-network host`) instead of namespaces of their own.
        #[arg(long)]
        host_network: bool,
    },
    /// The cost of metering itself: two single-node clusters, one with
    /// `--metering off`, each serving one warm keep-alive instance; their
    /// idle CPU side by side, then wrk through each mesh in alternating
    /// rounds. Needs the test environment.
    Metering {
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        /// wrk runs per node, alternating.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds of idle CPU measured.
        #[arg(long, default_value_t = 30)]
        idle_seconds: u64,
    },
    /// Leader failover: SIGKILL the leader of a 3-node cluster, time until a
    /// write through a survivor is accepted, count the term changes it took;
    /// restart the node and do it again.
    Failover {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// The nodes' --heartbeat-ms (default: the node's default, 150).
        #[arg(long, default_value_t = 150)]
        heartbeat_ms: u64,
        /// The nodes' --election-timeout-ms (default: the node's: 3
        /// heartbeats or 500 ms, whichever is longer).
        #[arg(long)]
        election_timeout_ms: Option<u64>,
    },
    /// Cross-node hops over peer mTLS and over plain peers, against the
    /// same-node mesh and a direct connection.
    Hop {
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
    },
    /// Triggers: a cron tick's scheduled time and a NATS message's publish
    /// to the request reaching the container, next to NATS's own publish →
    /// subscriber and JetStream publish → pull consumer latencies, on the
    /// same nats-server, same run. Needs the test environment.
    Triggers {
        /// Seconds of the every-second cron trigger.
        #[arg(long, default_value_t = 30)]
        cron_seconds: u64,
        /// Messages for each NATS measurement, 50 a second.
        #[arg(long, default_value_t = 500)]
        messages: u64,
    },
}

/// A port for a baseline program that binds its own (etcd, nginx, ctr run).
fn free_port() -> u16 {
    rouse_testkit::listener::pick_port(std::net::IpAddr::from([127, 0, 0, 1])).expect("a free port")
}

/// A rouse cluster under benchmark, on the test kit's harness (nodes on
/// listeners the harness holds).
struct Rouse {
    kit: Kit,
    token: String,
    _tmp: tempfile::TempDir,
}

impl Rouse {
    /// Starts `n` nodes (node 1 bootstraps, the others join it) with
    /// `common` flags and each node's own from `per_node`, and waits until
    /// all are voters.
    /// `instances`: the nodes run instances (each gets an instance subnet).
    async fn start(
        n: u64,
        instances: bool,
        common: &[String],
        per_node: impl Fn(u64) -> Vec<String>,
    ) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let refs: Vec<&str> = common.iter().map(String::as_str).collect();
        let mut template = Template::new(rouse_testkit::env::binary("rouse-node"), &refs);
        template.env.clear();
        template.isolated_instances = instances;
        let mut kit = Kit::new(tmp.path(), template);
        for id in 1..=n {
            let extra = per_node(id);
            let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
            kit.add(id, (id > 1).then_some(1), &refs)
                .await
                .unwrap_or_else(|e| panic!("starting node {id}: {e:#}"));
        }
        kit.wait_voters(n as usize).await;
        let token = kit.admin_token().await;
        Rouse {
            kit,
            token,
            _tmp: tmp,
        }
    }

    fn endpoint(&self, id: u64) -> String {
        self.kit.endpoint(id)
    }

    /// Node `id`'s mesh address (HOST:PORT).
    fn http(&self, id: u64) -> String {
        self.kit.nodes[&id].http.addr().to_string()
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.kit.nodes[&id].spec.data_dir.clone()
    }

    async fn connect(&self, id: u64) -> Result<rouse_client::Client, rouse_client::Error> {
        rouse_client::Client::connect(&self.endpoint(id), Some(&self.token)).await
    }

    /// A client of node 1 once it takes writes, with a `bench` namespace.
    async fn bench_namespace(&self) -> rouse_client::Client {
        let c = self.kit.client(1).await;
        rouse_testkit::eventually("a bench namespace", || {
            let mut c = c.clone();
            async move { c.create_namespace("bench", Default::default()).await }
        })
        .await;
        c
    }
}

/// Flags of a node on the test containerd: its containerd namespace, the
/// registry (the harness gives each node an instance subnet of its own).
fn runtime_flags(sock: &str, reg: &str, ns: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--containerd",
        sock,
        "--containerd-namespace",
        ns,
        "--insecure-registry",
        reg,
        "--log",
        "warn",
        "--stop-grace",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

impl Drop for Rouse {
    /// Nodes stop, then their instance networks go.
    fn drop(&mut self) {
        self.kit.stop_all();
        self.kit.remove_instance_networks();
    }
}

/// Where an instance listens: its address on its node's instance bridge
/// (loopback for a node on the host network).
fn instance_addr(i: &rouse_client::pb::Instance) -> anyhow::Result<SocketAddr> {
    let ip: IpAddr = if i.ip.is_empty() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        i.ip.parse()?
    };
    Ok(SocketAddr::new(ip, u16::try_from(i.port)?))
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    ops: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Stats {
    fn from(mut lat: Vec<Duration>, wall: Duration) -> Stats {
        lat.sort();
        let pick =
            |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
        Stats {
            ops: lat.len(),
            secs: wall.as_secs_f64(),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
        }
    }
    fn tput(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// Runs `total` writes over `clients` tasks; `op(client, seq)` does one write.
async fn drive<F, Fut>(clients: usize, total: usize, op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let per = total / clients;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                op(c, i).await.expect("write failed");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    Stats::from(all, start.elapsed())
}

async fn start_etcd(dir: &Path, procs: &mut Procs) -> Vec<String> {
    let peers: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = peers
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("e{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut eps = Vec::new();
    for (i, (c, p)) in peers.iter().enumerate() {
        let args: Vec<String> = vec![
            "--name".into(),
            format!("e{i}"),
            "--data-dir".into(),
            dir.join(format!("etcd{i}")).display().to_string(),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{c}"),
            "--advertise-client-urls".into(),
            format!("http://127.0.0.1:{c}"),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{p}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{p}"),
            "--initial-cluster".into(),
            initial.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            "rouse-bench".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        procs.0.push(spawn(
            Path::new("etcd"),
            &args,
            &dir.join(format!("etcd{i}.log")),
        ));
        eps.push(format!("http://127.0.0.1:{c}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = etcd_client::Client::connect(eps.clone(), None).await {
            if c.put("bench/ready", "1", None).await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "etcd cluster did not form");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eps
}

/// A namespace-sized value, so both systems store similar bytes.
fn payload(i: usize) -> String {
    format!(
        r#"{{"name":"ns-{i}","env":{{"GREETING":"hello"}},"revision":{i},"created_at_ms":1795952134873}}"#
    )
}

async fn control_plane(serial: usize, parallel: usize, clients: usize) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut procs = Procs(Vec::new());
    let rouse = three_nodes(&[]).await;
    let etcd_eps = start_etcd(tmp.path(), &mut procs).await;

    let mut rouse_clients = Vec::new();
    for i in 0..clients.max(1) {
        rouse_clients.push(rouse.connect(i as u64 % 3 + 1).await?);
    }
    let rouse_clients = Arc::new(rouse_clients);
    let etcd = etcd_client::Client::connect(etcd_eps.clone(), None).await?;

    let mut rows = Vec::new();
    for (label, n_clients, total) in [
        ("1 client", 1usize, serial),
        (&*format!("{clients} clients"), clients, parallel),
    ] {
        let label = label.to_string();
        let rc = rouse_clients.clone();
        let tag = n_clients;
        let rouse = drive(n_clients, total, move |c, i| {
            let mut client = rc[c].clone();
            async move {
                client
                    .create_namespace(&format!("b{tag}-c{c}-{i}"), Default::default())
                    .await?;
                Ok(())
            }
        })
        .await;
        let e = etcd.clone();
        let etcd_stats = drive(n_clients, total, move |c, i| {
            let mut kv = e.kv_client();
            async move {
                kv.put(format!("/namespaces/b{tag}-c{c}-{i}"), payload(i), None)
                    .await?;
                Ok(())
            }
        })
        .await;
        rows.push((label, rouse, etcd_stats));
    }

    println!("control-plane writes, 3 nodes on loopback, same harness, same run");
    println!(
        "{:<12} {:>8} {:>12} {:>9} {:>9} | {:>12} {:>9} {:>9} | {:>10} {:>9} {:>9}",
        "clients",
        "writes",
        "rouse op/s",
        "p50 ms",
        "p99 ms",
        "etcd op/s",
        "p50 ms",
        "p99 ms",
        "tput ratio",
        "p50 x",
        "p99 x"
    );
    for (label, r, e) in &rows {
        println!("{:<12} {:>8} {:>12.0} {:>9.2} {:>9.2} | {:>12.0} {:>9.2} {:>9.2} | {:>10.2} {:>9.2} {:>9.2}",
            label, r.ops, r.tput(), r.p50_ms, r.p99_ms, e.tput(), e.p50_ms, e.p99_ms,
            r.tput() / e.tput(), r.p50_ms / e.p50_ms, r.p99_ms / e.p99_ms);
    }
    println!("tput ratio = rouse/etcd throughput (higher is better for rouse); p50 x, p99 x = rouse/etcd latency (lower is better)");
    drop((procs, rouse));
    Ok(())
}

fn build_image(registry: &str, repo_tag: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/images/build-hello.sh"
    );
    let st = Command::new("bash")
        .arg(script)
        .args(["push", registry, repo_tag])
        .status()
        .unwrap();
    assert!(st.success(), "building {repo_tag}");
}

/// rouse's cold starts by phase, as `container get` reports them (medians).
fn phase_line(phases: &[rouse_client::pb::ColdStartSummary]) -> String {
    let m = |f: fn(&rouse_client::pb::ColdStartSummary) -> u64| {
        median(phases.iter().map(|p| f(p) as f64).collect())
    };
    format!(
        "rouse's cold starts by phase (medians, ms): placement {:.0} + pull {:.0} + create {:.0} + start {:.0} (network {:.0}) + ready {:.0} = {:.0}",
        m(|p| p.last_placement_ms),
        m(|p| p.last_pull_ms),
        m(|p| p.last_create_ms),
        m(|p| p.last_start_ms),
        m(|p| p.last_network_ms),
        m(|p| p.last_ready_ms),
        m(|p| p.last_total_ms)
    )
}

/// The cold start `bench/name` reported (once its instance reported it).
async fn eventually_cold_start(
    c: &mut rouse_client::Client,
    name: &str,
) -> anyhow::Result<rouse_client::pb::ColdStartSummary> {
    let t = Instant::now();
    loop {
        if let Some(cs) = c.get_container("bench", name, false).await?.cold_start {
            return Ok(cs);
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "{name} reported no cold start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The CNI plugins rouse-node finds (the baseline uses the same ones).
fn cni_plugins() -> anyhow::Result<PathBuf> {
    rouse_node::runtime::network::find_plugins(None).map_err(|e| anyhow::anyhow!("{e}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn runtime(rounds: usize) -> anyhow::Result<()> {
    let (sock, reg, run) = test_env()?;
    eprintln!("building {} pairs of identical test images…", rounds);
    for i in 0..rounds {
        build_image(&reg, &format!("bench-{run}/rouse:{i}"));
        build_image(&reg, &format!("bench-{run}/ctr0:{i}"));
        build_image(&reg, &format!("bench-{run}/ctr1:{i}"));
    }
    let ns = format!("bench-rouse-{run}");
    let (rouse, mut c, _http) = single_node(&sock, &reg, &ns, &[]).await?;
    let ctr_ns = format!("bench-ctr-{run}");
    let ctr = Ctr::new(&sock, &ctr_ns);
    let cni = CniConf::install(&cni_plugins()?)?;
    let nets = [Net::Host, Net::Cni(&cni)];
    let (mut rouse_t, mut ctr_t) = (Vec::new(), vec![Vec::new(), Vec::new()]);
    let mut phases = Vec::new();
    for i in 0..rounds {
        // rouse: deploy → scheduled → pulled → unpacked → started → first 200.
        let name = format!("r{i}");
        let t = Instant::now();
        c.deploy_container(rouse_client::pb::DeployContainerRequest {
            namespace: "bench".into(),
            name: name.clone(),
            image: Some(format!("{reg}/bench-{run}/rouse:{i}")),
            min_scale: Some(1),
            cpu_mvcpu: Some(100),
            memory_mb: Some(64),
            ..Default::default()
        })
        .await?;
        let addr = loop {
            let ct = c.get_container("bench", &name, true).await?;
            if let Some(i) = ct.instances.iter().find(|i| {
                i.port != 0 && (!i.ip.is_empty()) && (i.state == "starting" || i.state == "ready")
            }) {
                break instance_addr(i)?;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "rouse instance did not start: {:?}",
                ct.instances
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        first_200(addr, Duration::from_secs(60)).await?;
        rouse_t.push(t.elapsed().as_secs_f64() * 1000.0);
        let ct = eventually_cold_start(&mut c, &name).await?;
        phases.push(ct);
        c.delete_container("bench", &name).await?;

        // Baselines: ctr images pull + ctr run, same containerd, on the
        // host network and with CNI.
        for (n, net) in nets.iter().enumerate() {
            let image = format!("{reg}/bench-{run}/ctr{n}:{i}");
            let name = format!("c{n}-{i}");
            let t = Instant::now();
            ctr.pull(&image)?;
            let pulled = t.elapsed().as_secs_f64() * 1000.0;
            let started = ctr.start_to_200(&image, &name, net).await?;
            ctr_t[n].push(pulled + started);
            ctr.remove(&name).await;
        }
        eprintln!(
            "round {i}: rouse {:.0} ms, ctr --net-host {:.0} ms, ctr --cni {:.0} ms",
            rouse_t[i], ctr_t[0][i], ctr_t[1][i]
        );
    }
    let r = median(rouse_t);
    println!("cold start from a registry to first HTTP 200, {rounds} rounds, medians");
    println!(
        "{:<52} {:>10}",
        "rouse (deploy → schedule → pull → unpack → start)",
        format!("{r:.0} ms")
    );
    for (net, t) in nets.iter().zip(ctr_t) {
        let b = median(t);
        println!(
            "{:<52} {:>10}   ratio rouse/ctr {:.2}",
            format!("ctr images pull + {} (baseline)", net.label()),
            format!("{b:.0} ms"),
            r / b
        );
    }
    println!("{}", phase_line(&phases));
    drop(rouse);
    ctr_cleanup(&sock, &ns);
    ctr_cleanup(&sock, &ctr_ns);
    Ok(())
}

#[derive(Clone)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn parse_ms(s: &str) -> f64 {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().unwrap_or(0.0) / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap_or(0.0)
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

fn wrk(url: &str, host: Option<&str>, seconds: u64) -> anyhow::Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c32", &format!("-d{seconds}s"), "--latency"]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd.arg(url).output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut w = Wrk {
        rps: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => w.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => w.p50_ms = parse_ms(v),
            ["99%", v] => w.p99_ms = parse_ms(v),
            ["Non-2xx", "or", "3xx", "responses:", v] => w.errors += v.parse::<u64>().unwrap_or(0),
            _ if line.trim_start().starts_with("Socket errors:") => {
                w.errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    anyhow::ensure!(
        w.rps > 0.0,
        "wrk gave no result:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(w)
}

/// The status of `GET http://{addr}/` with `Host: host` (0: no answer).
fn http_status(addr: &str, host: &str, max_secs: u64) -> anyhow::Result<u16> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m"])
        .arg(max_secs.to_string())
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("http://{addr}/"))
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0))
}

async fn failover(
    kills: usize,
    heartbeat_ms: u64,
    election_timeout_ms: Option<u64>,
) -> anyhow::Result<()> {
    let election_timeout_ms = election_timeout_ms.unwrap_or((heartbeat_ms * 3).max(500));
    let (hb, et) = (heartbeat_ms.to_string(), election_timeout_ms.to_string());
    let mut rouse = three_nodes(&["--heartbeat-ms", &hb, "--election-timeout-ms", &et]).await;
    let mut took = Vec::new();
    let mut terms = Vec::new();
    for k in 0..kills {
        let leader = rouse.kit.leader().await;
        let survivor = if leader == 1 { 2 } else { 1 };
        let mut s = rouse.connect(survivor).await?;
        let before = s.node_info().await?.term;
        rouse.kit.kill(leader);
        let t = Instant::now();
        loop {
            match s
                .create_namespace(&format!("after-{k}"), Default::default())
                .await
            {
                Ok(_) => break,
                Err(e) if e.code() == Some(tonic::Code::Unavailable) => {}
                Err(e) => anyhow::bail!("write after the kill: {e}"),
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "no write within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        took.push(t.elapsed().as_secs_f64() * 1000.0);
        let after = s.node_info().await?.term;
        terms.push(after - before);
        println!(
            "kill {:>2}: leader {leader}, write through node {survivor} after {:>6.0} ms, {} term change(s)",
            k + 1,
            took[k],
            after - before
        );
        rouse.kit.restart(leader)?;
        rouse.kit.wait_voters(3).await;
    }
    let mut sorted = took.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "leader SIGKILL -> write accepted through a survivor, --heartbeat-ms {heartbeat_ms} \
         --election-timeout-ms {election_timeout_ms}, {kills} kills: \
         p50 {:.0} ms, max {:.0} ms; term changes per kill: max {}, total {}",
        median(took.clone()),
        sorted.last().copied().unwrap_or(0.0),
        terms.iter().max().copied().unwrap_or(0),
        terms.iter().sum::<u64>()
    );
    Ok(())
}

/// Waits until bench/`name` has a ready instance.
async fn ready(c: &mut rouse_client::Client, name: &str) -> anyhow::Result<()> {
    let want = [("bench".to_string(), name.to_string(), 1)];
    rouse_client::apply::wait_ready(c, &want, Duration::from_secs(120), |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// CPU time (s) the process `pid` has used, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

async fn metering(seconds: u64, rounds: usize, idle_seconds: u64) -> anyhow::Result<()> {
    let (sock, reg, run) = test_env()?;
    let backend = rouse_testkit::env::binary("keepalive-hello");
    let image = rouse_testkit::env::push_image(&format!("bench-{run}/meter"), "1", Some(&backend));
    let mut nodes = Vec::new();
    for (label, flags) in [
        ("metering on", vec!["--suspend-after", "0s"]),
        (
            "metering off",
            vec!["--suspend-after", "0s", "--metering", "off"],
        ),
    ] {
        let (rouse, mut c, http) = single_node(
            &sock,
            &reg,
            &format!("bench-meter-{}-{run}", nodes.len()),
            &flags,
        )
        .await?;
        c.deploy_container(rouse_client::pb::DeployContainerRequest {
            namespace: "bench".into(),
            name: "web".into(),
            image: Some(image.clone()),
            min_scale: Some(1),
            max_scale: Some(1),
            max_concurrency: Some(1000),
            cpu_mvcpu: Some(1000),
            memory_mb: Some(128),
            ..Default::default()
        })
        .await?;
        ready(&mut c, "web").await?;
        let pid = rouse.kit.nodes[&1]
            .pid()
            .ok_or_else(|| anyhow::anyhow!("no pid for {label}"))?;
        nodes.push((label, rouse, c, http, pid));
    }
    // Idle: both nodes side by side, each with its warm instance.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before: Vec<f64> = nodes
        .iter()
        .map(|n| cpu_seconds(n.4))
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let idle: Vec<f64> = nodes
        .iter()
        .zip(&before)
        .map(|(n, b)| Ok((cpu_seconds(n.4)? - b) / idle_seconds as f64 * 100.0))
        .collect::<anyhow::Result<_>>()?;
    // Throughput: alternating rounds, so drift hits both alike.
    let mut runs: Vec<Vec<Wrk>> = vec![Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, n) in nodes.iter().enumerate() {
            runs[i].push(wrk(
                &format!("http://{}/", n.3),
                Some("web.bench.rouse.localhost"),
                seconds,
            )?);
        }
    }
    println!(
        "metering's own cost: two single-node clusters, one warm keep-alive instance each; \
         idle {idle_seconds} s side by side; wrk -t2 -c32 -d{seconds}s, {rounds} alternating rounds, medians"
    );
    println!(
        "  {:<14} {:>16} {:>10} {:>9} {:>9}",
        "node", "idle CPU % core", "req/s", "p50 ms", "p99 ms"
    );
    let mut rps = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let r = median(runs[i].iter().map(|w| w.rps).collect());
        let p50 = median(runs[i].iter().map(|w| w.p50_ms).collect());
        let p99 = median(runs[i].iter().map(|w| w.p99_ms).collect());
        println!(
            "  {:<14} {:>16.2} {:>10.0} {:>9.2} {:>9.2}",
            n.0, idle[i], r, p50, p99
        );
        rps.push(r);
    }
    println!(
        "  throughput on/off: {:.3} ({:+.1}%; goal: within 2%)",
        rps[0] / rps[1],
        (rps[0] / rps[1] - 1.0) * 100.0
    );
    println!(
        "  idle CPU added by metering: {:+.2}% of a core (goal: under 1%)",
        idle[0] - idle[1]
    );
    Ok(())
}

async fn mesh(rounds: usize, seconds: u64, host_network: bool) -> anyhow::Result<()> {
    let net: &[&str] = if host_network {
        &[
            "--instance-network",
            "host",
            "--instance-ports",
            "23000-23099",
        ]
    } else {
        &[]
    };
    println!(
        "instances on {}",
        if host_network {
            "the host network"
        } else {
            "networks of their own (CNI)"
        }
    );
    let (sock, reg, run) = test_env()?;
    // A backend that keeps connections alive and answers at once, so the
    // proxies are what is measured (see keepalive-hello.rs).
    let backend = rouse_testkit::env::binary("keepalive-hello");
    let image = rouse_testkit::env::push_image(&format!("bench-{run}/mesh"), "1", Some(&backend));
    let tmp = tempfile::tempdir()?;
    let mut procs = Procs(Vec::new());
    let mut flags = vec!["--suspend-after", "0s"];
    flags.extend_from_slice(net);
    let (rouse, mut c, http) =
        single_node(&sock, &reg, &format!("bench-mesh-{run}"), &flags).await?;
    let mesh_port: u16 = http.rsplit(':').next().unwrap_or("0").parse()?;
    let deploy = |name: &str, min: u32| rouse_client::pb::DeployContainerRequest {
        namespace: "bench".into(),
        name: name.into(),
        image: Some(image.clone()),
        min_scale: Some(min),
        max_scale: Some(1),
        max_concurrency: Some(1000),
        cpu_mvcpu: Some(1000),
        memory_mb: Some(128),
        ..Default::default()
    };
    // Warm the image cache once.
    c.deploy_container(deploy("warmup", 1)).await?;
    let direct = loop {
        let ct = c.get_container("bench", "warmup", true).await?;
        if let Some(i) = ct.instances.iter().find(|i| i.state == "ready") {
            break instance_addr(i)?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Cold start through the mesh (stopped, image cached) vs ctr run.
    let ctr_ns = format!("bench-mesh-ctr-{run}");
    let ctr = Ctr::new(&sock, &ctr_ns);
    ctr.pull(&image)?;
    let cni = CniConf::install(&cni_plugins()?)?;
    let nets = [Net::Host, Net::Cni(&cni)];
    let (mut cold, mut base) = (Vec::new(), vec![Vec::new(), Vec::new()]);
    let mut phases = Vec::new();
    for i in 0..rounds {
        let name = format!("cold{i}");
        c.deploy_container(deploy(&name, 0)).await?;
        let t = Instant::now();
        let host = format!("{name}.bench.rouse.localhost");
        loop {
            if http_status(&format!("127.0.0.1:{mesh_port}"), &host, 60)? == 200 {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "no cold start");
        }
        cold.push(t.elapsed().as_secs_f64() * 1000.0);
        if let Some(cs) = c.get_container("bench", &name, false).await?.cold_start {
            phases.push(cs);
        }
        c.delete_container("bench", &name).await?;
        for (n, net) in nets.iter().enumerate() {
            let name = format!("b{n}-{i}");
            base[n].push(ctr.start_to_200(&image, &name, net).await?);
            ctr.remove(&name).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cm = median(cold);
    let base: Vec<f64> = base.into_iter().map(median).collect();

    // Warm: wrk through the mesh, straight to the instance, via nginx.
    let nginx_port = free_port();
    let conf = tmp.path().join("nginx.conf");
    std::fs::write(&conf, format!(
        "daemon off; master_process off; worker_processes 1; pid {pid}; error_log {err} warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; upstream u {{ server {direct}; keepalive 64; }}\n\
         server {{ listen 127.0.0.1:{nginx_port}; location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
        pid = tmp.path().join("nginx.pid").display(), err = tmp.path().join("nginx.err").display()))?;
    procs.0.push(spawn(
        Path::new("nginx"),
        &[
            "-c".into(),
            conf.display().to_string(),
            "-p".into(),
            tmp.path().display().to_string(),
        ],
        &tmp.path().join("nginx.log"),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let direct = wrk(&format!("http://{direct}/"), None, seconds)?;
    let via_mesh = wrk(
        &format!("http://127.0.0.1:{mesh_port}/"),
        Some("warmup.bench.rouse.localhost"),
        seconds,
    )?;
    let via_nginx = wrk(&format!("http://127.0.0.1:{nginx_port}/"), None, seconds)?;

    let (wake, warm) = wake_rounds(&sock, &reg, &image, rounds, &run, net).await?;
    let (wm, ww) = (median(wake), median(warm));

    println!(
        "wake from suspended (paused, memory kept) through the mesh, {rounds} rounds, medians"
    );
    println!("  first request to a suspended instance: {wm:.1} ms");
    println!("  next request, instance running:        {ww:.1} ms");
    println!("  ratio wake/warm: {:.1}", wm / ww);
    println!("cold start to first 200, image cached, {rounds} rounds, medians");
    println!("  rouse mesh (request → scale from zero → start → proxied 200): {cm:.0} ms");
    println!("  {}", phase_line(&phases));
    for (net, b) in nets.iter().zip(&base) {
        println!(
            "  {:<60} {b:.0} ms   ratio rouse/ctr {:.2}",
            format!("{} (baseline):", net.label()),
            cm / b
        );
    }
    println!("warm, wrk -t2 -c32 -d{seconds}s, a keep-alive HTTP/1.1 instance (keepalive-hello)");
    println!(
        "  {:<22} {:>10} {:>9} {:>9} {:>7}",
        "path", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for (label, w) in [
        ("direct to instance", &direct),
        ("through rouse mesh", &via_mesh),
        ("nginx proxy_pass", &via_nginx),
    ] {
        println!(
            "  {:<22} {:>10.0} {:>9.2} {:>9.2} {:>7}",
            label, w.rps, w.p50_ms, w.p99_ms, w.errors
        );
    }
    println!(
        "  mesh/direct throughput {:.2}, mesh/nginx throughput {:.2}, mesh/direct p99 {:.2}",
        via_mesh.rps / direct.rps,
        via_mesh.rps / via_nginx.rps,
        via_mesh.p99_ms / direct.p99_ms
    );
    c.delete_container("bench", "warmup").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop((procs, rouse));
    ctr_cleanup(&sock, &format!("bench-mesh-{run}"));
    ctr_cleanup(&sock, &ctr_ns);
    Ok(())
}

/// Starts 3 real nodes (no containerd) with the given extra flags.
async fn three_nodes(extra: &[&str]) -> Rouse {
    let tmp_sock = std::env::temp_dir().join("rouse-bench-no-containerd.sock");
    let log = if extra.contains(&"--log") {
        &[][..]
    } else {
        &["--log", "warn"][..]
    };
    let mut common: Vec<String> = [
        "--containerd",
        &tmp_sock.display().to_string(),
        "--node-grace",
        "1h",
    ]
    .iter()
    .chain(log)
    .map(|s| s.to_string())
    .collect();
    common.extend(extra.iter().map(|s| s.to_string()));
    Rouse::start(3, false, &common, |_| Vec::new()).await
}

/// One run: registers simulated nodes, deploys containers, and times how
/// long the leader's scheduler takes to commit every placement.
async fn placement_run(
    nodes: u64,
    containers: u32,
    per: u32,
    batch: usize,
) -> anyhow::Result<(f64, f64)> {
    let rouse = three_nodes(&["--placement-batch", &batch.to_string()]).await;
    scale::register_simulated_nodes(&rouse, nodes).await?;
    let mut c = rouse.connect(1).await?;
    c.create_namespace("sim", Default::default()).await?;
    let total = u64::from(containers) * u64::from(per);
    let t = Instant::now();
    // Deploys from 16 clients, so that the scheduler, not the feed, is measured.
    scale::deploy_range(&rouse, 0, containers, per, 16.min(containers)).await?;
    let deployed = t.elapsed();
    loop {
        let placed: u64 = c
            .list_containers("sim", true)
            .await?
            .iter()
            .map(|ct| ct.instances.len() as u64)
            .sum();
        if placed >= total {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "only {placed} of {total} placed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(rouse);
    Ok((total as f64 / secs, deployed.as_secs_f64()))
}

async fn placement(nodes: u64, containers: u32, per: u32) -> anyhow::Result<()> {
    let total = u64::from(containers) * u64::from(per);
    let (batched, d1) = placement_run(nodes, containers, per, 0).await?;
    let (single, d2) = placement_run(nodes, containers, per, 1).await?;
    println!("placements committed through a 3-node Raft cluster, {nodes} simulated nodes, {total} instances");
    println!("  batched (one proposal per scheduling pass): {batched:>8.0} placements/s  (deploys took {d1:.2}s)");
    println!("  one placement per proposal:                 {single:>8.0} placements/s  (deploys took {d2:.2}s)");
    println!("  ratio batched/single: {:.1}", batched / single);
    println!("  context: Nomad's published C1M run committed 3,750 placements/s (different hardware and scale)");
    Ok(())
}

/// A node of its own with --suspend-after 2s: time the first request to a
/// suspended instance through the mesh, and the next one (running).
async fn wake_rounds(
    sock: &str,
    reg: &str,
    image: &str,
    rounds: usize,
    run: &str,
    net: &[&str],
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut flags = vec!["--suspend-after", "2s"];
    flags.extend_from_slice(net);
    let (rouse, mut c, http) = single_node(sock, reg, &format!("bench-wake-{run}"), &flags).await?;
    c.deploy_container(rouse_client::pb::DeployContainerRequest {
        namespace: "bench".into(),
        name: "nap".into(),
        image: Some(image.to_string()),
        min_scale: Some(1),
        cpu_mvcpu: Some(1000),
        memory_mb: Some(128),
        ..Default::default()
    })
    .await?;
    let one = |host: &str| -> anyhow::Result<f64> {
        let t = Instant::now();
        anyhow::ensure!(http_status(&http, host, 10)? == 200, "request failed");
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    let (mut wake, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        loop {
            let ct = c.get_container("bench", "nap", true).await?;
            if ct.instances.iter().any(|i| i.state == "suspended") {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "never suspended: {:?}",
                ct.instances
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wake.push(one("nap.bench.rouse.localhost")?);
        warm.push(one("nap.bench.rouse.localhost")?);
    }
    c.delete_container("bench", "nap").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(rouse);
    ctr_cleanup(sock, &format!("bench-wake-{run}"));
    Ok((wake, warm))
}

/// Removes every task and container a benchmark left in `ns`.
fn ctr_cleanup(sock: &str, ns: &str) {
    rouse_chaos::mesh::remove_leftovers(sock, ns);
}

/// One bootstrapped node on the test containerd, with a `bench` namespace:
/// (the node, a client, its mesh address).
async fn single_node(
    sock: &str,
    reg: &str,
    ns: &str,
    extra: &[&str],
) -> anyhow::Result<(Rouse, rouse_client::Client, String)> {
    let isolated = !extra.contains(&"--instance-network");
    let rouse = Rouse::start(1, isolated, &runtime_flags(sock, reg, ns, extra), |_| {
        Vec::new()
    })
    .await;
    let c = rouse.bench_namespace().await;
    let http = rouse.http(1);
    Ok((rouse, c, http))
}

/// A two-node cluster serving one instance, for the hop benchmark.
struct HopCluster {
    label: &'static str,
    _rouse: Rouse,
    client: rouse_client::Client,
    ns: String,
    /// Where the instance listens, the mesh of its node, the other mesh.
    direct: String,
    local: String,
    other: String,
    node: u64,
}

async fn hop_cluster(
    label: &'static str,
    insecure: bool,
    sock: &str,
    reg: &str,
    image: &str,
    ns: String,
) -> anyhow::Result<HopCluster> {
    // No suspend tier: the direct runs must find the instance running.
    let mut extra: Vec<&str> = vec!["--suspend-after", "0s"];
    if insecure {
        extra.push("--insecure");
    }
    let rouse = Rouse::start(2, true, &[], |_| runtime_flags(sock, reg, &ns, &extra)).await;
    let (h1, h2) = (rouse.http(1), rouse.http(2));
    let mut c = rouse.bench_namespace().await;
    c.deploy_container(rouse_client::pb::DeployContainerRequest {
        namespace: "bench".into(),
        name: "web".into(),
        image: Some(image.to_string()),
        min_scale: Some(1),
        max_scale: Some(1),
        max_concurrency: Some(1000),
        cpu_mvcpu: Some(1000),
        memory_mb: Some(128),
        ..Default::default()
    })
    .await?;
    let t = Instant::now();
    let (node, direct) = loop {
        let ct = c.get_container("bench", "web", true).await?;
        if let Some(i) = ct.instances.iter().find(|i| i.state == "ready") {
            break (i.node, instance_addr(i)?);
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "no ready instance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (local, other) = if node == 1 { (h1, h2) } else { (h2, h1) };
    Ok(HopCluster {
        label,
        _rouse: rouse,
        client: c,
        ns,
        direct: direct.to_string(),
        local,
        other,
        node,
    })
}

/// Mean of several wrk runs (errors summed).
fn mean_wrk(runs: &[Wrk]) -> Wrk {
    let n = runs.len().max(1) as f64;
    Wrk {
        rps: runs.iter().map(|w| w.rps).sum::<f64>() / n,
        p50_ms: runs.iter().map(|w| w.p50_ms).sum::<f64>() / n,
        p99_ms: runs.iter().map(|w| w.p99_ms).sum::<f64>() / n,
        errors: runs.iter().map(|w| w.errors).sum(),
    }
}

/// Cross-node hops: wrk to one instance straight, through the mesh of the
/// node that runs it, and through the other node's mesh (a hop), on a
/// cluster with peer mTLS and one with `--insecure`, both up at once and
/// measured in A-B-B-A order (whatever runs later on this machine runs
/// slower, so neither side may always go second).
async fn hop(seconds: u64) -> anyhow::Result<()> {
    let (sock, reg, run) = test_env()?;
    build_image(&reg, &format!("bench-{run}/hop:1"));
    let image = format!("{reg}/bench-{run}/hop:1");
    let mut clusters = vec![
        hop_cluster(
            "peer mTLS",
            false,
            &sock,
            &reg,
            &image,
            format!("bench-hop-{run}-0"),
        )
        .await?,
        hop_cluster(
            "--insecure",
            true,
            &sock,
            &reg,
            &image,
            format!("bench-hop-{run}-1"),
        )
        .await?,
    ];
    let host = Some("web.bench.rouse.localhost");
    for h in &clusters {
        println!(
            "  ({}: the instance runs on node {}; hops come from the other node)",
            h.label, h.node
        );
        // Both meshes must know the instance before the clock runs.
        for m in [&h.local, &h.other] {
            wrk(&format!("http://{m}/"), host, 1)?;
        }
    }
    // [cluster][path] → runs; paths: direct, same-node mesh, hop.
    let mut runs: Vec<Vec<Vec<Wrk>>> = vec![vec![Vec::new(), Vec::new(), Vec::new()]; 2];
    for &i in &[0usize, 1, 1, 0] {
        let h = &clusters[i];
        runs[i][0].push(wrk(&format!("http://{}/", h.direct), None, seconds)?);
        runs[i][1].push(wrk(&format!("http://{}/", h.local), host, seconds)?);
        runs[i][2].push(wrk(&format!("http://{}/", h.other), host, seconds)?);
    }
    println!(
        "cross-node hops, wrk -t2 -c32 -d{seconds}s, one busybox httpd instance, 2 nodes, A-B-B-A, means of 2 runs"
    );
    println!(
        "  {:<12} {:<28} {:>10} {:>9} {:>9} {:>7}",
        "peers", "path", "req/s", "p50 ms", "p99 ms", "errors"
    );
    let means: Vec<Vec<Wrk>> = runs
        .iter()
        .map(|paths| paths.iter().map(|r| mean_wrk(r)).collect())
        .collect();
    for (h, m) in clusters.iter().zip(&means) {
        for (path, w) in [
            ("direct to instance", &m[0]),
            ("mesh of the instance's node", &m[1]),
            ("other node's mesh (hop)", &m[2]),
        ] {
            println!(
                "  {:<12} {:<28} {:>10.0} {:>9.2} {:>9.2} {:>7}",
                h.label, path, w.rps, w.p50_ms, w.p99_ms, w.errors
            );
        }
        println!(
            "  {:<12} hop/direct throughput {:.2}, hop/same-node throughput {:.2}, hop/same-node p50 {:.2}",
            h.label,
            m[2].rps / m[0].rps,
            m[2].rps / m[1].rps,
            m[2].p50_ms / m[1].p50_ms
        );
    }
    println!(
        "  hop throughput mTLS/plain {:.2}, hop p50 mTLS/plain {:.2}",
        means[0][2].rps / means[1][2].rps,
        means[0][2].p50_ms / means[1][2].p50_ms
    );
    for h in &mut clusters {
        h.client.delete_container("bench", "web").await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for h in clusters {
        let ns = h.ns.clone();
        drop(h);
        ctr_cleanup(&sock, &ns);
    }
    Ok(())
}

/// The test containerd socket and registry (`deploy/test-env.sh`), and a
/// suffix naming this run's images and namespaces.
fn test_env() -> anyhow::Result<(String, String, String)> {
    let sock = std::env::var("ROUSE_TEST_CONTAINERD")
        .map_err(|_| anyhow::anyhow!("ROUSE_TEST_CONTAINERD is unset"))?;
    let reg = std::env::var("ROUSE_TEST_REGISTRY")
        .map_err(|_| anyhow::anyhow!("ROUSE_TEST_REGISTRY is unset"))?;
    Ok((sock, reg, rand_suffix()))
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::ControlPlane {
            serial_writes,
            parallel_writes,
            clients,
        } => control_plane(serial_writes, parallel_writes, clients).await,
        Cmd::Runtime { rounds } => runtime(rounds).await,
        Cmd::Mesh {
            rounds,
            seconds,
            host_network,
        } => mesh(rounds, seconds, host_network).await,
        Cmd::Hop { seconds } => hop(seconds).await,
        Cmd::Failover {
            kills,
            heartbeat_ms,
            election_timeout_ms,
        } => failover(kills, heartbeat_ms, election_timeout_ms).await,
        Cmd::Metering {
            seconds,
            rounds,
            idle_seconds,
        } => metering(seconds, rounds, idle_seconds).await,
        Cmd::Triggers {
            cron_seconds,
            messages,
        } => triggers(cron_seconds, messages).await,
        Cmd::Placement {
            nodes,
            containers,
            per_container,
        } => placement(nodes, containers, per_container).await,
        Cmd::Scale {
            nodes,
            containers,
            per_container,
            parallel,
        } => scale::scale(nodes, containers, per_container, parallel).await,
    }
}

// ------------------------------------------------------------- triggers

/// p50 and p99 of `v` (ms).
fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.99))
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `event TRIGGER ID µS` lines of the instance logs under `dir`.
fn events(dir: &Path, trigger: &str) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let ["event", t, id, ms] = f.as_slice() {
                if *t == trigger {
                    if let Ok(ms) = ms.parse() {
                        out.entry(id.to_string()).or_insert(ms);
                    }
                }
            }
        }
    }
    out
}

async fn triggers(cron_seconds: u64, messages: u64) -> anyhow::Result<()> {
    use futures::StreamExt;
    let (sock, reg, run) = test_env()?;
    // A nats-server -js of this run's own.
    let tmp = tempfile::tempdir()?;
    let nats_port = free_port();
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-sd",
            ])
            .arg(tmp.path().join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("nats-server: {e} (apt install nats-server)"))?,
    );
    let url = format!("nats://127.0.0.1:{nats_port}");
    let client = loop {
        match async_nats::connect(&url).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let js = async_nats::jetstream::new(client.clone());
    for (name, subject) in [("BASE", "base.in"), ("TRIG", "trig.in")] {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            ..Default::default()
        })
        .await?;
    }
    let pace = Duration::from_millis(20);

    // Baseline 1: core NATS, publish → subscriber.
    let mut sub = client.subscribe("core.bench").await?;
    let reader = tokio::spawn(async move {
        let mut lat = Vec::new();
        while let Some(m) = sub.next().await {
            let sent: u128 = String::from_utf8_lossy(&m.payload).parse().unwrap_or(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            lat.push((now.saturating_sub(sent)) as f64 / 1000.0);
            if lat.len() as u64 == messages {
                break;
            }
        }
        lat
    });
    for _ in 0..messages {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        client.publish("core.bench", now.to_string().into()).await?;
        client.flush().await?;
        tokio::time::sleep(pace).await;
    }
    let core = p50_p99(tokio::time::timeout(Duration::from_secs(30), reader).await??);

    // Baseline 2: JetStream publish (acked) → durable pull consumer.
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("BASE")
        .await?
        .get_or_create_consumer(
            "bench",
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let mut msgs = consumer.messages().await?;
    let reader = tokio::spawn(async move {
        let mut lat = Vec::new();
        while let Some(Ok(m)) = msgs.next().await {
            let sent: u128 = String::from_utf8_lossy(&m.payload).parse().unwrap_or(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            lat.push((now.saturating_sub(sent)) as f64 / 1000.0);
            let _ = m.ack().await;
            if lat.len() as u64 == messages {
                break;
            }
        }
        lat
    });
    for _ in 0..messages {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        js.publish("base.in", now.to_string().into()).await?.await?;
        tokio::time::sleep(pace).await;
    }
    let jet = p50_p99(tokio::time::timeout(Duration::from_secs(60), reader).await??);

    // rouse: a warm container (the keep-alive backend notes each arrival).
    let backend = rouse_testkit::env::binary("keepalive-hello");
    let image = rouse_testkit::env::push_image(&format!("bench-{run}/trig"), "1", Some(&backend));
    let (rouse, mut c, _http) = single_node(&sock, &reg, &format!("bench-trig-{run}"), &[]).await?;
    c.deploy_container(rouse_client::pb::DeployContainerRequest {
        namespace: "bench".into(),
        name: "trig".into(),
        image: Some(image),
        min_scale: Some(1),
        max_scale: Some(1),
        max_concurrency: Some(100),
        cpu_mvcpu: Some(1000),
        memory_mb: Some(128),
        ..Default::default()
    })
    .await?;
    ready(&mut c, "trig").await?;
    let logs = rouse.kit.dir.join("node1").join("logs");

    // Cron, every second.
    c.create_trigger(rouse_client::pb::CreateTriggerRequest {
        namespace: "bench".into(),
        container: "trig".into(),
        name: "tick".into(),
        cron: "* * * * * *".into(),
        ..Default::default()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(cron_seconds)).await;
    c.set_trigger_enabled("bench", "trig", "tick", false)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cron_lat: Vec<f64> = events(&logs, "tick")
        .into_iter()
        .filter_map(|(id, at)| {
            let tick: u64 = id.strip_prefix("tick-")?.parse().ok()?;
            Some(at.saturating_sub(tick * 1000) as f64 / 1000.0)
        })
        .collect();
    let cron_n = cron_lat.len();
    let cron = p50_p99(cron_lat);

    // NATS trigger: publish (acked) → the request at the container.
    c.create_trigger(rouse_client::pb::CreateTriggerRequest {
        namespace: "bench".into(),
        container: "trig".into(),
        name: "orders".into(),
        nats_subject: "trig.in".into(),
        nats_url: url.clone(),
        nats_stream: "TRIG".into(),
        ..Default::default()
    })
    .await?;
    // The consumer starts within a leader pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut published = std::collections::HashMap::new();
    for _ in 0..messages {
        let t = unix_us();
        let ack = js.publish("trig.in", "x".into()).await?.await?;
        published.insert(ack.sequence.to_string(), t);
        tokio::time::sleep(pace).await;
    }
    let t = Instant::now();
    let got = loop {
        let got = events(&logs, "orders");
        if got.len() as u64 >= messages || t.elapsed() > Duration::from_secs(60) {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let nats_lat: Vec<f64> = got
        .iter()
        .filter_map(|(seq, at)| Some(at.saturating_sub(*published.get(seq)?) as f64 / 1000.0))
        .collect();
    let nats_n = nats_lat.len();
    let nats = p50_p99(nats_lat);
    drop(procs);

    println!("| path | samples | p50 ms | p99 ms | p50 vs JetStream |");
    println!("|---|---|---|---|---|");
    println!(
        "| NATS core publish → subscriber (baseline) | {messages} | {:.2} | {:.2} | {:.2}x |",
        core.0,
        core.1,
        core.0 / jet.0
    );
    println!(
        "| JetStream publish → pull consumer (baseline) | {messages} | {:.2} | {:.2} | 1.00x |",
        jet.0, jet.1
    );
    println!("| rouse NATS trigger: publish → request at the container | {nats_n} | {:.2} | {:.2} | {:.2}x |", nats.0, nats.1, nats.0 / jet.0);
    println!("| rouse cron trigger: scheduled time → request at the container | {cron_n} | {:.2} | {:.2} | - |", cron.0, cron.1);
    Ok(())
}
