//! A joining node's first step: it proves its join token to a member and
//! gets its certificate (and the master key, when it has none).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use rouse_proto::peer::cluster_join_client::ClusterJoinClient;
use rouse_proto::peer::{GetClusterCaRequest, IssueCertificateRequest, IssueCertificateResponse};
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use super::identity::install;
use crate::tls::{self, JoinToken, Tls};

/// What a joining node knows before it belongs to a cluster.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub master_key_file: PathBuf,
    pub join_token: Option<JoinToken>,
    /// Source address for connections (this node's listen IP).
    pub local: Option<IpAddr>,
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
    config: &JoinConfig,
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
    let local = config.local;
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
                install(&config.data_dir, tls, &r.ca_pem, &r.cert_pem, &key_pem)?;
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
