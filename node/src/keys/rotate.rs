//! Rotation of the master key (KEK) and the cluster data key.
//!
//! ```text
//!  rotate (any node, admin) ─▶ new KEK, new data key; re-seal secrets, signing keys, CA key
//!      ─▶ new KEK saved to <master-key-file>.next ─▶ RotateKeys through Raft ─▶ .next becomes the file
//!  every node ─▶ state names a KEK id it does not hold ─▶ FetchMasterKey from a peer (mTLS) ─▶ file
//! ```
//!
//! The new master key is on disk before anything in Raft depends on it, so
//! a crash at any point loses nothing: a node finds the key in its `.next`
//! file or on a peer. A `.next` file whose key the state never named (a
//! rotation that did not commit) is ignored and overwritten by the next one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::ring::{KeyError, Keyring};
use crate::cluster::{Cluster, ClusterError};
use crate::secrets::Key;
use crate::state::{Command, Rejection};

/// What a rotation re-sealed.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub master_key_id: String,
    pub secrets: u32,
    pub signing_keys: u32,
}

/// Where a rotation keeps the new master key until Raft has it.
fn pending_path(keys: &Keyring) -> PathBuf {
    PathBuf::from(format!("{}.next", keys.master_key_file().display()))
}

/// One rotation at a time on a node: they share the `.next` file.
static ROTATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Rotates both keys; retried when a secret changes meanwhile.
/// `insecure`: peer traffic is plain, so a new key could not be handed over.
pub async fn rotate(
    cluster: &Cluster,
    keys: &Keyring,
    insecure: bool,
) -> Result<Rotated, KeyError> {
    let _one_at_a_time = ROTATION.lock().await;
    if insecure {
        return Err(KeyError::Precondition(
            "this cluster's peer traffic is plain (--insecure): the new master key would cross the network in the clear; rotate on a cluster with mutual TLS".into(),
        ));
    }
    for _ in 0..5 {
        match rotate_once(cluster, keys).await {
            Err(KeyError::Cluster(ClusterError::Rejected(Rejection::Conflict(m)))) => {
                tracing::info!(reason = %m, "key rotation raced a change; trying again");
            }
            r => return r,
        }
    }
    Err(KeyError::Precondition(
        "secrets kept changing during the rotation; try again".into(),
    ))
}

async fn rotate_once(cluster: &Cluster, keys: &Keyring) -> Result<Rotated, KeyError> {
    let old_kek = keys
        .kek()
        .map_err(|e| KeyError::Precondition(e.to_string()))?;
    let (old_dk, from, mut secrets, mut signing_keys, ca) = {
        let sm = cluster.sm.read();
        let d = &sm.data;
        (
            keys.data_key(d)?,
            d.data_key.clone().ok_or(KeyError::NoDataKey)?,
            d.secrets.clone(),
            d.signing_keys.clone(),
            d.cluster_ca.clone(),
        )
    };
    let kek = Key::random();
    let dk = Key::random();
    let mut n_secrets = 0u32;
    for (scope, keys) in secrets.iter_mut() {
        for (name, s) in keys.iter_mut() {
            let aad = crate::secrets::aad(scope.as_str(), name);
            let plain = old_dk.open(&s.sealed, &aad)?;
            s.sealed = dk.seal(&plain, &aad)?;
            s.fingerprint = dk.fingerprint(&String::from_utf8_lossy(&plain));
            n_secrets += 1;
        }
    }
    for k in signing_keys.iter_mut() {
        let aad = super::signing::signing_key_aad(&k.kid);
        let plain = old_dk.open(&k.sealed_private, &aad)?;
        k.sealed_private = dk.seal(&plain, &aad)?;
    }
    let ca_key = match &ca {
        Some(ca) => {
            let plain = old_kek.open(&ca.key, crate::tls::CA_KEY_AAD)?;
            Some(kek.seal(&plain, crate::tls::CA_KEY_AAD)?)
        }
        None => None,
    };
    // The new master key is on disk before Raft holds anything it wraps.
    let pending = pending_path(keys);
    kek.save(&pending).map_err(|e| {
        KeyError::Precondition(format!(
            "master_key_file: cannot write {}: {e}",
            pending.display()
        ))
    })?;
    let cmd = Command::RotateKeys {
        from,
        kek_id: kek.id(),
        data_key: kek.wrap(&dk)?,
        ca_key,
        secrets,
        signing_keys: signing_keys.clone(),
    };
    match cluster.write(cmd).await {
        Ok(_) => {}
        Err(e @ ClusterError::Rejected(_)) => {
            let _ = std::fs::remove_file(&pending);
            return Err(e.into());
        }
        // Maybe committed: the key sync loop settles it from the .next file.
        Err(e) => return Err(e.into()),
    }
    promote(keys, &kek).map_err(|e| {
        KeyError::Precondition(format!(
            "master_key_file: the keys were rotated but {} could not be replaced ({e}); the new key is in {}",
            keys.master_key_file().display(),
            pending.display()
        ))
    })?;
    tracing::info!(master_key = %kek.id(), secrets = n_secrets, "rotated the master key and the data key");
    Ok(Rotated {
        master_key_id: kek.id(),
        secrets: n_secrets,
        signing_keys: u32::try_from(signing_keys.len()).unwrap_or(u32::MAX),
    })
}

/// Makes `kek` this node's master key: in memory first (so peers can fetch
/// it from here at once), then in the master key file, then the pending
/// file goes. Idempotent: the rotation and the key sync loop may both call it.
fn promote(keys: &Keyring, kek: &Key) -> std::io::Result<()> {
    keys.set_kek(kek.clone());
    let file = keys.master_key_file();
    let on_disk = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| Key::from_hex(&t).ok());
    if on_disk.is_none_or(|k| k.id() != kek.id()) {
        kek.save(file)?;
    }
    let _ = std::fs::remove_file(pending_path(keys));
    Ok(())
}

/// Runs on every node: when the state names a master key this node does
/// not hold (a rotation it missed, or one cut short here), it takes the key
/// from its `.next` file or fetches it from a peer over mutual TLS.
pub async fn run_key_sync(cluster: Arc<Cluster>, keys: Arc<Keyring>) {
    let mut seen = 0;
    let mut behind = false;
    loop {
        // Retry soon while this node lacks the current key.
        let wait = if behind { 300 } else { 2000 };
        cluster
            .applied_change(&mut seen, Duration::from_millis(wait))
            .await;
        behind = true;
        let Some(want) = cluster.sm.read().data.kek_id.clone() else {
            behind = false;
            continue;
        };
        // (A `.next` file of a rotation in flight here is left alone.)
        let pending = pending_path(&keys);
        if keys.kek().is_ok_and(|k| k.id() == want) {
            behind = false;
            continue;
        }
        if let Some(k) = std::fs::read_to_string(&pending)
            .ok()
            .and_then(|t| Key::from_hex(&t).ok())
            .filter(|k| k.id() == want)
        {
            match promote(&keys, &k) {
                Ok(()) => {
                    tracing::info!(master_key = %want, "took the rotated master key from an interrupted rotation")
                }
                Err(e) => tracing::error!(error = %e, "cannot install the rotated master key"),
            }
            continue;
        }
        match fetch(&cluster, &want).await {
            Some(k) => match k.save(keys.master_key_file()) {
                Ok(()) => {
                    keys.set_kek(k);
                    tracing::info!(master_key = %want, "fetched the cluster's rotated master key from a peer");
                }
                Err(e) => {
                    tracing::error!(error = %e, path = %keys.master_key_file().display(), "cannot write the rotated master key")
                }
            },
            None => {
                tracing::warn!(master_key = %want, "the cluster rotated its master key and no peer has handed it over yet; retrying")
            }
        }
    }
}

async fn fetch(cluster: &Cluster, want: &str) -> Option<Key> {
    let peers: Vec<String> = {
        let sm = cluster.sm.read();
        sm.data
            .nodes
            .values()
            .filter(|n| n.id != cluster.id)
            .map(|n| n.api_addr.clone())
            .collect()
    };
    for addr in peers {
        let Ok(mut c) = cluster.pool.client(&addr) else {
            continue;
        };
        let mut req = tonic::Request::new(rouse_proto::peer::FetchMasterKeyRequest {});
        req.set_timeout(Duration::from_secs(3));
        let Ok(r) = c.fetch_master_key(req).await else {
            continue;
        };
        if let Ok(k) = Key::from_hex(&r.into_inner().key) {
            if k.id() == want {
                return Some(k);
            }
        }
    }
    None
}
