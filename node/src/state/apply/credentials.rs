//! Secrets, signing keys, tokens, API keys, the CA, join tokens and key
//! rotation.

use std::collections::BTreeMap;

use super::super::command::Rejection;
use super::super::data::{Key, StateData};
use super::super::key::Scope;
use super::super::types::{
    ApiKey, ClusterCa, IssuedCert, JoinTokenRecord, NodeId, SealedSecret, SigningKey, StoredSecret,
    TokenRecord,
};
use super::tx::{not_found, Applied, Tx};

impl StateData {
    pub(super) fn init_data_key(
        &mut self,
        tx: &mut Tx<'_>,
        wrapped: &crate::secrets::Envelope,
    ) -> Applied {
        if self.data_key.is_some() {
            return Err(Rejection::AlreadyExists(
                "the cluster data key is already set".into(),
            ));
        }
        self.bump();
        self.data_key = Some(wrapped.clone());
        tx.touched.push(Key::DataKey);
        Ok(())
    }

    pub(super) fn set_secrets(
        &mut self,
        tx: &mut Tx<'_>,
        scope: &Scope,
        entries: &BTreeMap<String, SealedSecret>,
    ) -> Applied {
        let exists = match scope.container_key() {
            Some(c) => self.containers.contains_key(&c),
            None => self.namespaces.contains_key(scope.as_str()),
        };
        if !exists {
            return Err(not_found(format_args!("{:?}", scope.as_str())));
        }
        let adding = entries
            .keys()
            .filter(|k| !self.secrets.get(scope).is_some_and(|m| m.contains_key(*k)))
            .count();
        self.check_secret_quota(tx, scope, adding)?;
        self.bump();
        let slot = self.secrets.entry(scope.clone()).or_default();
        for (k, v) in entries {
            let version = slot.get(k).map_or(1, |s| s.version + 1);
            slot.insert(
                k.clone(),
                StoredSecret {
                    sealed: v.sealed.clone(),
                    fingerprint: v.fingerprint.clone(),
                    version,
                    updated_at_ms: tx.at_ms,
                },
            );
        }
        tx.touched.push(Key::Secrets(scope.clone()));
        // Instances carry their secrets: start a new generation.
        self.regenerate(tx, scope);
        Ok(())
    }

    pub(super) fn delete_secret(&mut self, tx: &mut Tx<'_>, scope: &Scope, key: &str) -> Applied {
        let removed = self
            .secrets
            .get_mut(scope)
            .and_then(|m| m.remove(key))
            .is_some();
        if !removed {
            return Err(Rejection::NotFound(format!(
                "secret {key:?} not found in {:?}",
                scope.as_str()
            )));
        }
        if self.secrets.get(scope).is_some_and(|m| m.is_empty()) {
            self.secrets.remove(scope);
        }
        self.bump();
        tx.touched.push(Key::Secrets(scope.clone()));
        self.regenerate(tx, scope);
        Ok(())
    }

    // ------------------------------------------------- tokens and keys

    pub(super) fn add_signing_key(&mut self, tx: &mut Tx<'_>, key: &SigningKey) -> Applied {
        if self.signing_keys.iter().any(|k| k.kid == key.kid) {
            return Err(Rejection::AlreadyExists(format!(
                "signing key {:?} exists",
                key.kid
            )));
        }
        self.bump();
        self.signing_keys.push(key.clone());
        tx.touched.push(Key::SigningKeys);
        Ok(())
    }

    pub(super) fn create_token(&mut self, tx: &mut Tx<'_>, record: &TokenRecord) -> Applied {
        if !self.namespaces.contains_key(&record.namespace) {
            return Err(not_found(format_args!("namespace {:?}", record.namespace)));
        }
        if let Some(c) = &record.container {
            if self.container(&record.namespace, c).is_none() {
                return Err(not_found(format_args!(
                    "container \"{}/{c}\"",
                    record.namespace
                )));
            }
        }
        if self.tokens.contains_key(&record.id) {
            return Err(Rejection::AlreadyExists(format!(
                "token {:?} exists",
                record.id
            )));
        }
        self.check_token_quota(tx, &record.namespace)?;
        self.bump();
        self.tokens.insert(record.id.clone(), record.clone());
        tx.touched.push(Key::Token(record.id.clone()));
        Ok(())
    }

    pub(super) fn revoke_token(&mut self, tx: &mut Tx<'_>, id: &str) -> Applied {
        let t = self
            .tokens
            .get_mut(id)
            .ok_or_else(|| not_found(format_args!("token {id:?}")))?;
        t.revoked = true;
        self.bump();
        tx.touched.push(Key::Token(id.to_string()));
        Ok(())
    }

    pub(super) fn create_api_key(&mut self, tx: &mut Tx<'_>, key: &ApiKey) -> Applied {
        if self.api_keys.contains_key(&key.id) {
            return Err(Rejection::AlreadyExists(format!(
                "api key {:?} exists",
                key.id
            )));
        }
        if let Some(ns) = &key.namespace {
            if !self.namespaces.contains_key(ns) {
                return Err(not_found(format_args!("namespace {ns:?}")));
            }
        }
        self.bump();
        self.api_keys.insert(key.id.clone(), key.clone());
        tx.touched.push(Key::ApiKey(key.id.clone()));
        Ok(())
    }

    pub(super) fn revoke_api_key(&mut self, tx: &mut Tx<'_>, id: &str) -> Applied {
        let admin = |k: &ApiKey| k.namespace.is_none() && !k.revoked;
        let target_is_admin = self.api_keys.get(id).is_some_and(admin);
        if tx.v >= 2 && target_is_admin && self.api_keys.values().filter(|k| admin(k)).count() == 1
        {
            return Err(Rejection::FailedPrecondition(format!(
                "api key {id:?} is the last admin key; create another (rouse apikey create --admin) before revoking it"
            )));
        }
        let k = self
            .api_keys
            .get_mut(id)
            .ok_or_else(|| not_found(format_args!("api key {id:?}")))?;
        k.revoked = true;
        self.bump();
        tx.touched.push(Key::ApiKey(id.to_string()));
        Ok(())
    }

    pub(super) fn touch_api_keys(
        &mut self,
        tx: &mut Tx<'_>,
        used: &BTreeMap<String, u64>,
    ) -> Applied {
        let mut changed = false;
        for (id, at) in used {
            if let Some(k) = self.api_keys.get_mut(id) {
                if *at > k.last_used_at_ms {
                    k.last_used_at_ms = *at;
                    tx.touched.push(Key::ApiKey(id.clone()));
                    changed = true;
                }
            }
        }
        if changed {
            self.bump();
        }
        Ok(())
    }

    /// Revokes what was issued for a namespace (`container` None) or one of
    /// its containers: API keys of the namespace, tokens of the scope. A
    /// namespace or container created again under the same name starts
    /// with none.
    pub(super) fn revoke_credentials_of(
        &mut self,
        tx: &mut Tx<'_>,
        namespace: &str,
        container: Option<&str>,
    ) {
        if container.is_none() {
            for k in self.api_keys.values_mut() {
                if k.namespace.as_deref() == Some(namespace) && !k.revoked {
                    k.revoked = true;
                    tx.touched.push(Key::ApiKey(k.id.clone()));
                }
            }
        }
        for t in self.tokens.values_mut() {
            let covered = t.namespace == namespace
                && (container.is_none() || t.container.as_deref() == container);
            if covered && !t.revoked {
                t.revoked = true;
                tx.touched.push(Key::Token(t.id.clone()));
            }
        }
    }

    pub(super) fn init_cluster_ca(&mut self, tx: &mut Tx<'_>, ca: &ClusterCa) -> Applied {
        if self.cluster_ca.is_some() {
            return Err(Rejection::AlreadyExists(
                "the cluster CA is already set".into(),
            ));
        }
        self.bump();
        self.cluster_ca = Some(ca.clone());
        tx.touched.push(Key::ClusterCa);
        Ok(())
    }

    pub(super) fn create_join_token(
        &mut self,
        tx: &mut Tx<'_>,
        token: &JoinTokenRecord,
    ) -> Applied {
        if self.join_tokens.contains_key(&token.id) {
            return Err(Rejection::AlreadyExists(format!(
                "join token {:?} already exists",
                token.id
            )));
        }
        self.bump();
        self.join_tokens.insert(token.id.clone(), token.clone());
        tx.touched.push(Key::JoinToken(token.id.clone()));
        Ok(())
    }

    pub(super) fn use_join_token(
        &mut self,
        tx: &mut Tx<'_>,
        id: &str,
        hash: &str,
        node: NodeId,
        issued: Option<&IssuedCert>,
    ) -> Applied {
        let refused = |why: &str| Rejection::FailedPrecondition(format!("join_token: {why}"));
        let at_ms = tx.at_ms;
        let t = self
            .join_tokens
            .get_mut(id)
            .ok_or_else(|| refused("unknown token"))?;
        if !crate::secrets::constant_time_eq(t.hash.as_bytes(), hash.as_bytes()) {
            return Err(refused("unknown token"));
        }
        if at_ms >= t.expires_ms {
            return Err(refused(
                "the token has expired; mint a new one with `rouse cluster join-token`",
            ));
        }
        match (t.used_by, issued) {
            (Some(n), _) if n != node => Err(refused(&format!(
                "the token was already used (by node {n}); join tokens are good for one node"
            ))),
            (Some(_), Some(_)) => Err(refused(
                "the token was already used; join tokens are spent once",
            )),
            (Some(_), None) => Ok(()),
            (None, issued) => {
                t.used_by = Some(node);
                t.issued = issued.cloned();
                self.bump();
                tx.touched.push(Key::JoinToken(id.to_string()));
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn rotate_keys(
        &mut self,
        tx: &mut Tx<'_>,
        from: &crate::secrets::Envelope,
        kek_id: &str,
        data_key: &crate::secrets::Envelope,
        ca_key: &Option<crate::secrets::Envelope>,
        secrets: &BTreeMap<Scope, BTreeMap<String, StoredSecret>>,
        signing_keys: &[SigningKey],
    ) -> Applied {
        let conflict = |what: &str| {
            Rejection::Conflict(format!(
                "{what} changed while the keys were rotated; rotate again"
            ))
        };
        if self.data_key.as_ref() != Some(from) {
            return Err(conflict("the data key"));
        }
        let versions = |m: &BTreeMap<Scope, BTreeMap<String, StoredSecret>>| {
            m.iter()
                .flat_map(|(scope, keys)| {
                    keys.iter()
                        .map(move |(k, v)| (scope.clone(), k.clone(), v.version))
                })
                .collect::<Vec<_>>()
        };
        if versions(&self.secrets) != versions(secrets) {
            return Err(conflict("a secret"));
        }
        let kids = |v: &[SigningKey]| v.iter().map(|k| k.kid.clone()).collect::<Vec<_>>();
        if kids(&self.signing_keys) != kids(signing_keys) {
            return Err(conflict("the signing keys"));
        }
        if self.cluster_ca.is_some() != ca_key.is_some() {
            return Err(conflict("the cluster CA"));
        }
        self.bump();
        self.data_key = Some(data_key.clone());
        self.kek_id = Some(kek_id.to_string());
        if let (Some(ca), Some(k)) = (self.cluster_ca.as_mut(), ca_key) {
            ca.key = k.clone();
        }
        for scope in self.secrets.keys() {
            tx.touched.push(Key::Secrets(scope.clone()));
        }
        self.secrets = secrets.clone();
        self.signing_keys = signing_keys.to_vec();
        tx.touched
            .extend([Key::DataKey, Key::KekId, Key::ClusterCa, Key::SigningKeys]);
        self.emit(
            tx,
            super::super::ledger::Event {
                kind: "keys.rotated".into(),
                message: format!("master key {kek_id}"),
                ..Default::default()
            },
        );
        Ok(())
    }
}
