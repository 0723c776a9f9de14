//! The executor of one instance's [`Supervisor`]: looks the instance up,
//! adopts its running task or starts one (image, secrets, spec, task),
//! waits for readiness and exit, and performs each step the state machine
//! asks for, until told to stop; then drains and removes the instance.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::agent::{Agent, InstanceNetwork};
use super::spec::{self, InstanceSpec};
use super::supervisor::{Event, Step, Supervisor};
use super::task::{TaskState, Tasks};
use super::{health, labels, RuntimeError};
use crate::cluster::now_ms;
use crate::state::{ColdStart, Command, Container, Instance, Scope};

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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

/// Where a supervised instance answers: its address on the bridge, or
/// the node's loopback in host mode.
fn listen_addr(sup: &Supervisor) -> Option<SocketAddr> {
    let port = u16::try_from(sup.status.port).ok()?;
    let ip: Ipv4Addr = if sup.status.ip.is_empty() {
        Ipv4Addr::LOCALHOST
    } else {
        sup.status.ip.parse().ok()?
    };
    Some(SocketAddr::from((ip, port)))
}

/// The task's exit, watched from the moment it starts.
type ExitWatch = JoinHandle<Result<u32, RuntimeError>>;

impl Agent {
    /// Supervises instance `id` until `stop` turns true.
    pub(super) async fn supervise(self: Arc<Self>, id: String, stop: watch::Receiver<bool>) {
        let span = tracing::info_span!("instance", instance = %id, node = self.config.node);
        self.clone()
            .supervise_inner(id, stop)
            .instrument(span)
            .await;
    }

    async fn supervise_inner(self: Arc<Self>, id: String, mut stop: watch::Receiver<bool>) {
        let mut sup = Supervisor::default();
        let mut port: Option<u16> = None;
        let mut key: Option<crate::state::ContainerKey> = None;
        'pass: loop {
            if *stop.borrow() {
                break;
            }
            let Some((inst, container, ns_env)) = self.lookup(&id) else {
                // Removed from the state: the next reconcile pass stops us.
                if wait_or_stop(&mut stop, Duration::from_millis(500)).await {
                    break;
                }
                continue;
            };
            key = Some(crate::state::ContainerKey::new(
                &inst.namespace,
                &inst.container,
            ));
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
                port = self.instance_port(&container, labelled_port);
            }
            let first = match port {
                None => Event::NoPort,
                Some(p) => {
                    if self.running(&id).await && existing.is_some() {
                        let ip = self.address_of(&id);
                        sup.set_address(ip, p);
                        tracing::info!(port = p, ip = ?ip, "adopted running instance");
                        Event::Adopted
                    } else {
                        sup.set_address(None, p);
                        Event::NeedsStart {
                            image: container.spec.image.clone(),
                        }
                    }
                }
            };
            let mut steps: VecDeque<Step> = sup.next(first, now_ms()).into();
            let mut exit: Option<ExitWatch> = None;
            let mut watch_started = Instant::now();
            while let Some(step) = steps.pop_front() {
                let event = match step {
                    Step::Report(status) => {
                        let crashed = status.state == crate::state::InstanceState::Crashed;
                        self.report(&id, status).await;
                        if crashed {
                            let _ = self.tasks.delete_task(&id).await;
                        }
                        continue;
                    }
                    Step::Start => {
                        let Some(p) = port else { continue };
                        tokio::select! {
                            r = self.start_instance(&inst, &container, &ns_env, p, sup.pulling()) => match r {
                                Ok((cs, ip)) => {
                                    sup.set_address(ip, p);
                                    Event::Started(cs)
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "instance cannot start");
                                    // Perhaps a snapshot went behind rouse's back.
                                    self.images.forget_opened();
                                    Event::StartFailed(e.to_string())
                                }
                            },
                            _ = stop.changed() => break 'pass,
                        }
                    }
                    Step::CleanUp => {
                        let _ = self.tasks.remove(&id, Duration::from_secs(1)).await;
                        self.release_address(&id).await;
                        continue;
                    }
                    Step::WaitReady => {
                        let Some(addr) = listen_addr(&sup) else {
                            continue;
                        };
                        watch_started = Instant::now();
                        let tasks = self.tasks.clone();
                        let wid = id.clone();
                        let mut w = tokio::spawn(async move { tasks.wait(&wid).await });
                        let health = container.spec.health_path.clone();
                        let exited_early = tokio::select! {
                            _ = health::wait_ready(addr, health.as_deref()) => None,
                            r = &mut w => Some(r),
                            _ = stop.changed() => { w.abort(); break 'pass; }
                        };
                        match exited_early {
                            None => {
                                exit = Some(w);
                                Event::Ready
                            }
                            Some(r) => self.exited(&id, r, watch_started).await,
                        }
                    }
                    Step::MarkReady => {
                        if let Some(addr) = listen_addr(&sup) {
                            let key =
                                crate::state::ContainerKey::new(&inst.namespace, &inst.container);
                            self.local.mark_ready(&key, &id, addr);
                        }
                        continue;
                    }
                    Step::WaitExit => {
                        let Some(mut w) = exit.take() else { continue };
                        let r = tokio::select! {
                            r = &mut w => r,
                            _ = stop.changed() => { w.abort(); break 'pass; }
                        };
                        if *stop.borrow() {
                            break 'pass;
                        }
                        self.exited(&id, r, watch_started).await
                    }
                    Step::Sleep(d) => {
                        if wait_or_stop(&mut stop, d).await {
                            break 'pass;
                        }
                        continue;
                    }
                    Step::Again => continue 'pass,
                };
                steps.extend(sup.next(event, now_ms()));
            }
        }
        tracing::info!("stopping");
        // Until it is gone it counts against its container's max-scale.
        if let Some(k) = &key {
            self.local.stopping(k, &id);
        }
        // No new requests reach it (it left the state); let in-flight ones finish.
        self.local.drain(&id, Duration::from_secs(900)).await;
        if let Err(e) = self.tasks.remove(&id, self.config.stop_grace).await {
            tracing::warn!(error = %e, "removing instance");
        }
        self.release_address(&id).await;
        self.local.stopped(&id);
        if let (Some(p), InstanceNetwork::Host { .. }) = (port, &self.config.network) {
            self.ports.lock().remove(&p);
        }
    }

    /// The instance's address on this node's bridge (isolated networks).
    fn address_of(&self, id: &str) -> Option<Ipv4Addr> {
        match &self.config.network {
            InstanceNetwork::Isolated(net) => net.address_of(id),
            InstanceNetwork::Host { .. } => None,
        }
    }

    /// Gives back an instance's address (its namespace went with its task).
    async fn release_address(&self, id: &str) {
        if let InstanceNetwork::Isolated(net) = &self.config.network {
            if let Err(e) = net.detach(id).await {
                tracing::warn!(error = %e, "releasing the instance's address");
            }
        }
    }

    /// The port an instance listens on: the container's own port in its
    /// own namespace, or a free host port in host mode (`labelled`: the
    /// one a running task already has).
    fn instance_port(&self, c: &Container, labelled: Option<u16>) -> Option<u16> {
        match &self.config.network {
            InstanceNetwork::Isolated(_) => u16::try_from(c.spec.port).ok(),
            InstanceNetwork::Host { ports } => self.allocate_port(*ports, labelled),
        }
    }

    /// Whether the instance's task runs (a paused one is thawed: nothing
    /// here remembers to on the next request after a restart of this node).
    async fn running(&self, id: &str) -> bool {
        match self.tasks.state(id).await {
            Ok(TaskState::Running { .. }) => true,
            Ok(TaskState::Paused { .. }) => {
                let _ = self.tasks.resume(id).await;
                true
            }
            _ => false,
        }
    }

    /// The exit of a task (what its watch returned): its code and whether
    /// the kernel killed it for memory. The task is deleted.
    async fn exited(
        &self,
        id: &str,
        watched: Result<Result<u32, RuntimeError>, tokio::task::JoinError>,
        since: Instant,
    ) -> Event {
        self.local.mark_exited(id);
        let code = watched.ok().and_then(|r| r.ok());
        let oom = Tasks::oom_killed(id);
        // The exited task is deleted once its crash is reported (see the
        // Report step): the report is not held up by containerd.
        Event::Exited {
            code,
            oom,
            ran_for: since.elapsed(),
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

    fn allocate_port(&self, range: (u16, u16), wanted: Option<u16>) -> Option<u16> {
        let mut used = self.ports.lock();
        if let Some(p) = wanted {
            used.insert(p);
            return Some(p);
        }
        let (lo, hi) = range;
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

    #[tracing::instrument(name = "instance.start", skip_all, fields(instance = %inst.id))]
    async fn start_instance(
        &self,
        inst: &Instance,
        c: &Container,
        ns_env: &BTreeMap<String, String>,
        port: u16,
        pulling: Option<crate::state::InstanceStatus>,
    ) -> Result<(ColdStart, Option<Ipv4Addr>), RuntimeError> {
        let mut cs = ColdStart {
            placement_ms: now_ms().saturating_sub(inst.created_at_ms),
            ..Default::default()
        };
        let t = Instant::now();
        let (progress, mut told) = tokio::sync::watch::channel(None);
        let pull = async {
            let reference = self.pinned_image(c).await?;
            let image = self.images.ensure_with(&reference, Some(&progress)).await?;
            let parent = match self.config.userns {
                Some(m) => self.images.remapped(&image, m.base).await?,
                None => image.chain_id.clone(),
            };
            Ok::<_, RuntimeError>((image, parent))
        }
        .instrument(tracing::info_span!("pull", image = %c.spec.image));
        tokio::pin!(pull);
        // A pull's progress, reported under the Pulling status (at most
        // twice a second, and always its start); awaited here, so no report
        // of it lands after the next state's.
        let mut last: Option<Instant> = None;
        let (image, parent) = loop {
            tokio::select! {
                r = &mut pull => break r?,
                Ok(()) = told.changed() => {
                    let p = *told.borrow_and_update();
                    let (Some(p), Some(base)) = (p, &pulling) else { continue };
                    let due = last.is_none_or(|l| l.elapsed() >= Duration::from_millis(500));
                    if due && p.layers_done < p.layers {
                        last = Some(Instant::now());
                        let status = crate::state::InstanceStatus {
                            message: format!("{}: {p}", base.message),
                            updated_at_ms: now_ms(),
                            ..base.clone()
                        };
                        self.report(&inst.id, status).await;
                    }
                }
            }
        };
        cs.pull_ms = ms(t.elapsed());
        let t = Instant::now();
        self.image_use
            .lock()
            .insert(image.name.clone(), Instant::now());
        let secrets = self.open_secrets(&inst.namespace, &inst.container)?;
        let isolated = matches!(self.config.network, InstanceNetwork::Isolated(_));
        let s = InstanceSpec {
            id: &inst.id,
            image: &image,
            namespace_env: ns_env,
            container_env: &c.spec.env,
            secrets: &secrets,
            port,
            cpu_mvcpu: c.spec.cpu_mvcpu,
            memory_mb: c.spec.memory_mb,
            network: if isolated {
                spec::Network::Isolated
            } else {
                spec::Network::Host
            },
            userns: self.config.userns,
            read_only_rootfs: c.spec.read_only_rootfs,
        };
        let oci = spec::build(&s)?;
        let mut labels = HashMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::INSTANCE.to_string(), inst.id.clone()),
            (labels::NAMESPACE.to_string(), inst.namespace.clone()),
            (labels::CONTAINER.to_string(), inst.container.clone()),
            (labels::GENERATION.to_string(), inst.generation.to_string()),
            (labels::NODE.to_string(), self.config.node.to_string()),
            (labels::PORT.to_string(), port.to_string()),
        ]);
        if let Some(m) = self.config.userns {
            labels.insert(labels::USERNS.to_string(), m.base.to_string());
        }
        async {
            self.tasks
                .create(&inst.id, &image, &parent, &oci, labels)
                .await?;
            self.tasks.delete_task(&inst.id).await
        }
        .instrument(tracing::info_span!("create"))
        .await?;
        cs.create_ms = ms(t.elapsed());
        let t = Instant::now();
        let ip = async {
            let pid = self.tasks.create_task(&inst.id).await?;
            let mut ip = None;
            if let InstanceNetwork::Isolated(net) = &self.config.network {
                let tn = Instant::now();
                ip = Some(net.attach(&inst.id, pid).await?.ip);
                cs.network_ms = ms(tn.elapsed());
            }
            self.tasks.start_task(&inst.id).await?;
            Ok::<_, RuntimeError>(ip)
        }
        .instrument(tracing::info_span!("start"))
        .await?;
        cs.start_ms = ms(t.elapsed());
        Ok((cs, ip))
    }

    /// Opens the namespace's and the container's secrets (the container's win).
    fn open_secrets(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<BTreeMap<String, crate::secrets::SecretValue>, RuntimeError> {
        let sm = self.cluster.sm.read();
        let sealed: Vec<(Scope, String, crate::state::StoredSecret)> =
            [Scope::namespace(ns), Scope::of(ns, Some(name))]
                .into_iter()
                .flat_map(|scope| {
                    sm.data
                        .secrets
                        .get(&scope)
                        .map(|m| {
                            m.iter()
                                .map(|(k, s)| (scope.clone(), k.clone(), s.clone()))
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default()
                })
                .collect();
        if sealed.is_empty() {
            return Ok(BTreeMap::new());
        }
        let dk = self
            .keys
            .data_key(&sm.data)
            .map_err(|e| RuntimeError::Spec(format!("secrets: {e}")))?;
        drop(sm);
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
}
