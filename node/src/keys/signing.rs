//! Token-signing keys: Ed25519 pairs whose private half the replicated
//! state holds sealed under the data key. The newest signs; all verify.

use super::ring::{KeyError, Keyring};
use crate::cluster::{now_ms, Cluster};
use crate::state::{Command, SigningKey};

/// Associated data a signing key's private half is sealed under.
pub fn signing_key_aad(kid: &str) -> String {
    format!("rouse/signing-key/{kid}")
}

/// Makes a new token-signing key (the first one, or a rotation).
pub async fn add_signing_key(cluster: &Cluster, keys: &Keyring) -> Result<String, KeyError> {
    let dk = keys.data_key(&cluster.sm.read().data)?;
    let (private, public) = crate::tokens::generate()?;
    let kid = format!("k{}", hex::encode(rand::random::<[u8; 6]>()));
    let sealed_private = dk.seal(&private, &signing_key_aad(&kid))?;
    let key = SigningKey {
        kid: kid.clone(),
        public_hex: hex::encode(public),
        sealed_private,
        created_at_ms: now_ms(),
    };
    cluster.write(Command::AddSigningKey { key }).await?;
    tracing::info!(%kid, "added a token-signing key");
    Ok(kid)
}

/// The newest signing key's id and private half, opened for signing.
pub fn current_signer(
    state: &crate::state::StateData,
    keys: &Keyring,
) -> Result<(String, Vec<u8>), KeyError> {
    let key = state.signing_keys.last().ok_or_else(|| {
        KeyError::Precondition("no token-signing key yet; retry in a moment".into())
    })?;
    let dk = keys.data_key(state)?;
    let private = dk
        .open(&key.sealed_private, &signing_key_aad(&key.kid))
        .map_err(|e| KeyError::Precondition(format!("signing key: {e}")))?;
    Ok((key.kid.clone(), private))
}
