//! Observability end to end: a real Prometheus scrapes a node's metrics
//! while the test sends a known request rate through the mesh.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use rouse_e2e::{deploy, push_test_image, ready, TestCluster};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus scraping `target` every second, killed on drop.
struct Prometheus {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: rouse\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package `prometheus`)");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// An instant query's value at `at` (seconds since the epoch).
    fn query(&self, q: &str, at: f64) -> Option<f64> {
        let out = std::process::Command::new("curl")
            .args(["-s", "-G", &format!("http://{}/api/v1/query", self.addr)])
            .args(["--data-urlencode", &format!("query={q}")])
            .args(["--data-urlencode", &format!("time={at:.3}")])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
    }

    /// Its targets' state and its log, for a failure's message.
    fn diagnose(&self) -> String {
        let targets = std::process::Command::new("curl")
            .args(["-s", &format!("http://{}/api/v1/targets", self.addr)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let log = std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default();
        format!("targets: {targets}\nlog: {log}")
    }

    /// Whether Prometheus scrapes its target successfully.
    fn target_up(&self) -> bool {
        self.query("up", now_s()) == Some(1.0)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_request_rate_the_test_sent() {
    let image = push_test_image("rouse-test/obs", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("obs", HashMap::new()).await.unwrap();
    c.deploy_container(deploy("obs", "web", &image, 1))
        .await
        .unwrap();
    ready(&c, "obs", "web", 1).await;
    let metrics = cluster.node(1).metrics.addr().to_string();
    let prom = Prometheus::start(&metrics);
    let t = Instant::now();
    while !prom.target_up() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "prometheus never scraped {metrics}: {}",
            prom.diagnose()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 20 requests a second for 40 s over keep-alive connections, each
    // answer's time noted.
    let client: HttpClient<_, Empty<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let url: hyper::Uri = format!("http://{}/", cluster.http(1)).parse().unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut done: Vec<f64> = Vec::new();
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until {
        tick.tick().await;
        let req = hyper::Request::get(url.clone())
            .header("host", "web.obs.rouse.localhost")
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        done.push(now_s());
    }
    let end = now_s();
    // Two more scrapes past the end, then ask about a window inside the run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at = end - 2.0;
    let sent = done.iter().filter(|t| **t > at - 30.0 && **t <= at).count() as f64 / 30.0;
    let seen = prom
        .query("sum(rate(rouse_requests_total[30s]))", at)
        .expect("no value for the rate");
    println!("sent {sent:.2} req/s; prometheus: sum(rate(rouse_requests_total[30s])) = {seen:.2}");
    assert!(
        (seen - sent).abs() <= sent * 0.10,
        "prometheus saw {seen} req/s, the test sent {sent}"
    );
    let ok = prom
        .query("sum(rouse_requests_total{code_class=\"2xx\"})", now_s())
        .unwrap();
    assert!(
        ok >= done.len() as f64,
        "{ok} 2xx counted, {} sent",
        done.len()
    );
    let p99 = prom
        .query(
            "histogram_quantile(0.99, sum by (le) (rate(rouse_request_duration_seconds_bucket[30s])))",
            at,
        )
        .unwrap();
    println!("p99 request duration (mesh + upstream): {p99:.4} s");
    assert!(p99 > 0.0 && p99 < 1.0, "{p99}");

    // The node's own figures, by their conventional names; nothing after
    // the closing `# EOF` (Prometheus refuses a page with more).
    let page = std::process::Command::new("curl")
        .args(["-s", &format!("http://{metrics}/metrics")])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(page.ends_with("# EOF\n"), "{page}");
    for name in [
        "rouse_upstream_duration_seconds_bucket{",
        "rouse_response_body_bytes_total{",
        "rouse_raft_term ",
        "rouse_raft_commit_index ",
        "rouse_raft_applied_index ",
        "rouse_raft_apply_lag ",
        "rouse_raft_leader_changes_total ",
        "rouse_raft_proposal_duration_seconds_count ",
        "rouse_leader_pass_duration_seconds_count{decider=\"placement\"}",
        "rouse_containerd_call_duration_seconds_count{method=\"Tasks.Start\"}",
    ] {
        assert!(page.contains(name), "{name} missing from\n{page}");
    }
    let bytes: f64 = page
        .lines()
        .find(|l| l.starts_with("rouse_response_body_bytes_total{") && l.contains("\"web\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    // Every answer is "hello from rouse\n".
    assert!(bytes >= 17.0 * done.len() as f64, "{bytes} bytes out");
    cluster.assert_no_panics();
}

/// `rouse events -f` from another node than the instance's: an instance
/// OOM-killed shows with reason `oom` within 2 s of the kill, after the
/// events of its deploy; and again on its next crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_shows_an_oom_kill_within_two_seconds() {
    use std::io::BufRead;
    let image = push_test_image("rouse-test/obs", "1");
    let cluster = TestCluster::start_with_runtime(2, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("ev", HashMap::new()).await.unwrap();
    let mut req = deploy("ev", "hog", &image, 1);
    req.memory_mb = Some(64);
    req.max_scale = Some(1);
    req.env = HashMap::from([("ROUSE_TEST_OOM".to_string(), "400".to_string())]);
    c.deploy_container(req).await.unwrap();
    let inst = ready(&c, "ev", "hog", 1).await.remove(0);
    // Follow through the node that does not run it.
    let other = if inst.node == 1 { 2 } else { 1 };
    let mut follow = std::process::Command::new(cluster.bin("rouse"))
        .env("ROUSE_TOKEN", cluster.admin_token())
        .args(["--endpoint", &cluster.endpoint(other)])
        .args(["events", "-f", "ev/hog", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, serde_json::Value)>();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if tx.send((Instant::now(), v)).is_err() {
                return;
            }
        }
    });
    // The kept events first: the deploy, placement and readiness.
    let mut kinds = Vec::new();
    while !kinds.contains(&"instance.ready".to_string()) {
        let (_, v) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("kept events");
        kinds.push(v["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds[0], "container.created", "{kinds:?}");
    assert!(kinds.contains(&"instance.placed".to_string()), "{kinds:?}");

    for round in 1..=2 {
        // The kill's moment: the instance cgroup's OOM-kill count going up
        // (the allocation before it takes its own time on a loaded machine).
        let oom_control = format!(
            "/sys/fs/cgroup/memory/{}/{}/memory.oom_control",
            rouse_node::runtime::spec::CGROUP_PARENT,
            inst.id
        );
        let kills = |path: &str| -> u64 {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| {
                    t.lines().find_map(|l| {
                        l.strip_prefix("oom_kill ")
                            .and_then(|n| n.trim().parse().ok())
                    })
                })
                .unwrap_or(0)
        };
        let before = kills(&oom_control);
        let (code, body) = get(
            &cluster.http(other),
            "hog.ev.rouse.localhost",
            "/cgi-bin/oom",
        );
        assert_eq!(code, 200, "{body}");
        let asked = Instant::now();
        let killed = loop {
            if kills(&oom_control) > before {
                break Instant::now();
            }
            assert!(
                asked.elapsed() < Duration::from_secs(20),
                "no OOM kill in {oom_control}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let crashed = loop {
            let (at, v) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("an instance.crashed event");
            if v["kind"] == "instance.crashed" {
                break (at, v);
            }
        };
        let (at, v) = crashed;
        println!(
            "round {round}: {v} {:?} after the kill ({:?} after the request that set it off)",
            at - killed,
            at - asked
        );
        assert_eq!(v["reason"], "oom", "{v}");
        assert_eq!(v["exit_code"], 137, "{v}");
        assert_eq!(v["instance"], inst.id.as_str(), "{v}");
        assert!(at - killed < Duration::from_secs(2), "{:?}", at - killed);
        // Restarted after its backoff: ready again before the next round.
        loop {
            let (_, v) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("ready again after the crash");
            if v["kind"] == "instance.ready" {
                break;
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    // The text form, from the instance's node, names the reason too.
    let (code, text, err) = cluster.cli(inst.node, &["events", "ev/hog"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.lines()
            .any(|l| l.contains("instance.crashed") && l.contains("reason=oom")),
        "{text}"
    );
    cluster.assert_no_panics();
}

/// A GET through the mesh with curl: (status, body).
fn get(mesh: &str, host: &str, path: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "20", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://{mesh}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

mod otlp {
    //! An OTLP/gRPC trace receiver for the test: keeps every span it gets
    //! with its resource's `rouse.node`.
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    #[derive(Clone, Debug)]
    pub struct Span {
        pub node: i64,
        pub name: String,
        pub trace_id: String,
        pub span_id: String,
        pub parent: String,
        pub attributes: Vec<(String, String)>,
    }

    #[derive(Clone, Default)]
    pub struct Receiver {
        pub spans: Arc<Mutex<Vec<Span>>>,
    }

    fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
        match v.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        }
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut kept = self.spans.lock().unwrap();
            for rs in req.into_inner().resource_spans {
                let node = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "rouse.node")
                    .and_then(|kv| text(&kv.value).parse().ok())
                    .unwrap_or(0);
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        kept.push(Span {
                            node,
                            name: s.name.clone(),
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            parent: hex(&s.parent_span_id),
                            attributes: s
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), text(&kv.value)))
                                .collect(),
                        });
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Serves on a free loopback port; returns its endpoint URL.
    pub async fn start(r: Receiver) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(r))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        format!("http://{addr}")
    }
}

/// One request entering at the node without the instance: the mesh span of
/// both nodes is exported over OTLP under one trace id (the second a child
/// of the first's context), the instance gets the request id and the trace
/// context, and API calls, proposals and the instance's start with its
/// phases have spans too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_nodes_is_one_trace_over_otlp() {
    let receiver = otlp::Receiver::default();
    let endpoint = otlp::start(receiver.clone()).await;
    let image = push_test_image("rouse-test/obs", "1");
    let cluster =
        TestCluster::start_with_runtime(2, &["--otlp-endpoint", &endpoint, "--log-format", "json"])
            .await;
    let mut c = cluster.client(1).await;
    c.create_namespace("tr", HashMap::new()).await.unwrap();
    let mut req = deploy("tr", "web", &image, 1);
    req.max_scale = Some(1);
    c.deploy_container(req).await.unwrap();
    let inst = ready(&c, "tr", "web", 1).await.remove(0);
    let entry = if inst.node == 1 { 2 } else { 1 };
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "20",
            "-D",
            "-",
            "-H",
            "Host: web.tr.rouse.localhost",
        ])
        .arg(format!("http://{}/cgi-bin/env", cluster.http(entry)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let header = |name: &str| {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let request_id = header("x-request-id");
    let env = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("no {name} in the instance's env: {text}"))
    };
    assert_eq!(env("HTTP_X_REQUEST_ID"), request_id);
    // traceparent: 00-TRACE-SPAN-01, the span being the instance's node's.
    let traceparent = env("HTTP_TRACEPARENT");
    let trace_id = traceparent.split('-').nth(1).unwrap().to_string();

    let t = Instant::now();
    let (first, second) = loop {
        let spans = receiver.spans.lock().unwrap().clone();
        let of = |node: u64| {
            spans
                .iter()
                .find(|s| {
                    s.name == "mesh.request" && s.node == node as i64 && s.trace_id == trace_id
                })
                .cloned()
        };
        if let (Some(a), Some(b)) = (of(entry), of(inst.node)) {
            break (a, b);
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no mesh spans of trace {trace_id} on nodes {entry} and {}: {spans:#?}",
            inst.node
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "trace {trace_id}: node {entry} span {} → node {} span {} (parent {})",
        first.span_id, inst.node, second.span_id, second.parent
    );
    assert_eq!(
        second.parent, first.span_id,
        "the hop's span is a child of the entry's"
    );
    assert!(
        first
            .attributes
            .iter()
            .any(|(k, v)| k == "id" && *v == request_id),
        "{first:?}"
    );
    assert!(traceparent.contains(&second.span_id), "{traceparent}");
    let spans = receiver.spans.lock().unwrap().clone();
    for name in [
        "api",
        "raft.proposal",
        "instance.start",
        "pull",
        "create",
        "start",
    ] {
        assert!(
            spans.iter().any(|s| s.name == name),
            "no {name} span in {spans:#?}"
        );
    }
    let start = spans.iter().find(|s| s.name == "instance.start").unwrap();
    for phase in ["pull", "create", "start"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == phase && s.parent == start.span_id),
            "{phase} is not a child of instance.start"
        );
    }
    // --log-format json: every line the node wrote is a JSON object.
    let log = cluster.log_text(1);
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "{log}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
    }
    cluster.assert_no_panics();
}
