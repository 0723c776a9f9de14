//! The node agent: keeps what runs in containerd equal to what the cluster
//! placed on this node, suspends idle instances, resumes them for the mesh,
//! caps their logs and deletes unused images.
//!
//! ```text
//!  every pass:  desired = instances placed on this node (replicated state)
//!               actual  = rouse containers of this node in containerd
//!               decide(desired, supervised, actual) → Supervise / Stop / RemoveOrphan
//!               idle::to_suspend(ready instances) → pause
//!               gc::unused(images) → delete
//!  resume requests from the mesh → thaw, report ready
//! ```
//!
//! [`decide`], `idle::to_suspend` and `gc::unused` are pure; one
//! supervisor runs per instance (see `supervise`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::image::Images;
use super::task::{TaskState, Tasks};
use super::{gc, idle, RuntimeError};
use crate::cluster::{now_ms, Cluster};
use crate::keys::Keyring;
use crate::local::{LocalInstances, ResumeRequest};
use crate::state::{Command, InstanceState, InstanceStatus, NodeId};

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

/// How this node networks its instances.
#[derive(Clone)]
pub enum InstanceNetwork {
    /// A network namespace each, on the node's bridge.
    Isolated(Arc<super::network::Networks>),
    /// Development only: the node's network, a host port each from this range.
    Host { ports: (u16, u16) },
}

/// The agent's own settings.
#[derive(Clone)]
pub struct AgentConfig {
    pub node: NodeId,
    pub network: InstanceNetwork,
    /// A user namespace per instance, mapped here; `None`: the image's user.
    pub userns: Option<super::spec::IdMap>,
    pub stop_grace: Duration,
    pub image_gc_after: Duration,
    /// How long the log of an instance that is gone stays readable.
    pub log_retention: Duration,
    /// Zero: never suspend.
    pub suspend_after: Duration,
}

pub struct Agent {
    pub(super) cluster: Arc<Cluster>,
    pub(super) keys: Arc<Keyring>,
    pub(super) local: Arc<LocalInstances>,
    pub images: Arc<Images>,
    pub tasks: Arc<Tasks>,
    pub(super) config: AgentConfig,
    supervisors: Mutex<HashMap<String, watch::Sender<bool>>>,
    pub(super) ports: Mutex<HashSet<u16>>,
    /// Last time each image was wanted by an instance here.
    pub(super) image_use: Mutex<HashMap<String, Instant>>,
}

/// Removes an instance's supervisor entry when its task ends.
struct Deregister {
    agent: Arc<Agent>,
    id: String,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.agent.supervisors.lock().remove(&self.id);
    }
}

/// Largest log kept per instance (plus one rotated file of the same size).
pub const LOG_CAP_BYTES: u64 = 8 * 1024 * 1024;

impl Agent {
    pub fn new(
        cluster: Arc<Cluster>,
        keys: Arc<Keyring>,
        local: Arc<LocalInstances>,
        images: Arc<Images>,
        tasks: Arc<Tasks>,
        config: AgentConfig,
    ) -> Arc<Self> {
        Arc::new(Agent {
            cluster,
            keys,
            local,
            images,
            tasks,
            config,
            supervisors: Mutex::new(HashMap::new()),
            ports: Mutex::new(HashSet::new()),
            image_use: Mutex::new(HashMap::new()),
        })
    }

    /// Runs reconcile passes (and answers resume requests) until dropped.
    pub async fn run(self: Arc<Self>, resumes: mpsc::Receiver<ResumeRequest>) {
        tokio::spawn(self.clone().answer_resumes(resumes));
        let mut last_gc = Instant::now();
        let mut last_log_gc = Instant::now();
        // Logs are looked at as often as their retention asks (a directory
        // listing), at most every 30 s: a short retention is honoured.
        let log_gc_every = self
            .config
            .log_retention
            .clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut seen = 0;
        loop {
            if let Err(e) = self.clone().reconcile().await {
                tracing::warn!(error = %e, "reconcile pass failed");
            }
            if last_gc.elapsed() > (self.config.image_gc_after / 2).min(Duration::from_secs(30)) {
                last_gc = Instant::now();
                self.collect_images().await;
            }
            if last_log_gc.elapsed() > log_gc_every {
                last_log_gc = Instant::now();
                self.collect_logs();
            }
            self.cap_logs();
            self.suspend_idle().await;
            // Reconcile on every applied change, and at least twice a second.
            self.cluster
                .applied_change(&mut seen, Duration::from_millis(500))
                .await;
        }
    }

    #[tracing::instrument(level = "debug", skip(self), fields(node = self.config.node))]
    pub async fn reconcile(self: Arc<Self>) -> Result<(), RuntimeError> {
        let want: BTreeSet<String> = {
            let sm = self.cluster.sm.read();
            sm.data
                .instances
                .values()
                .filter(|i| i.node == self.config.node)
                .map(|i| i.id.clone())
                .collect()
        };
        let actual: BTreeSet<String> = self.tasks.list().await?.into_iter().map(|a| a.id).collect();
        let supervised: BTreeSet<String> = self.supervisors.lock().keys().cloned().collect();
        for action in decide(&want, &supervised, &actual) {
            match action {
                Action::Supervise(id) => {
                    let (tx, rx) = watch::channel(false);
                    self.supervisors.lock().insert(id.clone(), tx);
                    let agent = self.clone();
                    tokio::spawn(async move {
                        // Deregistered however the supervisor ends (a panic
                        // included), so the next pass supervises it afresh.
                        let _gone = Deregister {
                            agent: agent.clone(),
                            id: id.clone(),
                        };
                        agent.clone().supervise(id, rx).await;
                    });
                }
                Action::Stop(id) => {
                    if let Some(s) = self.supervisors.lock().get(&id) {
                        let _ = s.send(true);
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
        // Addresses no instance holds any more (a crash of this node
        // between a task's removal and the release of its address).
        if let InstanceNetwork::Isolated(net) = &self.config.network {
            let mut known: BTreeSet<String> = want;
            known.extend(actual);
            known.extend(self.supervisors.lock().keys().cloned());
            for id in net.release_orphans(&known).await {
                tracing::info!(instance = %id, "released an orphan address");
            }
        }
        Ok(())
    }

    /// Records an instance's status in the cluster.
    pub(super) async fn report(&self, id: &str, status: InstanceStatus) {
        let state = status.state.as_str();
        let cmd = Command::ReportInstanceStatus {
            id: id.to_string(),
            node: self.config.node,
            status,
        };
        if let Err(e) = self.cluster.write(cmd).await {
            tracing::debug!(instance = id, state, error = %e, "status not recorded");
        }
    }

    /// Thaws suspended instances the mesh asks for, one at a time.
    async fn answer_resumes(self: Arc<Self>, mut rx: mpsc::Receiver<ResumeRequest>) {
        while let Some(r) = rx.recv().await {
            let result = self.tasks.resume(&r.id).await.map_err(|e| e.to_string());
            if result.is_ok() {
                self.local.mark_resumed(&r.id);
                let agent = self.clone();
                let id = r.id.clone();
                tokio::spawn(async move {
                    let status = agent.cluster.sm.read().data.statuses.get(&id).cloned();
                    if let Some(s) = status {
                        let ready = InstanceStatus {
                            state: InstanceState::Ready,
                            updated_at_ms: now_ms(),
                            ..s
                        };
                        agent.report(&id, ready).await;
                    }
                });
            }
            let _ = r.done.send(result);
        }
    }

    /// Pauses ready local instances idle for `suspend_after` (tier one of
    /// scale to zero: memory kept, wakes in milliseconds).
    async fn suspend_idle(&self) {
        let after = self.config.suspend_after;
        if after.is_zero() {
            return;
        }
        let ready: Vec<(String, InstanceStatus)> = {
            let sm = self.cluster.sm.read();
            sm.data
                .instances
                .values()
                .filter(|i| i.node == self.config.node)
                .filter_map(|i| {
                    sm.data
                        .statuses
                        .get(&i.id)
                        .map(|s| (i.id.clone(), s.clone()))
                })
                .filter(|(_, s)| s.state == InstanceState::Ready)
                .collect()
        };
        let candidates: Vec<idle::Candidate> = ready
            .iter()
            .map(|(id, _)| idle::Candidate {
                id: id.clone(),
                suspended: self.local.is_suspended(id),
                in_flight: self.local.in_flight(id),
                idle_for: self.local.idle_for(id, self.local.ready_since(id)),
            })
            .collect();
        for id in idle::to_suspend(&candidates, after) {
            if !matches!(self.tasks.state(&id).await, Ok(TaskState::Running { .. })) {
                continue;
            }
            match self.tasks.pause(&id).await {
                Ok(()) => {
                    self.local.mark_suspended(&id);
                    tracing::info!(instance = %id, "suspended idle instance");
                    if let Some((_, status)) = ready.iter().find(|(i, _)| *i == id) {
                        let suspended = InstanceStatus {
                            state: InstanceState::Suspended,
                            updated_at_ms: now_ms(),
                            ..status.clone()
                        };
                        self.report(&id, suspended).await;
                    }
                }
                Err(e) => tracing::warn!(instance = %id, error = %e, "suspending"),
            }
        }
    }

    /// Keeps each instance's log under [`LOG_CAP_BYTES`]: past it, the log
    /// moves to `<id>.log.1` (replacing the older one) and starts afresh.
    /// The shim appends (O_APPEND), so truncating under it is safe.
    fn cap_logs(&self) {
        let ids: Vec<String> = self.supervisors.lock().keys().cloned().collect();
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

    /// Deletes the logs of instances gone for longer than the retention.
    fn collect_logs(&self) {
        let dir = self.tasks.logs_dir();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let files: Vec<(String, std::time::SystemTime)> = entries
            .flatten()
            .filter_map(|e| {
                let modified = e.metadata().ok()?.modified().ok()?;
                Some((e.file_name().to_str()?.to_string(), modified))
            })
            .collect();
        let live: HashSet<String> = {
            let sm = self.cluster.sm.read();
            let mut live: HashSet<String> = sm
                .data
                .instances
                .values()
                .filter(|i| i.node == self.config.node)
                .map(|i| i.id.clone())
                .collect();
            live.extend(self.supervisors.lock().keys().cloned());
            live
        };
        for name in gc::stale_logs(
            &files,
            &live,
            std::time::SystemTime::now(),
            self.config.log_retention,
        ) {
            tracing::info!(file = %name, "deleting the log of an instance gone past the retention");
            let _ = std::fs::remove_file(dir.join(name));
        }
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
                .filter(|i| i.node == self.config.node)
                .filter_map(|i| sm.data.container(&i.namespace, &i.container))
                .filter_map(|c| c.resolved_image.clone())
                .flat_map(|r| [super::image::without_digest(&r).to_string(), r])
                .collect()
        };
        let names: Vec<String> = images.into_iter().map(|i| i.name).collect();
        let doomed = gc::unused(
            &names,
            &in_use,
            &mut self.image_use.lock(),
            Instant::now(),
            self.config.image_gc_after,
        );
        for name in doomed {
            tracing::info!(image = %name, "deleting unused image");
            if self.images.delete(&name).await.is_ok() {
                self.image_use.lock().remove(&name);
            }
        }
    }
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
