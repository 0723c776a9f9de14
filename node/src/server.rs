//! Starts a node: opens the store, builds Raft, serves the API and peer
//! service on one listener, bootstraps or joins, and stops on shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::{BasicNode, SnapshotPolicy};
use rouse_proto::peer::raft_peer_server::RaftPeerServer;
use rouse_proto::v1::cluster_service_server::ClusterServiceServer;
use rouse_proto::v1::container_service_server::ContainerServiceServer;
use rouse_proto::v1::namespace_service_server::NamespaceServiceServer;
use rouse_proto::v1::secret_service_server::SecretServiceServer;
use rouse_proto::v1::token_service_server::TokenServiceServer;
use tokio::net::TcpListener;

use crate::api::Api;
use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::peer::PeerService;
use crate::raft::{Network, PeerPool, Raft, PEER_MAX_MESSAGE};
use crate::state::Command;

/// Largest public API message.
const API_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Runs a node on an already-bound listener until `shutdown` resolves.
pub async fn run(
    config: NodeConfig,
    listener: TcpListener,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir: cannot create {}", config.data_dir.display()))?;
    // A node with no Raft state yet is joining (or bootstrapping) now.
    let fresh = !config.data_dir.join("raft").exists();
    let tls = crate::tls::Tls::new(config.insecure);
    if config.insecure {
        tracing::warn!("INSECURE: --insecure is set: peer traffic (Raft, forwarded writes, mesh hops) is plain and unencrypted, checked only by a key-derived credential. For development only; never on a network you do not control.");
    } else if let Some(m) = crate::tls::load(&config.data_dir)? {
        tls.set(m);
    } else if let Some(target) = config.join.as_deref() {
        if fresh {
            crate::join::obtain_certificate(&config, target, &tls).await?;
        }
    }
    let (log, sm) = crate::store::open(&config.data_dir)?;
    let shared = sm.shared();

    let hb = config.heartbeat_ms;
    let raft_config = openraft::Config {
        cluster_name: "rouse".into(),
        heartbeat_interval: hb,
        election_timeout_min: hb * 5,
        election_timeout_max: hb * 10,
        install_snapshot_timeout: 5_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        max_in_snapshot_log_to_keep: config.snapshot_logs.min(1000),
        enable_tick: true,
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;

    let local = Some(config.listen.ip()).filter(|ip| !ip.is_unspecified());
    let pool = PeerPool::new(local, tls.clone());
    if config.sabotage_stale_reads {
        tracing::error!("SABOTAGE: reads are answered from local state without the leader check; never use this outside the chaos suite");
    }
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        Network::new(pool.clone()),
        log,
        sm,
    )
    .await
    .context("starting raft")?;
    let mut kek = None;
    match crate::secrets::Key::load_or_create(&config.master_key_file, config.bootstrap) {
        Ok(k) => {
            pool.set_secret(k.peer_credential());
            kek = Some(k);
        }
        Err(e) => {
            tracing::warn!(error = %e, "no master key yet: this node cannot seal or open secrets until it has one")
        }
    }
    let cluster = Arc::new(Cluster {
        kek: std::sync::RwLock::new(kek),
        data_key: Default::default(),
        id: config.id,
        raft: raft.clone(),
        sm: shared,
        pool,
        tls: tls.clone(),
        config: config.clone(),
        agent: Default::default(),
        mesh: Default::default(),
        autoscaler: Default::default(),
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ClusterServiceServer<Api>>()
        .await;
    health_reporter
        .set_serving::<NamespaceServiceServer<Api>>()
        .await;
    health_reporter
        .set_serving::<ContainerServiceServer<Api>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rouse_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rouse_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;

    let api = Api::new(cluster.clone());
    let router = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(60))
        .concurrency_limit_per_connection(256)
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service({
            // Only members may use the peer service: holders of a cluster
            // certificate, or with --insecure, of the master key.
            let c = cluster.clone();
            let check = move |req: tonic::Request<()>| {
                if !c.tls.insecure() {
                    return match c.trusted_peer(req.extensions().get::<crate::tls::ConnInfo>()) {
                        Ok(()) => Ok(req),
                        Err(why) => Err(tonic::Status::unauthenticated(format!("peer: {why}"))),
                    };
                }
                let presented = req
                    .metadata()
                    .get(crate::raft::PEER_AUTH)
                    .and_then(|v| v.to_str().ok());
                if c.peer_authorized(presented) {
                    Ok(req)
                } else {
                    Err(tonic::Status::unauthenticated(
                        "peer: not a member of this cluster (no valid cluster credential)",
                    ))
                }
            };
            tonic::service::interceptor::InterceptedService::new(
                RaftPeerServer::new(PeerService::new(cluster.clone()))
                    .max_decoding_message_size(PEER_MAX_MESSAGE)
                    .max_encoding_message_size(PEER_MAX_MESSAGE),
                check,
            )
        })
        .add_service(
            rouse_proto::peer::cluster_join_server::ClusterJoinServer::new(
                crate::join::JoinService::new(cluster.clone()),
            )
            .max_decoding_message_size(64 * 1024),
        )
        .add_service(
            ClusterServiceServer::new(api.clone()).max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            NamespaceServiceServer::new(api.clone()).max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            ContainerServiceServer::new(api.clone()).max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(
            SecretServiceServer::new(api.clone()).max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(rouse_proto::v1::node_service_server::NodeServiceServer::new(api.clone()))
        .add_service(rouse_proto::v1::api_key_service_server::ApiKeyServiceServer::new(api.clone()))
        .add_service(
            rouse_proto::v1::image_service_server::ImageServiceServer::new(api.clone())
                .max_decoding_message_size(API_MAX_MESSAGE),
        )
        .add_service(TokenServiceServer::new(api).max_decoding_message_size(API_MAX_MESSAGE));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let acceptor = if config.insecure {
        None
    } else {
        Some(tokio_rustls::TlsAcceptor::from(tls.server_config(false)?))
    };
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        crate::tls::incoming(listener, acceptor, config.header_timeout),
        async {
            let _ = stop_rx.await;
        },
    ));
    tracing::info!(node = config.id, listen = %config.listen, advertise = %config.advertise, "serving gRPC API and peer service");

    let starter = tokio::spawn(start_membership(cluster.clone()));
    let identity = tokio::spawn(crate::join::run_identity(cluster.clone()));
    let key_sync = tokio::spawn(crate::keys::run_key_sync(cluster.clone()));
    let scheduler = tokio::spawn(run_scheduler(cluster.clone()));
    let liveness = tokio::spawn(run_liveness(cluster.clone()));
    let agent = tokio::spawn(run_agent(cluster.clone()));
    let mesh = crate::mesh::Mesh::new(cluster.clone());
    let _ = cluster.mesh.set(mesh.clone());
    let mesh_task = tokio::spawn(mesh.clone().serve(http_listener));
    let loads = tokio::spawn(crate::mesh::report_load(
        cluster.clone(),
        mesh,
        cluster.autoscaler.clone(),
    ));
    let autoscaler = tokio::spawn(cluster.autoscaler.clone().run(cluster.clone()));
    tracing::info!(http = %config.http, base_domain = %config.base_domain, "serving the routing mesh");

    shutdown.await;
    tracing::info!(node = config.id, "shutting down");
    starter.abort();
    identity.abort();
    key_sync.abort();
    scheduler.abort();
    liveness.abort();
    mesh_task.abort();
    loads.abort();
    autoscaler.abort();
    // Instances keep running under containerd; a restarted node adopts them.
    agent.abort();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => return Err(e).context("gRPC server"),
        Ok(Err(e)) => return Err(e).context("gRPC server task"),
        _ => {}
    }
    Ok(())
}

/// Bootstraps or joins on first start, then keeps this node's record in
/// the replicated node table up to date.
async fn start_membership(cluster: Arc<Cluster>) {
    let initialized = cluster.raft.is_initialized().await.unwrap_or(false);
    let cfg = &cluster.config;
    if !initialized {
        if cfg.bootstrap {
            let members = BTreeMap::from([(
                cfg.id,
                BasicNode {
                    addr: cfg.advertise.clone(),
                },
            )]);
            match cluster.raft.initialize(members).await {
                Ok(()) => tracing::info!(node = cfg.id, "bootstrapped a new one-node cluster"),
                Err(e) => tracing::error!(error = %e, "bootstrap failed"),
            }
            register_admin_key(&cluster).await;
        } else if let Some(target) = &cfg.join {
            join_until_done(&cluster, target).await;
        } else {
            tracing::warn!(
                node = cfg.id,
                "this node belongs to no cluster yet: start it with --bootstrap or --join HOST:PORT"
            );
            return;
        }
    } else if cfg.bootstrap || cfg.join.is_some() {
        tracing::info!("data dir already holds cluster state; --bootstrap/--join ignored");
    }
    // A bootstrap node that stopped before registering its admin key does it now.
    if cfg.data_dir.join("admin-token").exists() {
        register_admin_key(&cluster).await;
    }
    // Register (or refresh) this node's record, with its certificate's
    // fingerprint once it has one (the bootstrap node issues its own just
    // after the cluster CA exists).
    crate::join::ensure_own_certificate(&cluster, Duration::from_secs(10)).await;
    loop {
        let record = cluster.own_record();
        let current = cluster.sm.read().data.nodes.get(&cfg.id).cloned();
        if current.as_ref() == Some(&record) {
            break;
        }
        match cluster
            .write(Command::RegisterNode {
                node: record.clone(),
            })
            .await
        {
            Ok(_) => {
                tracing::info!(node = cfg.id, zone = %record.zone, region = %record.region, "node registered");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "registering node; will retry");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn join_until_done(cluster: &Cluster, target: &str) {
    let record = cluster.own_record();
    let mut delay = Duration::from_millis(200);
    loop {
        // Peers accept only holders of the cluster's master key.
        if let Err(e) = cluster.kek() {
            tracing::warn!(error = %e, "cannot join without the cluster's master key; waiting for it");
        }
        let res = async {
            let mut client = cluster.pool.client(target)?;
            let node = crate::raft::encode(&record)?;
            let mut req = tonic::Request::new(rouse_proto::peer::JoinRequest {
                id: record.id,
                node,
            });
            req.set_timeout(Duration::from_secs(120));
            let r = client.join(req).await?;
            anyhow::Ok(r.into_inner().leader_id)
        }
        .await;
        match res {
            Ok(leader) => {
                tracing::info!(node = record.id, leader, via = target, "joined the cluster");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, via = target, "join failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// On the leader, turns the state into placement plans, committed through
/// Raft in one command per pass.
async fn run_scheduler(cluster: Arc<Cluster>) {
    let mut seen = 0;
    loop {
        // Plan on every applied change, and at least twice a second.
        cluster
            .applied_change(&mut seen, Duration::from_millis(500))
            .await;
        if cluster.raft.metrics().borrow().state != openraft::ServerState::Leader {
            continue;
        }
        ensure_data_key(&cluster).await;
        let params = crate::scheduler::Params {
            overcommit: cluster.config.overcommit,
        };
        let plan = {
            let sm = cluster.sm.read();
            crate::scheduler::plan(
                &sm.data,
                crate::cluster::now_ms(),
                params,
                rand::random::<u32>,
            )
        };
        for (namespace, name, reason) in plan.pending.clone() {
            if let Some(r) = &reason {
                tracing::info!(%namespace, container = %name, reason = %r, "instances pending");
            }
            let _ = cluster
                .write(Command::SetPending {
                    namespace,
                    name,
                    reason,
                })
                .await;
        }
        if plan.is_empty() {
            continue;
        }
        tracing::info!(
            add = plan.add.len(),
            remove = plan.remove.len(),
            "committing placement"
        );
        let batch = match cluster.config.placement_batch {
            0 => plan.add.len().max(1),
            n => n,
        };
        let mut remove = plan.remove;
        let mut chunks: Vec<Vec<crate::state::Instance>> =
            plan.add.chunks(batch).map(<[_]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        for add in chunks {
            let cmd = Command::PlaceInstances {
                add,
                remove: std::mem::take(&mut remove),
            };
            if let Err(e) = cluster.write(cmd).await {
                tracing::debug!(error = %e, "placement not committed");
                break;
            }
        }
    }
}

/// Connects to containerd (retrying, loudly) and runs the node agent.
async fn run_agent(cluster: Arc<Cluster>) {
    use crate::runtime::{agent, ctr, image, task};
    let cfg = cluster.config.clone();
    let credentials = match load_credentials(cfg.registry_auth.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "registry_auth: cannot read; pulling anonymously");
            Default::default()
        }
    };
    let mut delay = Duration::from_secs(1);
    let ctr = loop {
        match ctr::Ctr::connect(&cfg.containerd, &cfg.containerd_namespace).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach containerd; this node runs no instances until it can");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    tracing::info!(socket = %cfg.containerd.display(), namespace = %cfg.containerd_namespace, "connected to containerd");
    let images = Arc::new(image::Images::new(
        ctr.clone(),
        &cfg.insecure_registries,
        credentials,
        cfg.data_dir.join("tmp"),
    ));
    let tasks = Arc::new(task::Tasks::new(ctr, cfg.data_dir.join("logs"), cfg.id));
    let a = agent::Agent::new(
        cluster.clone(),
        images,
        tasks,
        agent::AgentConfig {
            ports: cfg.instance_ports,
            stop_grace: cfg.stop_grace,
            image_gc_after: cfg.image_gc_after,
        },
    );
    let _ = cluster.agent.set(a.clone());
    a.run().await;
}

fn load_credentials(
    path: Option<&std::path::Path>,
) -> anyhow::Result<std::collections::HashMap<String, crate::runtime::image::RegistryCredentials>> {
    let Some(p) = path else {
        return Ok(Default::default());
    };
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// On the leader: marks nodes down when their lease (the load report they
/// send about every 500 ms) is older than the grace, and up when it is
/// fresh again. A new leader gives every node a full grace first.
async fn run_liveness(cluster: Arc<Cluster>) {
    let mut since_leader: Option<std::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if cluster.raft.metrics().borrow().state != openraft::ServerState::Leader {
            since_leader = None;
            continue;
        }
        let started = *since_leader.get_or_insert_with(std::time::Instant::now);
        let grace = cluster.config.node_grace;
        if started.elapsed() < grace {
            continue;
        }
        let now = crate::cluster::now_ms();
        let seen = cluster.autoscaler.last_seen();
        let nodes: Vec<(u64, bool)> = {
            let sm = cluster.sm.read();
            sm.data
                .nodes
                .keys()
                .map(|id| (*id, sm.data.node_state(*id).down))
                .collect()
        };
        for (id, down) in nodes {
            let fresh = id == cluster.id
                || seen.get(&id).is_some_and(|t| {
                    now.saturating_sub(*t) <= u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)
                });
            if fresh == down {
                tracing::warn!(node = id, up = fresh, "node liveness changed");
                let cmd = Command::SetNodeState {
                    id,
                    down: Some(!fresh),
                    cordoned: None,
                    draining: None,
                };
                if let Err(e) = cluster.write(cmd).await {
                    tracing::debug!(error = %e, "liveness not committed");
                }
            }
        }
    }
}

/// On the leader: creates the cluster data key once, wrapped by the master
/// key, and the first token-signing key.
async fn ensure_data_key(cluster: &Cluster) {
    let (has_dk, has_sk) = {
        let sm = cluster.sm.read();
        (sm.data.data_key.is_some(), !sm.data.signing_keys.is_empty())
    };
    if has_dk && !has_sk {
        if let Err(e) = add_signing_key(cluster).await {
            tracing::debug!(error = %e, "signing key");
        }
        return;
    }
    if has_dk {
        return;
    }
    let Ok(kek) = cluster.kek() else { return };
    let dk = crate::secrets::Key::random();
    let Ok(wrapped) = kek.wrap(&dk) else { return };
    match cluster.write(Command::InitDataKey { wrapped }).await {
        Ok(_) => tracing::info!("created the cluster data key"),
        Err(e) => tracing::debug!(error = %e, "data key"),
    }
}

/// Makes a new token-signing key (used for rotation too).
pub async fn add_signing_key(cluster: &Cluster) -> Result<String, crate::cluster::ClusterError> {
    use crate::cluster::ClusterError;
    let dk = cluster.data_key()?;
    let (private, public) = crate::tokens::generate().map_err(ClusterError::Raft)?;
    let kid = format!("k{}", hex::encode(rand::random::<[u8; 6]>()));
    let sealed_private = dk
        .seal(&private, &format!("rouse/signing-key/{kid}"))
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    let key = crate::state::SigningKey {
        kid: kid.clone(),
        public_hex: hex::encode(public),
        sealed_private,
        created_at_ms: crate::cluster::now_ms(),
    };
    cluster.write(Command::AddSigningKey { key }).await?;
    tracing::info!(%kid, "added a token-signing key");
    Ok(kid)
}

/// Records the admin key whose token the bootstrap node wrote to
/// `<data-dir>/admin-token` (only its hash enters the state).
async fn register_admin_key(cluster: &Cluster) {
    let path = cluster.config.data_dir.join("admin-token");
    let token = match crate::auth::admin_token_file(&path, cluster.config.bootstrap) {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "admin token");
            return;
        }
    };
    let Some(record) = crate::auth::record_for(&token, None, crate::cluster::now_ms()) else {
        tracing::error!(path = %path.display(), "admin token file holds no valid key");
        return;
    };
    loop {
        if cluster.sm.read().data.api_keys.contains_key(&record.id) {
            return;
        }
        match cluster
            .write(Command::CreateApiKey {
                key: record.clone(),
            })
            .await
        {
            Ok(_) | Err(crate::cluster::ClusterError::Rejected(_)) => {
                tracing::info!(path = %path.display(), "admin API key registered");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
