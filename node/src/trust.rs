//! Who counts as a cluster member on a connection: a peer that showed a
//! cluster certificate the cluster issued to that node and did not revoke
//! (or anyone, with `--insecure`, where the peer service checks the
//! master-key credential instead).

use std::sync::Arc;

use crate::state::NodeId;
use crate::store::SmShared;
use crate::tls::{ConnInfo, Tls};

#[derive(Clone)]
pub struct PeerTrust {
    me: NodeId,
    tls: Tls,
    sm: Arc<SmShared>,
}

impl PeerTrust {
    pub fn new(me: NodeId, tls: Tls, sm: Arc<SmShared>) -> Self {
        PeerTrust { me, tls, sm }
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
            Some(p) => {
                let sm = self.sm.read();
                let state = &sm.data;
                // A node that is still catching up (its own record not yet
                // in its copy of the state) cannot judge yet who was issued
                // what: it takes the CA's signature, as when it joined.
                // Every record and certificate older than its own comes
                // before it in the log, so once it knows itself it can.
                if !state.nodes.contains_key(&self.me) {
                    return if state.revoked_certs.contains(&p.cert_sha256) {
                        Err(format!("the certificate of node {} was revoked", p.node))
                    } else {
                        Ok(())
                    };
                }
                state.peer_trusted(p.node, &p.cert_sha256)
            }
        }
    }
}
