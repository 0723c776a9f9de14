//! This node's side of the cluster's PKI: minting join tokens, issuing its
//! own certificate from the CA in the state, and (on the bootstrap node)
//! writing the first join token to `<data-dir>/join-token`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::error::JoinError;
use crate::cluster::{now_ms, Cluster};
use crate::keys::Keyring;
use crate::state::{ClusterCa, Command, JoinTokenRecord};
use crate::tls::{self, JoinToken, Material, Tls};

/// Lifetime of the token the bootstrap node writes.
pub const BOOTSTRAP_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of a minted token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime a minted token may have.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What this node's identity work needs.
pub struct Identity {
    pub cluster: Arc<Cluster>,
    pub keys: Arc<Keyring>,
    pub tls: Tls,
    pub data_dir: PathBuf,
    pub bootstrap: bool,
    /// One certificate issue at a time: the files must come from one issue.
    issuing: Mutex<()>,
}

/// Writes this node's certificate files and starts using them.
pub fn install(
    data_dir: &std::path::Path,
    tls: &Tls,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), tls::TlsError> {
    let m = Material::new(ca_pem, Some((cert_pem, key_pem)))?;
    tls::save(data_dir, ca_pem, cert_pem, key_pem)?;
    tls.set(m);
    Ok(())
}

impl Identity {
    pub fn new(
        cluster: Arc<Cluster>,
        keys: Arc<Keyring>,
        tls: Tls,
        data_dir: PathBuf,
        bootstrap: bool,
    ) -> Arc<Self> {
        Arc::new(Identity {
            cluster,
            keys,
            tls,
            data_dir,
            bootstrap,
            issuing: Mutex::new(()),
        })
    }

    /// Mints a one-time join token; Raft keeps only its hash.
    pub async fn mint(&self, ttl: Duration) -> Result<(JoinToken, u64), JoinError> {
        if self.tls.insecure() {
            return Err(JoinError::Precondition(
                "this cluster's peer traffic is plain (--insecure): nodes join without a token"
                    .into(),
            ));
        }
        let ca = self.stored_ca()?;
        let fp = tls::fingerprint(&ca.cert_pem).map_err(JoinError::Tls)?;
        let token = JoinToken::new(&fp);
        let now = now_ms();
        let expires_ms = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
        self.cluster
            .write(Command::CreateJoinToken {
                token: JoinTokenRecord {
                    id: token.id.clone(),
                    hash: token.hash(),
                    created_ms: now,
                    expires_ms,
                    used_by: None,
                    issued: None,
                },
            })
            .await?;
        Ok((token, expires_ms))
    }

    /// The cluster CA as the replicated state holds it.
    pub fn stored_ca(&self) -> Result<ClusterCa, JoinError> {
        self.cluster
            .sm
            .read()
            .data
            .cluster_ca
            .clone()
            .ok_or(JoinError::NoCa)
    }

    /// The CA's certificate and private key, opened with this node's master key.
    pub fn ca_key(&self) -> Result<(String, String), JoinError> {
        let ca = self.stored_ca()?;
        let kek = self.keys.kek().map_err(|e| {
            JoinError::Precondition(format!("{e}; this node cannot sign certificates"))
        })?;
        let key = kek.open(&ca.key, tls::CA_KEY_AAD).map_err(|_| {
            JoinError::Precondition(
                "master_key_file: does not open the cluster CA key (a different key than the cluster's)"
                    .into(),
            )
        })?;
        let key = String::from_utf8(key)
            .map_err(|_| JoinError::Precondition("the cluster CA key is not PEM".into()))?;
        Ok((ca.cert_pem, key))
    }

    /// Issues this node's certificate from the CA in the state, once.
    fn self_issue(&self) -> Result<(), JoinError> {
        let _one = self.issuing.lock();
        if self.tls.ready() {
            return Ok(());
        }
        let (ca_pem, ca_key) = self.ca_key()?;
        let id = self.cluster.id;
        let (key_pem, csr) = tls::node_request(id).map_err(JoinError::Tls)?;
        let cert = tls::sign_node(&ca_pem, &ca_key, &csr, id).map_err(JoinError::Tls)?;
        install(&self.data_dir, &self.tls, &ca_pem, &cert, &key_pem).map_err(JoinError::Tls)?;
        tracing::info!(
            node = id,
            "issued this node's cluster certificate; peer traffic uses mutual TLS"
        );
        Ok(())
    }

    /// Gives this node its certificate as soon as the CA exists, waiting
    /// at most `max`. The bootstrap node registers only after this.
    pub async fn ensure_own_certificate(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        while !self.tls.insecure() && !self.tls.ready() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("no cluster certificate yet; registering without one");
                return;
            }
            match self.self_issue() {
                Ok(()) | Err(JoinError::NoCa) => {}
                Err(e) => tracing::debug!(error = %e, "cluster certificate"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Removes the bootstrap node's `<data-dir>/join-token` once its token
    /// is spent (or expired), so the file holds no live secret longer than
    /// needed. True once the file is gone.
    fn retire_spent_token(&self, file: &std::path::Path) -> bool {
        let Ok(text) = std::fs::read_to_string(file) else {
            return !self.cluster.sm.read().data.join_tokens.is_empty();
        };
        let Ok(token) = JoinToken::parse(text.trim()) else {
            return false;
        };
        let done = self
            .cluster
            .sm
            .read()
            .data
            .join_tokens
            .get(&token.id)
            .is_some_and(|t| t.used_by.is_some() || now_ms() >= t.expires_ms);
        if !done {
            return false;
        }
        match std::fs::remove_file(file) {
            Ok(()) => {
                tracing::info!(path = %file.display(), "removed the spent bootstrap join token");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %file.display(), "removing the spent join token");
                false
            }
        }
    }

    /// Runs on every node: gives it its certificate once the CA exists, and
    /// on the bootstrap node writes the first join token and removes its
    /// file once it is spent.
    pub async fn run(self: Arc<Self>) {
        if self.tls.insecure() {
            return;
        }
        let mut seen = 0;
        loop {
            self.cluster
                .applied_change(&mut seen, Duration::from_millis(1000))
                .await;
            let (has_ca, has_tokens) = {
                let sm = self.cluster.sm.read();
                (
                    sm.data.cluster_ca.is_some(),
                    !sm.data.join_tokens.is_empty(),
                )
            };
            if !has_ca {
                continue;
            }
            if let Err(e) = self.self_issue() {
                tracing::warn!(error = %e, "cannot give this node its cluster certificate yet");
            }
            let file = self.data_dir.join("join-token");
            if self.bootstrap && !has_tokens && !file.exists() {
                match self.mint(BOOTSTRAP_TOKEN_TTL).await {
                    Ok((t, _)) => match crate::secrets::write_private(&file, t.expose().as_bytes())
                    {
                        Ok(()) => {
                            tracing::info!(path = %file.display(), "wrote a one-time join token (valid 24 h)")
                        }
                        Err(e) => tracing::error!(error = %e, path = %file.display(), "join token"),
                    },
                    Err(e) => tracing::debug!(error = %e, "join token"),
                }
            }
            if self.bootstrap && self.retire_spent_token(&file) {
                return;
            }
            if self.tls.ready() && !self.bootstrap {
                return;
            }
        }
    }
}
