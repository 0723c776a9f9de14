//! API authentication: every public API call carries `authorization:
//! Bearer rk_<id>_<secret>`. The replicated state keeps only a SHA-256 of
//! each key's secret. Admin keys may do anything; a namespace key only
//! what concerns its namespace. Health and reflection stay open.
//!
//! Bootstrap writes the first admin key to `<data-dir>/admin-token` (0600).

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::state::{ApiKey, StateData};

pub const ADMIN_ID: &str = "admin";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Namespace(String),
}

impl Principal {
    /// May this caller manage `ns`?
    pub fn may(&self, ns: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Namespace(n) => n == ns,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("authorization: a bearer token is required (--token or ROUSE_TOKEN)")]
    Missing,
    #[error("authorization: the token is not valid")]
    Invalid,
    #[error("authorization: this key may manage only namespace {0:?}")]
    Scope(String),
    #[error("authorization: this call needs an admin key")]
    AdminOnly,
}

/// A new key: (the token to hand out, the record to store).
pub fn mint(id: &str, namespace: Option<String>, now_ms: u64) -> (String, ApiKey) {
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let token = format!("rk_{id}_{secret}");
    let key = ApiKey {
        id: id.to_string(),
        secret_sha256: sha256_hex(&secret),
        namespace,
        created_at_ms: now_ms,
        revoked: false,
        last_used_at_ms: 0,
    };
    (token, key)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The record for a token already written (e.g. the admin token file).
pub fn record_for(token: &str, namespace: Option<String>, now_ms: u64) -> Option<ApiKey> {
    let (id, secret) = parse(token)?;
    Some(ApiKey {
        id: id.to_string(),
        secret_sha256: sha256_hex(secret),
        namespace,
        created_at_ms: now_ms,
        revoked: false,
        last_used_at_ms: 0,
    })
}

fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("rk_")?;
    let (id, secret) = rest.rsplit_once('_')?;
    (!id.is_empty() && secret.len() == 64).then_some((id, secret))
}

/// When this node saw each API key used, until reported to the cluster.
#[derive(Default)]
pub struct KeyUses(parking_lot::Mutex<std::collections::BTreeMap<String, u64>>);

impl KeyUses {
    pub fn record(&self, id: &str, now_ms: u64) {
        self.0.lock().insert(id.to_string(), now_ms);
    }

    pub fn take(&self) -> std::collections::BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// Writes the keys this node saw used (every `every`, a minute by default), so that
/// `apikey list` shows when each was last used.
pub async fn report_key_uses(
    cluster: std::sync::Arc<crate::cluster::Cluster>,
    uses: std::sync::Arc<KeyUses>,
    every: std::time::Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let used = uses.take();
        if used.is_empty() {
            continue;
        }
        if let Err(e) = cluster
            .write(crate::state::Command::TouchApiKeys { used })
            .await
        {
            tracing::debug!(error = %e, "recording API key use");
        }
    }
}

/// The id of a well-formed bearer key (not checked).
pub fn key_id(bearer: &str) -> Option<&str> {
    parse(bearer).map(|(id, _)| id)
}

/// Checks a bearer token against the state.
pub fn authenticate(state: &StateData, bearer: Option<&str>) -> Result<Principal, AuthError> {
    let token = bearer.ok_or(AuthError::Missing)?;
    let (id, secret) = parse(token).ok_or(AuthError::Invalid)?;
    let key = state.api_keys.get(id).ok_or(AuthError::Invalid)?;
    let want = key.secret_sha256.as_bytes();
    let got = sha256_hex(secret);
    // Constant-time comparison of the hashes.
    let same = want.len() == got.len()
        && want
            .iter()
            .zip(got.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same || key.revoked {
        return Err(AuthError::Invalid);
    }
    Ok(match &key.namespace {
        None => Principal::Admin,
        Some(ns) => Principal::Namespace(ns.clone()),
    })
}

/// Reads `<data-dir>/admin-token`, creating it (0600) when `create`.
pub fn admin_token_file(path: &Path, create: bool) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let (token, _) = mint(ADMIN_ID, None, 0);
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
            Ok(Some(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Proposal};

    #[test]
    fn keys_scopes_and_revocation() {
        let mut s = StateData::default();
        s.apply(&Proposal::new(
            0,
            Command::CreateNamespace {
                name: "a".into(),
                env: Default::default(),
            },
        ));
        let (admin, rec) = mint("admin", None, 0);
        s.apply(&Proposal::new(0, Command::CreateApiKey { key: rec }));
        let (ns_tok, rec) = mint("k1", Some("a".into()), 0);
        s.apply(&Proposal::new(0, Command::CreateApiKey { key: rec }));
        assert_eq!(authenticate(&s, Some(&admin)), Ok(Principal::Admin));
        let p = authenticate(&s, Some(&ns_tok)).unwrap();
        assert!(p.may("a") && !p.may("b"));
        assert_eq!(authenticate(&s, None), Err(AuthError::Missing));
        assert_eq!(
            authenticate(&s, Some("rk_admin_deadbeef")),
            Err(AuthError::Invalid)
        );
        let mut forged = admin.clone();
        forged.pop();
        forged.push('0');
        if forged != admin {
            assert_eq!(authenticate(&s, Some(&forged)), Err(AuthError::Invalid));
        }
        s.apply(&Proposal::new(0, Command::RevokeApiKey { id: "k1".into() }));
        assert_eq!(authenticate(&s, Some(&ns_tok)), Err(AuthError::Invalid));
    }

    #[test]
    fn admin_token_file_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("admin-token");
        assert_eq!(admin_token_file(&p, false).unwrap(), None);
        let t = admin_token_file(&p, true).unwrap().unwrap();
        assert!(t.starts_with("rk_admin_"));
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(admin_token_file(&p, false).unwrap(), Some(t.clone()));
        assert_eq!(record_for(&t, None, 0).unwrap().id, "admin");
    }
}
