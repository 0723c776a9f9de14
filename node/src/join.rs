//! Node identity: the cluster CA, each node's certificate, and join tokens.
//!
//! - The leader creates the CA once (its key sealed by the master key) and
//!   the bootstrap node writes a first join token to `<data-dir>/join-token`.
//! - A member without a certificate issues its own from the CA in the
//!   state (it holds the master key that opens it).
//! - A new node proves a join token and gets its certificate (and, when it
//!   has none, the master key) from any member, over TLS pinned to the CA
//!   fingerprint the token carries.

use std::sync::Arc;
use std::time::Duration;

use rouse_proto::peer::cluster_join_client::ClusterJoinClient;
use rouse_proto::peer::cluster_join_server::ClusterJoin;
use rouse_proto::peer::{
    GetClusterCaRequest, GetClusterCaResponse, IssueCertificateRequest, IssueCertificateResponse,
};
use tonic::transport::Endpoint;
use tonic::{Code, Request, Response, Status};

use crate::cluster::{now_ms, Cluster, ClusterError};
use crate::config::NodeConfig;
use crate::state::{Command, JoinTokenRecord};
use crate::tls::{self, JoinToken, Material, Tls};

/// Lifetime of the token the bootstrap node writes.
pub const BOOTSTRAP_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of a minted token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime a minted token may have.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Mints a one-time join token; Raft keeps only its hash.
pub async fn mint(cluster: &Cluster, ttl: Duration) -> Result<(JoinToken, u64), ClusterError> {
    if cluster.tls.insecure() {
        return Err(ClusterError::Precondition(
            "this cluster's peer traffic is plain (--insecure): nodes join without a token".into(),
        ));
    }
    let ca = stored_ca(cluster)?;
    let fp = tls::fingerprint(&ca.cert_pem).map_err(|e| ClusterError::Raft(e.to_string()))?;
    let token = JoinToken::new(&fp);
    let now = now_ms();
    let expires_ms = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
    cluster
        .write(Command::CreateJoinToken {
            token: JoinTokenRecord {
                id: token.id.clone(),
                hash: token.hash(),
                created_ms: now,
                expires_ms,
                used_by: None,
            },
        })
        .await?;
    Ok((token, expires_ms))
}

/// The cluster CA as the replicated state holds it.
fn stored_ca(cluster: &Cluster) -> Result<crate::state::ClusterCa, ClusterError> {
    cluster.sm.read().data.cluster_ca.clone().ok_or_else(|| {
        ClusterError::Precondition("the cluster CA is not set up yet; retry in a moment".into())
    })
}

/// The CA's private key, opened with this node's master key.
fn ca_key(cluster: &Cluster) -> Result<(String, String), ClusterError> {
    let ca = stored_ca(cluster)?;
    let kek = cluster.kek().map_err(|e| {
        ClusterError::Precondition(format!("{e}; this node cannot sign certificates"))
    })?;
    let key = kek.open(&ca.key, tls::CA_KEY_AAD).map_err(|_| {
        ClusterError::Precondition(
            "master_key_file: does not open the cluster CA key (a different key than the cluster's)"
                .into(),
        )
    })?;
    let key = String::from_utf8(key)
        .map_err(|_| ClusterError::Raft("the cluster CA key is not PEM".into()))?;
    Ok((ca.cert_pem, key))
}

/// Runs on every node: creates the CA (leader, once), gives this node its
/// certificate from the CA when it has none, and writes the bootstrap
/// node's first join token.
pub async fn run_identity(cluster: Arc<Cluster>) {
    if cluster.tls.insecure() {
        return;
    }
    let mut seen = 0;
    loop {
        cluster
            .applied_change(&mut seen, Duration::from_millis(1000))
            .await;
        let (has_ca, has_tokens) = {
            let sm = cluster.sm.read();
            (
                sm.data.cluster_ca.is_some(),
                !sm.data.join_tokens.is_empty(),
            )
        };
        if let Err(e) = certificate_step(&cluster).await {
            tracing::warn!(error = %e, "cannot give this node its cluster certificate yet");
        }
        if !has_ca {
            continue;
        }
        let file = cluster.config.data_dir.join("join-token");
        if has_ca && cluster.config.bootstrap && !has_tokens && !file.exists() {
            match mint(&cluster, BOOTSTRAP_TOKEN_TTL).await {
                Ok((t, _)) => match crate::secrets::write_private(&file, t.expose().as_bytes()) {
                    Ok(()) => {
                        tracing::info!(path = %file.display(), "wrote a one-time join token (valid 24 h)")
                    }
                    Err(e) => tracing::error!(error = %e, path = %file.display(), "join token"),
                },
                Err(e) => tracing::debug!(error = %e, "join token"),
            }
        }
        if has_ca && cluster.tls.ready() && (!cluster.config.bootstrap || has_tokens) {
            return;
        }
    }
}

/// Gives this node its certificate now if it can (creating the CA first
/// when this node leads a cluster without one), waiting at most `max`.
/// The bootstrap node registers only after this, with its certificate.
pub async fn ensure_own_certificate(cluster: &Cluster, max: Duration) {
    let deadline = tokio::time::Instant::now() + max;
    while !cluster.tls.insecure() && !cluster.tls.ready() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("no cluster certificate yet; registering without one");
            return;
        }
        if let Err(e) = certificate_step(cluster).await {
            tracing::debug!(error = %e, "cluster certificate");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One step towards this node's certificate: issue it from the CA in the
/// state, or, on the leader of a cluster without a CA, create the CA.
async fn certificate_step(cluster: &Cluster) -> Result<(), ClusterError> {
    if cluster.tls.ready() {
        return Ok(());
    }
    let has_ca = cluster.sm.read().data.cluster_ca.is_some();
    let leader = cluster.raft.metrics().borrow().state == openraft::ServerState::Leader;
    if has_ca {
        self_issue(cluster)?;
        tracing::info!(
            node = cluster.id,
            "issued this node's cluster certificate; peer traffic uses mutual TLS"
        );
    } else if leader {
        create_ca(cluster).await?;
    }
    Ok(())
}

async fn create_ca(cluster: &Cluster) -> Result<(), ClusterError> {
    let kek = cluster
        .kek()
        .map_err(|e| ClusterError::Precondition(e.to_string()))?;
    let (cert_pem, key_pem) = tls::generate_ca().map_err(|e| ClusterError::Raft(e.to_string()))?;
    let key = kek
        .seal(key_pem.as_bytes(), tls::CA_KEY_AAD)
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    cluster
        .write(Command::InitClusterCa {
            ca: crate::state::ClusterCa { cert_pem, key },
        })
        .await?;
    tracing::info!("created the cluster CA");
    Ok(())
}

/// One certificate issue at a time: the files must come from one issue.
static ISSUING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn self_issue(cluster: &Cluster) -> Result<(), ClusterError> {
    let _one = ISSUING.lock().unwrap_or_else(|p| p.into_inner());
    if cluster.tls.ready() {
        return Ok(());
    }
    let (ca_pem, ca_key) = ca_key(cluster)?;
    let other = |e: tls::TlsError| ClusterError::Raft(e.to_string());
    let (key_pem, csr) = tls::node_request(cluster.id).map_err(other)?;
    let cert = tls::sign_node(&ca_pem, &ca_key, &csr, cluster.id).map_err(other)?;
    install(&cluster.config, &cluster.tls, &ca_pem, &cert, &key_pem).map_err(other)
}

fn install(
    config: &NodeConfig,
    tls: &Tls,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), tls::TlsError> {
    let m = Material::new(ca_pem, Some((cert_pem, key_pem)))?;
    tls::save(&config.data_dir, ca_pem, cert_pem, key_pem)?;
    tls.set(m);
    Ok(())
}

/// Why a join attempt failed: worth retrying, or not.
enum Attempt {
    Retry(String),
    Fatal(String),
}

fn from_status(what: &str, s: Status) -> Attempt {
    let msg = format!("{what}: {}", s.message());
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Attempt::Retry(msg)
        }
        _ => Attempt::Fatal(msg),
    }
}

/// A joining node's first step: proves its join token to the node at
/// `target` and installs the certificate it gets (and the master key, when
/// this node has none). Retries while the cluster is unreachable; a bad
/// token or a cluster whose CA does not match it is an error.
pub async fn obtain_certificate(
    config: &NodeConfig,
    target: &str,
    tls: &Tls,
) -> anyhow::Result<()> {
    let token = config.join_token.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "join_token: is required to join a cluster: peers speak mutual TLS, and --join-token T \
             (from the bootstrap node's <data-dir>/join-token or `rouse cluster join-token`) gets \
             this node its certificate; --insecure turns peer TLS off for development"
        )
    })?;
    let want_master_key = !config.master_key_file.exists();
    let (key_pem, csr) = tls::node_request(config.id)?;
    let local = Some(config.listen.ip()).filter(|ip| !ip.is_unspecified());
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt(target, &token, config.id, &csr, want_master_key, local).await {
            Ok(r) => {
                if want_master_key {
                    let k = crate::secrets::Key::from_hex(&r.master_key).map_err(|e| {
                        anyhow::anyhow!("join: the cluster sent no usable master key ({e})")
                    })?;
                    k.save(&config.master_key_file).map_err(|e| {
                        anyhow::anyhow!(
                            "master_key_file: cannot write {}: {e}",
                            config.master_key_file.display()
                        )
                    })?;
                }
                install(config, tls, &r.ca_pem, &r.cert_pem, &key_pem)?;
                tracing::info!(
                    node = config.id,
                    via = target,
                    "got this node's cluster certificate"
                );
                return Ok(());
            }
            Err(Attempt::Fatal(e)) => anyhow::bail!("{e}"),
            Err(Attempt::Retry(e)) => {
                tracing::warn!(error = %e, via = target, "cannot get a cluster certificate yet; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn attempt(
    target: &str,
    token: &JoinToken,
    id: u64,
    csr: &str,
    want_master_key: bool,
    local: Option<std::net::IpAddr>,
) -> Result<IssueCertificateResponse, Attempt> {
    let endpoint = |scheme: &str| {
        Endpoint::from_shared(format!("{scheme}://{target}"))
            .map(|e| {
                e.connect_timeout(Duration::from_secs(3))
                    .timeout(Duration::from_secs(30))
                    .local_address(local)
            })
            .map_err(|e| Attempt::Fatal(format!("join: {target:?} is not HOST:PORT ({e})")))
    };
    // 1. The CA certificate is public; trust it only if the token names it.
    let plain = endpoint("http")?
        .connect()
        .await
        .map_err(|e| Attempt::Retry(format!("connecting to {target}: {e}")))?;
    let ca_pem = ClusterJoinClient::new(plain)
        .get_cluster_ca(GetClusterCaRequest {})
        .await
        .map_err(|s| from_status("asking for the cluster CA", s))?
        .into_inner()
        .ca_pem;
    let fp = tls::fingerprint(&ca_pem)
        .map_err(|e| Attempt::Fatal(format!("join: the cluster sent a bad CA certificate: {e}")))?;
    if fp != token.ca_fingerprint {
        return Err(Attempt::Fatal(format!(
            "join_token: the node at {target} belongs to a cluster whose CA fingerprint is {fp}, not the token's {}",
            token.ca_fingerprint
        )));
    }
    // 2. Over TLS to that CA: the token for a certificate.
    let config = tls::join_client_config(&ca_pem).map_err(|e| Attempt::Fatal(e.to_string()))?;
    let connector = tls::https_connector(config, local, true);
    let secure = endpoint("https")?
        .connect_with_connector(connector)
        .await
        .map_err(|e| Attempt::Retry(format!("TLS to {target}: {e}")))?;
    let r = ClusterJoinClient::new(secure)
        .issue_certificate(IssueCertificateRequest {
            join_token: token.expose(),
            node_id: id,
            csr_pem: csr.to_string(),
            want_master_key,
        })
        .await
        .map_err(|s| from_status("asking for a certificate", s))?
        .into_inner();
    Ok(r)
}

/// The server side: served to callers without a certificate.
pub struct JoinService {
    cluster: Arc<Cluster>,
}

impl JoinService {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        JoinService { cluster }
    }
}

#[tonic::async_trait]
impl ClusterJoin for JoinService {
    async fn get_cluster_ca(
        &self,
        _req: Request<GetClusterCaRequest>,
    ) -> Result<Response<GetClusterCaResponse>, Status> {
        let ca = self.cluster.sm.read().data.cluster_ca.clone();
        match ca {
            Some(ca) => Ok(Response::new(GetClusterCaResponse {
                ca_pem: ca.cert_pem,
            })),
            None if self.cluster.tls.insecure() => Err(Status::failed_precondition(
                "this node's peer traffic is plain (--insecure): join without --join-token, with --insecure",
            )),
            None => Err(Status::unavailable(
                "this node has no cluster CA yet; retry in a moment",
            )),
        }
    }

    async fn issue_certificate(
        &self,
        req: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let over_tls = req
            .extensions()
            .get::<tls::ConnInfo>()
            .is_some_and(|c| c.tls);
        if !over_tls {
            return Err(Status::permission_denied(
                "join: a join token is accepted only over TLS",
            ));
        }
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must be at least 1"));
        }
        let token =
            JoinToken::parse(&r.join_token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cluster = &self.cluster;
        let unavailable = |e: ClusterError| match e {
            ClusterError::Rejected(r) => Status::permission_denied(r.to_string()),
            ClusterError::Precondition(m) => Status::failed_precondition(m),
            e => Status::unavailable(e.to_string()),
        };
        let (ca_pem, ca_key) = ca_key(cluster).map_err(unavailable)?;
        let fp = tls::fingerprint(&ca_pem).map_err(|e| Status::internal(e.to_string()))?;
        if fp != token.ca_fingerprint {
            return Err(Status::permission_denied(
                "join_token: the token is for another cluster (CA fingerprint differs)",
            ));
        }
        // Spending the token goes through Raft, so it is spent once.
        cluster
            .write(Command::UseJoinToken {
                id: token.id.clone(),
                hash: token.hash(),
                node: r.node_id,
            })
            .await
            .map_err(unavailable)?;
        let cert = tls::sign_node(&ca_pem, &ca_key, &r.csr_pem, r.node_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let master_key = if r.want_master_key {
            cluster
                .kek()
                .map_err(|e| Status::failed_precondition(e.to_string()))?
                .export_hex()
        } else {
            String::new()
        };
        tracing::info!(node = r.node_id, token = %token.id, "issued a cluster certificate to a joining node");
        Ok(Response::new(IssueCertificateResponse {
            cert_pem: cert,
            ca_pem,
            master_key,
        }))
    }
}
