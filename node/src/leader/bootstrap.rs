//! What a new cluster needs once, made by its first leader: the data key
//! (wrapped by the master key), the first token-signing key, and the
//! cluster CA for peer mTLS (its key sealed by the master key).

use std::sync::Arc;

use super::driver::{Decider, Tick};
use crate::keys::signing::signing_key_aad;
use crate::keys::Keyring;
use crate::secrets::Key;
use crate::state::{ClusterCa, Command, SigningKey, StateData};

/// What the cluster still lacks. Pure.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub data_key: bool,
    /// Only once the data key exists (the signing key is sealed under it).
    pub signing_key: bool,
    /// Not with `--insecure`.
    pub ca: bool,
}

pub fn needs(state: &StateData, insecure: bool) -> Needs {
    Needs {
        data_key: state.data_key.is_none(),
        signing_key: state.data_key.is_some() && state.signing_keys.is_empty(),
        ca: !insecure && state.cluster_ca.is_none(),
    }
}

/// The bootstrap loop's decider: makes the missing keys with this node's
/// master key.
pub struct Bootstrap {
    pub keys: Arc<Keyring>,
    pub insecure: bool,
}

impl Bootstrap {
    fn data_key(&self) -> Option<Command> {
        let kek = self.keys.kek().ok()?;
        let wrapped = kek.wrap(&Key::random()).ok()?;
        tracing::info!("creating the cluster data key");
        Some(Command::InitDataKey { wrapped })
    }

    fn signing_key(&self, state: &StateData, now_ms: u64) -> Option<Command> {
        let dk = self.keys.data_key(state).ok()?;
        let (private, public) = crate::tokens::generate().ok()?;
        let kid = format!("k{}", hex::encode(rand::random::<[u8; 6]>()));
        let sealed_private = dk.seal(&private, &signing_key_aad(&kid)).ok()?;
        tracing::info!(%kid, "adding the first token-signing key");
        Some(Command::AddSigningKey {
            key: SigningKey {
                kid,
                public_hex: hex::encode(public),
                sealed_private,
                created_at_ms: now_ms,
            },
        })
    }

    fn ca(&self) -> Option<Command> {
        let kek = self.keys.kek().ok()?;
        let (cert_pem, key_pem) = match crate::tls::generate_ca() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the cluster CA");
                return None;
            }
        };
        let key = kek.seal(key_pem.as_bytes(), crate::tls::CA_KEY_AAD).ok()?;
        tracing::info!("creating the cluster CA");
        Some(Command::InitClusterCa {
            ca: ClusterCa { cert_pem, key },
        })
    }
}

impl Decider for Bootstrap {
    fn name(&self) -> &'static str {
        "bootstrap"
    }

    fn decide(&mut self, state: &StateData, tick: Tick) -> Vec<Command> {
        let n = needs(state, self.insecure);
        let mut out = Vec::new();
        if n.ca {
            out.extend(self.ca());
        }
        if n.data_key {
            out.extend(self.data_key());
        }
        if n.signing_key {
            out.extend(self.signing_key(state, tick.now_ms));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Proposal;

    #[test]
    fn a_new_cluster_needs_its_keys_in_order() {
        let mut s = StateData::default();
        assert_eq!(
            needs(&s, false),
            Needs {
                data_key: true,
                signing_key: false,
                ca: true
            }
        );
        assert!(!needs(&s, true).ca, "no CA with --insecure");
        let kek = Key::random();
        s.apply(&Proposal::new(
            0,
            Command::InitDataKey {
                wrapped: kek.wrap(&Key::random()).unwrap(),
            },
        ));
        assert_eq!(
            needs(&s, true),
            Needs {
                data_key: false,
                signing_key: true,
                ca: false
            }
        );
    }
}
