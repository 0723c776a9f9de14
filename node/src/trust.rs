//! Who counts as a cluster member on a connection: a peer that showed a
//! cluster certificate which was not revoked (or anyone, with `--insecure`,
//! where the peer service checks the master-key credential instead).

use std::sync::Arc;

use crate::store::SmShared;
use crate::tls::{ConnInfo, Tls};

#[derive(Clone)]
pub struct PeerTrust {
    tls: Tls,
    sm: Arc<SmShared>,
}

impl PeerTrust {
    pub fn new(tls: Tls, sm: Arc<SmShared>) -> Self {
        PeerTrust { tls, sm }
    }

    pub fn insecure(&self) -> bool {
        self.tls.insecure()
    }

    /// Whether a connection may be trusted as a member's.
    pub fn check(&self, info: Option<&ConnInfo>) -> Result<(), String> {
        if self.tls.insecure() {
            return Ok(());
        }
        match info.and_then(|i| i.peer.as_ref()) {
            None => Err(
                "a cluster certificate is required (mutual TLS); this connection presented none"
                    .into(),
            ),
            Some(p) if self.sm.read().data.revoked_certs.contains(&p.cert_sha256) => Err(format!(
                "the certificate of node {} was revoked when it was removed from the cluster",
                p.node
            )),
            Some(_) => Ok(()),
        }
    }
}
