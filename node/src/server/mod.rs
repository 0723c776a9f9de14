//! Starts a node: opens the store, builds Raft, wires every service with
//! only what it needs, serves the API and peer service on one listener and
//! the mesh on another, bootstraps or joins, and stops on shutdown.
//!
//! ```text
//!  Cluster (raft, state, peer pool) ─┬─▶ api, peer, join services (gRPC listener)
//!  Keyring (master key, data key) ───┤
//!  LocalInstances ─┬─▶ mesh ◀─ resume channel ─▶ agent (containerd)
//!                  └──────────────────────────▶ agent
//!  LoadBook ◀─ peer.ReportLoad, mesh reporter ─▶ leader: liveness, autoscale
//!  leader loops: placement, liveness, autoscale, bootstrap (keys, CA), triggers
//! ```

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{Api, ApiConfig};
use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::join::Identity;
use crate::keys::Keyring;
use crate::loads::LoadBook;
use crate::local::{LocalInstances, ResumeRequest};
use crate::mesh::server::Listener;
use crate::mesh::{Mesh, MeshConfig, Upstreams};
use crate::peer::PeerService;
use crate::raft::{Network, PeerPool, Raft};
use crate::runtime::agent::{AgentConfig, InstanceNetwork};
use crate::trust::PeerTrust;

mod membership;

use membership::start_membership;

/// A node's listeners, already bound.
pub struct Listeners {
    /// The gRPC API and the peer service (`--listen`).
    pub api: TcpListener,
    /// The public mesh (`--http`).
    pub http: TcpListener,
    /// Other nodes' hops (`--hop`).
    pub hop: TcpListener,
    /// Prometheus metrics (`--metrics`).
    pub metrics: TcpListener,
}

/// Runs a node on already-bound listeners until `shutdown` resolves.
pub async fn run(
    config: NodeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        api: listener,
        http: http_listener,
        hop: hop_listener,
        metrics: metrics_listener,
    } = listeners;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir: cannot create {}", config.data_dir.display()))?;
    // A node with no Raft state yet is joining (or bootstrapping) now.
    let fresh = !config.data_dir.join("raft").exists();
    let local_ip = Some(config.listen.ip()).filter(|ip| !ip.is_unspecified());
    let tls = crate::tls::Tls::new(config.insecure);
    if config.insecure {
        tracing::warn!("INSECURE: --insecure is set: peer traffic (Raft, forwarded writes, mesh hops) is plain and unencrypted, checked only by a key-derived credential. For development only; never on a network you do not control.");
    } else if let Some(m) = crate::tls::load(&config.data_dir)? {
        tls.set(m);
    } else if let Some(target) = config.join.as_deref() {
        if fresh {
            let join = crate::join::client::JoinConfig {
                id: config.id,
                data_dir: config.data_dir.clone(),
                master_key_file: config.master_key_file.clone(),
                join_token: config.join_token.clone(),
                local: local_ip,
            };
            crate::join::client::obtain_certificate(&join, target, &tls).await?;
        }
    }
    let (log, sm) = crate::store::open(&config.data_dir)?;
    let shared = sm.shared();

    let timing = crate::cluster::election::Timing {
        heartbeat: Duration::from_millis(config.heartbeat_ms),
        timeout: Duration::from_millis(config.election_timeout_ms),
    };
    let (heartbeat_interval, election_timeout_min, election_timeout_max) = timing.raft_settings();
    let raft_config = openraft::Config {
        cluster_name: "rouse".into(),
        heartbeat_interval,
        election_timeout_min,
        election_timeout_max,
        // Elections are started by `cluster::election`, after a pre-vote.
        enable_elect: false,
        // An AppendEntries has one heartbeat to finish: small batches let
        // a follower catch up on a loaded machine.
        max_payload_entries: 64,
        install_snapshot_timeout: 5_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        max_in_snapshot_log_to_keep: config.snapshot_logs.min(1000),
        enable_tick: true,
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;

    let pool = PeerPool::new(local_ip, tls.clone());
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        Network::new(pool.clone()),
        log.clone(),
        sm,
    )
    .await
    .context("starting raft")?;
    #[allow(unused_mut)]
    let mut cluster = Cluster::new(
        config.id,
        raft.clone(),
        shared.clone(),
        pool.clone(),
        log,
        timing,
    );
    #[cfg(feature = "sabotage")]
    {
        cluster.sabotage_stale_reads = config.sabotage_stale_reads;
        if config.sabotage_stale_reads {
            tracing::error!("SABOTAGE: reads are answered from local state without the leader check; never use this outside the chaos suite");
        }
    }
    let cluster = Arc::new(cluster);
    let keys = Arc::new(Keyring::open(
        &config.master_key_file,
        config.bootstrap,
        pool.clone(),
    ));
    let identity = Identity::new(
        cluster.clone(),
        keys.clone(),
        tls.clone(),
        config.data_dir.clone(),
        config.bootstrap,
    );
    let trust = PeerTrust::new(config.id, tls.clone(), shared.clone());
    let loads = Arc::new(LoadBook::default());
    let local = LocalInstances::new();
    let images = Arc::new(OnceLock::new());
    let (resumer, resumes) = tokio::sync::mpsc::channel::<ResumeRequest>(64);

    let key_uses = Arc::new(crate::auth::KeyUses::default());
    let api = Api::new(
        ApiConfig {
            scale_cap: config.scale_cap,
            data_dir: config.data_dir.clone(),
            insecure: config.insecure,
        },
        cluster.clone(),
        keys.clone(),
        identity.clone(),
        images.clone(),
        key_uses.clone(),
    );
    let peer = PeerService::new(
        cluster.clone(),
        keys.clone(),
        loads.clone(),
        local.clone(),
        config.insecure,
    );
    let router = crate::router::grpc_router(
        api,
        peer,
        crate::join::service::JoinService::new(identity.clone()),
        trust.clone(),
        keys.clone(),
        config.header_timeout,
    )
    .await?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let acceptor = if config.insecure {
        None
    } else {
        Some(tokio_rustls::TlsAcceptor::from(tls.server_config(false)?))
    };
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        crate::tls::incoming(
            listener,
            acceptor,
            config.header_timeout,
            config.max_api_connections,
        ),
        async {
            let _ = stop_rx.await;
        },
    ));
    tracing::info!(node = config.id, listen = %config.listen, advertise = %config.advertise, "serving gRPC API and peer service");

    let networks = instance_networks(&config).await?;
    // Instances reach the mesh on the node's bridge address (the public
    // listener may be on loopback, which their namespaces do not share).
    let gateway_listener =
        match &networks {
            Some(net) if !config.http.ip().is_unspecified() => {
                let addr = std::net::SocketAddr::from((net.plan().gateway(), config.http.port()));
                Some(TcpListener::bind(addr).await.with_context(|| {
                    format!("http: cannot serve the mesh to instances on {addr}")
                })?)
            }
            _ => None,
        };
    let mesh = Mesh::new(
        MeshConfig {
            base_domain: config.base_domain.clone(),
            header_timeout: config.header_timeout,
            max_connections: config.max_connections,
        },
        cluster.clone(),
        local.clone(),
        resumer,
        Upstreams::new(&tls, local_ip),
    );
    // Trigger deliveries go through this node's own public mesh.
    let mesh_here = {
        let mut a = http_listener.local_addr()?;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        a.to_string()
    };
    let delivery = Arc::new(crate::triggers::Delivery::new(
        cluster.clone(),
        keys.clone(),
        mesh_here,
        config.base_domain.clone(),
    ));
    let mut tasks: Vec<JoinHandle<()>> = vec![
        tokio::spawn(crate::cluster::election::run(cluster.clone())),
        tokio::spawn(crate::triggers::run(cluster.clone(), delivery)),
        tokio::spawn(start_membership(
            cluster.clone(),
            identity.clone(),
            config.clone(),
            tls.clone(),
        )),
        tokio::spawn(identity.clone().run()),
        tokio::spawn(crate::auth::report_key_uses(
            cluster.clone(),
            key_uses,
            config.key_use_report,
        )),
        tokio::spawn(crate::keys::rotate::run_key_sync(
            cluster.clone(),
            keys.clone(),
        )),
        tokio::spawn(crate::mesh::server::serve(
            mesh.clone(),
            // Clients, and instances on the node's bridge address.
            std::iter::once(http_listener)
                .chain(gateway_listener)
                .collect(),
            Listener::Public,
            Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
        )),
        tokio::spawn(crate::mesh::server::serve(
            mesh.clone(),
            vec![hop_listener],
            Listener::Hops {
                tls: tls.clone(),
                trust,
            },
            Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
        )),
        tokio::spawn(crate::mesh::metrics::serve(mesh.clone(), metrics_listener)),
        tokio::spawn(crate::telemetry::watch_leader(cluster.raft.metrics())),
        tokio::spawn(crate::mesh::report::run(
            cluster.clone(),
            mesh.clone(),
            loads.clone(),
            local.clone(),
        )),
        // Instances keep running under containerd; a restarted node adopts them.
        tokio::spawn(run_agent(
            cluster.clone(),
            keys.clone(),
            local.clone(),
            images,
            resumes,
            networks,
            config.clone(),
        )),
    ];
    if config.metering {
        tasks.push(tokio::spawn(crate::runtime::meter::run(
            cluster.clone(),
            local,
            config.id,
            config.data_dir.join("usage.json"),
        )));
    }
    tasks.extend(crate::leader::spawn(
        &cluster,
        crate::leader::Settings {
            me: config.id,
            insecure: config.insecure,
            overcommit: config.overcommit,
            placement_batch: config.placement_batch,
            node_grace: config.node_grace,
            autoscale_window: config.autoscale_window,
        },
        &keys,
        &loads,
    ));
    tracing::info!(http = %config.http, base_domain = %config.base_domain, "serving the routing mesh");

    shutdown.await;
    tracing::info!(node = config.id, "shutting down");
    for t in &tasks {
        t.abort();
    }
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

/// The node's isolated instance network, set up (bridge, firewall), or
/// `None` in host mode.
async fn instance_networks(
    config: &NodeConfig,
) -> anyhow::Result<Option<Arc<crate::runtime::network::Networks>>> {
    use crate::config::InstanceNetwork;
    use crate::runtime::network::{find_plugins, plan::Plan, Networks};
    match &config.instance_network {
        InstanceNetwork::Host { ports } => {
            tracing::warn!(ports = ?ports, "instance_network: host: instances share the node's network and listen on its addresses; for development only");
            Ok(None)
        }
        InstanceNetwork::Isolated {
            subnet,
            egress,
            cni_bin_dir,
        } => {
            let bin = find_plugins(cni_bin_dir.as_deref())?;
            let plan = Plan {
                subnet: *subnet,
                egress: *egress,
                mesh_port: config.http.port(),
            };
            let net = Networks::new(plan, bin, config.data_dir.join("cni"));
            net.prepare_node()
                .await
                .with_context(|| format!("instance_subnet: setting up {subnet}"))?;
            tracing::info!(subnet = %subnet, bridge = %net.plan().bridge(), egress, "instances get a network namespace each");
            Ok(Some(Arc::new(net)))
        }
    }
}

/// Removes the node's instance network (`--remove-instance-network`).
pub async fn remove_instance_network(config: &NodeConfig) -> anyhow::Result<()> {
    use crate::config::InstanceNetwork;
    use crate::runtime::network::{find_plugins, plan::Plan, Networks};
    let InstanceNetwork::Isolated {
        subnet,
        egress,
        cni_bin_dir,
    } = &config.instance_network
    else {
        anyhow::bail!("instance_network: host mode has no instance network to remove");
    };
    let bin = find_plugins(cni_bin_dir.as_deref()).unwrap_or_default();
    let plan = Plan {
        subnet: *subnet,
        egress: *egress,
        mesh_port: config.http.port(),
    };
    Networks::new(plan, bin, config.data_dir.join("cni"))
        .remove_node()
        .await?;
    tracing::info!(subnet = %subnet, "removed the instance network");
    Ok(())
}

/// Connects to containerd (retrying, loudly) and runs the node agent.
async fn run_agent(
    cluster: Arc<Cluster>,
    keys: Arc<Keyring>,
    local: Arc<LocalInstances>,
    images_slot: Arc<OnceLock<Arc<crate::runtime::image::Images>>>,
    resumes: tokio::sync::mpsc::Receiver<ResumeRequest>,
    networks: Option<Arc<crate::runtime::network::Networks>>,
    cfg: NodeConfig,
) {
    use crate::runtime::{agent, ctr, image, task};
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
        cfg.image_limits,
    ));
    let _ = images_slot.set(images.clone());
    let tasks = Arc::new(task::Tasks::new(ctr, cfg.data_dir.join("logs"), cfg.id));
    let a = agent::Agent::new(
        cluster,
        keys,
        local,
        images,
        tasks,
        AgentConfig {
            node: cfg.id,
            network: match (networks, &cfg.instance_network) {
                (Some(n), _) => InstanceNetwork::Isolated(n),
                (None, crate::config::InstanceNetwork::Host { ports }) => {
                    InstanceNetwork::Host { ports: *ports }
                }
                (None, _) => InstanceNetwork::Host {
                    ports: (20_000, 29_999),
                },
            },
            userns: cfg.userns_base.map(|base| crate::runtime::spec::IdMap {
                base,
                size: crate::config::USERNS_SIZE,
            }),
            stop_grace: cfg.stop_grace,
            image_gc_after: cfg.image_gc_after,
            log_retention: cfg.log_retention,
            suspend_after: cfg.suspend_after,
        },
    );
    a.run(resumes).await;
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
