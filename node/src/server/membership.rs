//! Membership on start: bootstrap or join the first time, then keep this
//! node's record (addresses, zone, capacity, certificate) in the node table,
//! and register the bootstrap node's admin key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;

use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::join::Identity;
use crate::state::{Command, NodeRecord};

/// The record this node registers for itself.
fn own_record(config: &NodeConfig, tls: &crate::tls::Tls) -> NodeRecord {
    NodeRecord {
        id: config.id,
        api_addr: config.advertise.clone(),
        http_addr: config.advertise_http.clone(),
        hop_addr: config.advertise_hop.clone(),
        zone: config.zone.clone(),
        region: config.region.clone(),
        cpu_capacity_mvcpu: config.cpu_capacity_mvcpu,
        memory_capacity_mb: config.memory_capacity_mb,
        cert_sha256: tls.own_fingerprint().unwrap_or_default(),
    }
}

/// Bootstraps or joins on first start, then keeps this node's record in
/// the replicated node table up to date.
pub(super) async fn start_membership(
    cluster: Arc<Cluster>,
    identity: Arc<Identity>,
    cfg: NodeConfig,
    tls: crate::tls::Tls,
) {
    let initialized = cluster.raft.is_initialized().await.unwrap_or(false);
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
            register_admin_key(&cluster, &cfg).await;
        } else if let Some(target) = &cfg.join {
            join_until_done(&cluster, own_record(&cfg, &tls), target).await;
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
        register_admin_key(&cluster, &cfg).await;
    }
    // Register (or refresh) this node's record, with its certificate's
    // fingerprint once it has one (the bootstrap node issues its own just
    // after the cluster CA exists).
    identity
        .ensure_own_certificate(Duration::from_secs(10))
        .await;
    loop {
        let record = own_record(&cfg, &tls);
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

async fn join_until_done(cluster: &Cluster, record: NodeRecord, target: &str) {
    let mut delay = Duration::from_millis(200);
    loop {
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

/// Records the admin key whose token the bootstrap node wrote to
/// `<data-dir>/admin-token` (only its hash enters the state).
async fn register_admin_key(cluster: &Cluster, cfg: &NodeConfig) {
    let path = cfg.data_dir.join("admin-token");
    let token = match crate::auth::admin_token_file(&path, cfg.bootstrap) {
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
