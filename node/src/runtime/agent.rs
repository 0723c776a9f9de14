//! The node agent: keeps what runs in containerd equal to what the cluster
//! placed on this node.
//!
//! ```text
//!  every pass:  desired = instances placed on this node (replicated state)
//!               actual  = rouse containers of this node in containerd
//!               decide(desired, supervised, actual) → Supervise / Stop / RemoveOrphan
//!  supervisor (one per instance):
//!      resolve+pin image ─▶ ensure image ─▶ adopt running task, or create+start
//!      ─▶ ready when its port accepts ─▶ wait exit ─▶ crashed (backoff) ─▶ start again
//!      stop: SIGTERM, grace, SIGKILL, delete task, container, snapshot
//! ```
//!
//! [`decide`] is pure; everything else is the executor.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::image::Images;
use super::spec::{self, InstanceSpec};
use super::task::{TaskState, Tasks};
use super::{labels, RuntimeError};
use crate::cluster::{now_ms, Cluster};
use crate::state::{ColdStart, Command, Container, Instance, InstanceState, InstanceStatus};

/// What one reconcile pass should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a supervisor for a desired instance (it adopts a running task).
    Supervise(String),
    /// Stop the supervisor of an instance no longer desired (it removes it).
    Stop(String),
    /// Remove a container that is neither desired nor supervised.
    RemoveOrphan(String),
}

/// Pure decision: desired vs supervised vs actual containers.
pub fn decide(
    desired: &BTreeSet<String>,
    supervised: &BTreeSet<String>,
    actual: &BTreeSet<String>,
) -> Vec<Action> {
    let mut out = Vec::new();
    for id in desired.difference(supervised) {
        out.push(Action::Supervise(id.clone()));
    }
    for id in supervised.difference(desired) {
        out.push(Action::Stop(id.clone()));
    }
    for id in actual
        .iter()
        .filter(|id| !desired.contains(*id) && !supervised.contains(*id))
    {
        out.push(Action::RemoveOrphan(id.clone()));
    }
    out
}

/// Node-local settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub ports: (u16, u16),
    pub stop_grace: Duration,
    pub image_gc_after: Duration,
}

struct Supervisor {
    stop: watch::Sender<bool>,
}

pub struct Agent {
    cluster: Arc<Cluster>,
    pub images: Arc<Images>,
    pub tasks: Arc<Tasks>,
    config: AgentConfig,
    supervisors: Mutex<HashMap<String, Supervisor>>,
    ports: Mutex<HashSet<u16>>,
    /// Last time each image name was wanted by an instance here.
    image_use: Mutex<HashMap<String, Instant>>,
    /// When each local instance last became ready or was resumed.
    ready_at: Mutex<HashMap<String, Instant>>,
}

/// Largest log kept per instance (plus one rotated file of the same size).
pub const LOG_CAP_BYTES: u64 = 8 * 1024 * 1024;
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(30);
const FAIL_BACKOFF_MAX: Duration = Duration::from_secs(60);

impl Agent {
    pub fn new(
        cluster: Arc<Cluster>,
        images: Arc<Images>,
        tasks: Arc<Tasks>,
        config: AgentConfig,
    ) -> Arc<Self> {
        Arc::new(Agent {
            cluster,
            images,
            tasks,
            config,
            supervisors: Mutex::new(HashMap::new()),
            ports: Mutex::new(HashSet::new()),
            image_use: Mutex::new(HashMap::new()),
            ready_at: Mutex::new(HashMap::new()),
        })
    }

    /// Runs reconcile passes until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut last_gc = Instant::now();
        let mut seen = 0;
        loop {
            if let Err(e) = self.clone().reconcile().await {
                tracing::warn!(error = %e, "reconcile pass failed");
            }
            if last_gc.elapsed() > (self.config.image_gc_after / 2).min(Duration::from_secs(30)) {
                last_gc = Instant::now();
                self.collect_images().await;
            }
            self.cap_logs();
            self.suspend_idle().await;
            // Reconcile on every applied change, and at least twice a second.
            self.cluster
                .applied_change(&mut seen, Duration::from_millis(500))
                .await;
        }
    }

    fn desired(&self) -> BTreeMap<String, Instance> {
        let me = self.cluster.id;
        let sm = self.cluster.sm.read();
        sm.data
            .instances
            .values()
            .filter(|i| i.node == me)
            .map(|i| (i.id.clone(), i.clone()))
            .collect()
    }

    #[tracing::instrument(level = "debug", skip(self), fields(node = self.cluster.id))]
    pub async fn reconcile(self: Arc<Self>) -> Result<(), RuntimeError> {
        let desired = self.desired();
        let actual: BTreeSet<String> = self.tasks.list().await?.into_iter().map(|a| a.id).collect();
        let supervised: BTreeSet<String> = self
            .supervisors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let want: BTreeSet<String> = desired.keys().cloned().collect();
        for action in decide(&want, &supervised, &actual) {
            match action {
                Action::Supervise(id) => {
                    let (tx, rx) = watch::channel(false);
                    self.supervisors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), Supervisor { stop: tx });
                    let agent = self.clone();
                    tokio::spawn(async move {
                        agent.clone().supervise(id.clone(), rx).await;
                        agent
                            .supervisors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id);
                    });
                }
                Action::Stop(id) => {
                    if let Some(s) = self
                        .supervisors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&id)
                    {
                        let _ = s.stop.send(true);
                    }
                }
                Action::RemoveOrphan(id) => {
                    tracing::info!(instance = %id, "removing orphan container");
                    if let Err(e) = self.tasks.remove(&id, self.config.stop_grace).await {
                        tracing::warn!(instance = %id, error = %e, "removing orphan");
                    }
                }
            }
        }
        Ok(())
    }

    async fn report(&self, id: &str, status: InstanceStatus) {
        let cmd = Command::ReportInstanceStatus {
            id: id.to_string(),
            node: self.cluster.id,
            status: status.clone(),
        };
        match self.cluster.write(cmd).await {
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(instance = id, state = status.state.as_str(), error = %e, "status not recorded")
            }
        }
    }

    fn lookup(&self, id: &str) -> Option<(Instance, Container, BTreeMap<String, String>)> {
        let sm = self.cluster.sm.read();
        let inst = sm.data.instances.get(id)?.clone();
        let c = sm.data.container(&inst.namespace, &inst.container)?.clone();
        let ns_env = sm
            .data
            .namespaces
            .get(&inst.namespace)
            .map(|n| n.env.clone())
            .unwrap_or_default();
        Some((inst, c, ns_env))
    }

    fn allocate_port(&self, wanted: Option<u16>) -> Option<u16> {
        let mut used = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = wanted {
            used.insert(p);
            return Some(p);
        }
        let (lo, hi) = self.config.ports;
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span.min(2000) {
            let p = lo + u16::try_from(rand::random::<u32>() % span).unwrap_or(0);
            if used.contains(&p) {
                continue;
            }
            if std::net::TcpListener::bind(("0.0.0.0", p)).is_ok() {
                used.insert(p);
                return Some(p);
            }
        }
        None
    }

    fn free_port(&self, p: u16) {
        self.ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&p);
    }

    /// Resolves the generation's image once (pinned through Raft) and
    /// returns the pinned reference.
    async fn pinned_image(&self, c: &Container) -> Result<String, RuntimeError> {
        if let Some(r) = &c.resolved_image {
            return Ok(r.clone());
        }
        let resolved = self.images.resolve(&c.spec.image).await?;
        let cmd = Command::PinImage {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            generation: c.generation,
            image: resolved.clone(),
        };
        let _ = self.cluster.write(cmd).await;
        // Whoever pinned first wins; use what the state holds.
        let sm = self.cluster.sm.read();
        Ok(sm
            .data
            .container(&c.namespace, &c.name)
            .filter(|now| now.generation == c.generation)
            .and_then(|now| now.resolved_image.clone())
            .unwrap_or(resolved))
    }

    async fn supervise(self: Arc<Self>, id: String, mut stop: watch::Receiver<bool>) {
        let span = tracing::info_span!("instance", instance = %id, node = self.cluster.id);
        let _enter = span.enter();
        drop(_enter);
        let mut status = InstanceStatus::default();
        let mut port: Option<u16> = None;
        let mut fail_backoff = Duration::from_secs(2);
        let mut crash_backoff = Duration::from_secs(1);
        let mut pending_cold: Option<ColdStart> = None;
        'outer: loop {
            if *stop.borrow() {
                break;
            }
            let Some((inst, container, ns_env)) = self.lookup(&id) else {
                // Removed from the state: the next pass stops us.
                if wait_or_stop(&mut stop, Duration::from_millis(500)).await {
                    break;
                }
                continue;
            };
            // Adopt a task that already runs (e.g. after a rouse-node restart).
            let existing = self
                .tasks
                .list()
                .await
                .ok()
                .and_then(|l| l.into_iter().find(|a| a.id == id));
            let labelled_port = existing
                .as_ref()
                .and_then(|a| a.labels.get(labels::PORT))
                .and_then(|p| p.parse::<u16>().ok());
            if port.is_none() {
                port = self.allocate_port(labelled_port);
            }
            let Some(p) = port else {
                status = InstanceStatus {
                    state: InstanceState::Failed,
                    message: "no free port in the instance port range".into(),
                    ..status
                };
                self.report(&id, stamp(&status)).await;
                if wait_or_stop(&mut stop, fail_backoff).await {
                    break;
                }
                continue;
            };
            status.port = u32::from(p);
            let running = match self.tasks.state(&id).await {
                Ok(TaskState::Running { .. }) => existing.is_some(),
                Ok(TaskState::Paused { .. }) => {
                    // Suspended before a restart of this node: thaw it, as
                    // nothing here remembers to on the next request.
                    let _ = self.tasks.resume(&id).await;
                    existing.is_some()
                }
                _ => false,
            };
            if running {
                tracing::info!(instance = %id, port = p, "adopted running instance");
            } else {
                if status.state != InstanceState::Crashed {
                    status.state = InstanceState::Pulling;
                    status.message = format!("pulling {}", container.spec.image);
                    self.report(&id, stamp(&status)).await;
                }
                let started = tokio::select! {
                    r = self.start_instance(&inst, &container, &ns_env, p) => r,
                    _ = stop.changed() => break 'outer,
                };
                let started = match started {
                    Ok(cs) => {
                        pending_cold = Some(cs);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = started {
                    tracing::warn!(instance = %id, error = %e, "instance cannot start");
                    status.state = InstanceState::Failed;
                    status.message = e.to_string();
                    self.report(&id, stamp(&status)).await;
                    // Clean a half-created container so the next try starts fresh.
                    let _ = self.tasks.remove(&id, Duration::from_secs(1)).await;
                    if wait_or_stop(&mut stop, fail_backoff).await {
                        break;
                    }
                    fail_backoff = (fail_backoff * 2).min(FAIL_BACKOFF_MAX);
                    continue;
                }
                fail_backoff = Duration::from_secs(2);
                status.state = InstanceState::Starting;
                status.message = String::new();
                self.report(&id, stamp(&status)).await;
            }
            // Ready when the port accepts connections; watch for exit meanwhile.
            let started_at = Instant::now();
            let started_ms = now_ms();
            let tasks = self.tasks.clone();
            let wid = id.clone();
            let mut exit = tokio::spawn(async move { tasks.wait(&wid).await });
            let health = container.spec.health_path.clone();
            let ready = tokio::select! {
                _ = wait_ready(p, health.as_deref()) => true,
                _ = &mut exit => false,
                _ = stop.changed() => { exit.abort(); break 'outer; }
            };
            if ready {
                if let Some(mut cs) = pending_cold.take() {
                    cs.ready_ms = now_ms().saturating_sub(started_ms);
                    cs.total_ms =
                        cs.placement_ms + cs.pull_ms + cs.create_ms + cs.start_ms + cs.ready_ms;
                    cs.at_ms = now_ms();
                    tracing::info!(instance = %id, total_ms = cs.total_ms, pull_ms = cs.pull_ms, ready_ms = cs.ready_ms, "cold start");
                    status.cold_start = Some(cs);
                }
                self.ready_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), Instant::now());
                status.state = InstanceState::Ready;
                status.message = String::new();
                self.report(&id, stamp(&status)).await;
            }
            let code = if exit.is_finished() {
                exit.await.ok().and_then(|r| r.ok())
            } else {
                tokio::select! {
                    r = &mut exit => r.ok().and_then(|r| r.ok()),
                    _ = stop.changed() => { exit.abort(); break 'outer; }
                }
            };
            let oom = Tasks::oom_killed(&id);
            let _ = self.tasks.delete_task(&id).await;
            if *stop.borrow() {
                break;
            }
            if started_at.elapsed() > Duration::from_secs(60) {
                crash_backoff = Duration::from_secs(1);
            }
            status.state = InstanceState::Crashed;
            status.exit_code = code.map(|c| i32::try_from(c).unwrap_or(i32::MAX));
            status.oom_killed = oom;
            status.restarts += 1;
            status.message = if oom {
                "OOM-killed: the instance used more memory than its limit".into()
            } else {
                format!(
                    "exited with code {}",
                    code.map_or("unknown".into(), |c| c.to_string())
                )
            };
            tracing::warn!(instance = %id, exit = ?code, oom, "instance exited; restarting in {crash_backoff:?}");
            self.report(&id, stamp(&status)).await;
            if wait_or_stop(&mut stop, crash_backoff).await {
                break;
            }
            crash_backoff = (crash_backoff * 2).min(CRASH_BACKOFF_MAX);
        }
        tracing::info!(instance = %id, "stopping");
        // No new requests reach it (it left the state); let in-flight ones finish.
        if let Some(mesh) = self.cluster.mesh.get() {
            mesh.drain(&id, Duration::from_secs(900)).await;
        }
        if let Err(e) = self.tasks.remove(&id, self.config.stop_grace).await {
            tracing::warn!(instance = %id, error = %e, "removing instance");
        }
        if let Some(p) = port {
            self.free_port(p);
        }
    }

    async fn start_instance(
        &self,
        inst: &Instance,
        c: &Container,
        ns_env: &BTreeMap<String, String>,
        port: u16,
    ) -> Result<ColdStart, RuntimeError> {
        let mut cs = ColdStart {
            placement_ms: now_ms().saturating_sub(inst.created_at_ms),
            ..Default::default()
        };
        let t = Instant::now();
        let reference = self.pinned_image(c).await?;
        let image = self.images.ensure(&reference).await?;
        cs.pull_ms = ms(t.elapsed());
        let t = Instant::now();
        self.image_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(image.name.clone(), Instant::now());
        let secrets = self.open_secrets(&inst.namespace, &inst.container)?;
        let s = InstanceSpec {
            id: &inst.id,
            image: &image,
            namespace_env: ns_env,
            container_env: &c.spec.env,
            secrets: &secrets,
            port,
            cpu_mvcpu: c.spec.cpu_mvcpu,
            memory_mb: c.spec.memory_mb,
        };
        let oci = spec::build(&s)?;
        let labels = HashMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::INSTANCE.to_string(), inst.id.clone()),
            (labels::NAMESPACE.to_string(), inst.namespace.clone()),
            (labels::CONTAINER.to_string(), inst.container.clone()),
            (labels::GENERATION.to_string(), inst.generation.to_string()),
            (labels::NODE.to_string(), self.cluster.id.to_string()),
            (labels::PORT.to_string(), port.to_string()),
        ]);
        self.tasks.create(&inst.id, &image, &oci, labels).await?;
        self.tasks.delete_task(&inst.id).await?;
        cs.create_ms = ms(t.elapsed());
        let t = Instant::now();
        self.tasks.start(&inst.id).await?;
        cs.start_ms = ms(t.elapsed());
        Ok(cs)
    }

    /// Pauses ready local instances idle for `suspend_after` (tier one of
    /// scale to zero: memory kept, wakes in milliseconds).
    async fn suspend_idle(&self) {
        let after = self.cluster.config.suspend_after;
        let Some(mesh) = self.cluster.mesh.get() else {
            return;
        };
        if after.is_zero() {
            return;
        }
        let candidates: Vec<(String, InstanceStatus)> = {
            let sm = self.cluster.sm.read();
            sm.data
                .instances
                .values()
                .filter(|i| i.node == self.cluster.id)
                .filter_map(|i| {
                    sm.data
                        .statuses
                        .get(&i.id)
                        .map(|s| (i.id.clone(), s.clone()))
                })
                .filter(|(_, s)| s.state == InstanceState::Ready)
                .collect()
        };
        for (id, status) in candidates {
            let since = self.ready_since(&id);
            if mesh.is_suspended(&id)
                || mesh.in_flight(&id) > 0
                || mesh.idle_for(&id, since) < after
            {
                continue;
            }
            if !matches!(self.tasks.state(&id).await, Ok(TaskState::Running { .. })) {
                continue;
            }
            match self.tasks.pause(&id).await {
                Ok(()) => {
                    mesh.mark_suspended(&id);
                    tracing::info!(instance = %id, "suspended idle instance");
                    self.report(
                        &id,
                        stamp(&InstanceStatus {
                            state: InstanceState::Suspended,
                            ..status
                        }),
                    )
                    .await;
                }
                Err(e) => tracing::warn!(instance = %id, error = %e, "suspending"),
            }
        }
    }

    fn ready_since(&self, id: &str) -> Instant {
        *self
            .ready_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_insert_with(Instant::now)
    }

    /// The mesh resumed an instance: record it ready again.
    pub fn resumed(self: &Arc<Self>, id: &str) {
        self.ready_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), Instant::now());
        let agent = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let status = agent.cluster.sm.read().data.statuses.get(&id).cloned();
            if let Some(s) = status {
                agent
                    .report(
                        &id,
                        stamp(&InstanceStatus {
                            state: InstanceState::Ready,
                            ..s
                        }),
                    )
                    .await;
            }
        });
    }

    /// Keeps each instance's log under [`LOG_CAP_BYTES`]: past it, the log
    /// moves to `<id>.log.1` (replacing the older one) and starts afresh.
    /// The shim appends (O_APPEND), so truncating under it is safe.
    fn cap_logs(&self) {
        let ids: Vec<String> = self
            .supervisors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            let path = self.tasks.log_path(&id);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.len() <= LOG_CAP_BYTES {
                continue;
            }
            let rotated = path.with_extension("log.1");
            if std::fs::copy(&path, &rotated).is_ok() {
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                    let _ = f.set_len(0);
                }
            }
        }
    }

    /// Opens the namespace's and the container's secrets (the container's win).
    fn open_secrets(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<BTreeMap<String, crate::secrets::SecretValue>, RuntimeError> {
        let sealed: Vec<(crate::state::Scope, String, crate::state::StoredSecret)> = {
            let sm = self.cluster.sm.read();
            let mut v = Vec::new();
            for scope in [
                crate::state::Scope::namespace(ns),
                crate::state::Scope::of(ns, Some(name)),
            ] {
                if let Some(m) = sm.data.secrets.get(&scope) {
                    v.extend(m.iter().map(|(k, s)| (scope.clone(), k.clone(), s.clone())));
                }
            }
            v
        };
        if sealed.is_empty() {
            return Ok(BTreeMap::new());
        }
        let dk = self
            .cluster
            .data_key()
            .map_err(|e| RuntimeError::Spec(format!("secrets: {e}")))?;
        let mut out = BTreeMap::new();
        for (scope, k, s) in sealed {
            let plain = dk
                .open(&s.sealed, &crate::secrets::aad(scope.as_str(), &k))
                .map_err(|e| RuntimeError::Spec(format!("secrets: {scope}/{k}: {e}")))?;
            let v = String::from_utf8(plain)
                .map_err(|_| RuntimeError::Spec(format!("secrets: {scope}/{k} is not UTF-8")))?;
            out.insert(k, crate::secrets::SecretValue::new(v));
        }
        Ok(out)
    }

    /// Deletes images no instance here has wanted for `image_gc_after`.
    async fn collect_images(&self) {
        let Ok(images) = self.images.list_managed().await else {
            return;
        };
        let in_use: HashSet<String> = {
            let sm = self.cluster.sm.read();
            sm.data
                .instances
                .values()
                .filter(|i| i.node == self.cluster.id)
                .filter_map(|i| sm.data.container(&i.namespace, &i.container))
                .filter_map(|c| c.resolved_image.clone())
                .flat_map(|r| [r.split('@').next().unwrap_or_default().to_string(), r])
                .collect()
        };
        let now = Instant::now();
        let mut doomed = Vec::new();
        {
            let mut used = self.image_use.lock().unwrap_or_else(|p| p.into_inner());
            for img in images {
                if in_use.contains(&img.name) {
                    used.insert(img.name.clone(), now);
                    continue;
                }
                let last = *used.entry(img.name.clone()).or_insert(now);
                if now.duration_since(last) >= self.config.image_gc_after {
                    doomed.push(img.name);
                }
            }
        }
        for name in doomed {
            tracing::info!(image = %name, "deleting unused image");
            if self.images.delete(&name).await.is_ok() {
                self.image_use
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
            }
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn stamp(s: &InstanceStatus) -> InstanceStatus {
    InstanceStatus {
        updated_at_ms: now_ms(),
        ..s.clone()
    }
}

/// Sleeps `d`; returns true if a stop was requested meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Resolves once 127.0.0.1:`port` accepts a connection and, with a
/// health path, once that path answers 2xx.
async fn wait_ready(port: u16, health_path: Option<&str>) {
    loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            match health_path {
                None => return,
                Some(path) => {
                    if health_ok(stream, port, path).await {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health_ok(stream: tokio::net::TcpStream, port: u16, path: &str) -> bool {
    use http_body_util::Empty;
    let io = hyper_util::rt::TokioIo::new(stream);
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(io).await
    else {
        return false;
    };
    let driver = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .body(Empty::new());
    let ok = match req {
        Ok(req) => matches!(
            tokio::time::timeout(Duration::from_secs(2), sender.send_request(req)).await,
            Ok(Ok(resp)) if resp.status().is_success()
        ),
        Err(_) => false,
    };
    driver.abort();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn decide_supervises_stops_and_removes_orphans() {
        let a = decide(
            &set(&["a", "b"]),
            &set(&["b", "c"]),
            &set(&["b", "c", "d", "a"]),
        );
        assert_eq!(
            a,
            vec![
                Action::Supervise("a".into()),
                Action::Stop("c".into()),
                Action::RemoveOrphan("d".into())
            ]
        );
        // A desired instance whose container exists is adopted by its supervisor, not removed.
        assert_eq!(
            decide(&set(&["a"]), &set(&[]), &set(&["a"])),
            vec![Action::Supervise("a".into())]
        );
        assert!(decide(&set(&["a"]), &set(&["a"]), &set(&["a"])).is_empty());
    }
}
