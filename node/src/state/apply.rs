//! `apply`: one function per [`Command`], each checking the precondition
//! its variant documents before it changes anything, so a rejected command
//! leaves the state (and its digest) as it was.
//!
//! No I/O and no clock: the time is the proposal's `at_ms`, so every node
//! computes the same state from the same log.

use std::collections::BTreeMap;

use super::command::{Command, Proposal, Rejection, Response};
use super::data::{Key, StateData};
use super::key::{ContainerKey, Scope};
use super::types::{
    ApiKey, ClusterCa, Container, ContainerSpec, Instance, InstanceStatus, JoinTokenRecord,
    Namespace, NodeId, NodeRecord, NodeState, SealedSecret, SigningKey, StoredSecret, TokenRecord,
    COLD_START_HISTORY,
};

/// The context of one command: its time and the keys it changed.
struct Tx<'a> {
    at_ms: u64,
    touched: &'a mut Vec<Key>,
}

type Applied = Result<(), Rejection>;

fn not_found(what: impl std::fmt::Display) -> Rejection {
    Rejection::NotFound(format!("{what} not found"))
}

impl StateData {
    /// Applies one proposal. Pure: same state and proposal, same result.
    pub fn apply(&mut self, p: &Proposal) -> Response {
        self.apply_tracked(p, &mut Vec::new())
    }

    /// Like [`Self::apply`], and records the keys it changed in `touched`.
    pub fn apply_tracked(&mut self, p: &Proposal, touched: &mut Vec<Key>) -> Response {
        let mut tx = Tx {
            at_ms: p.at_ms,
            touched,
        };
        let rejection = self.apply_command(&mut tx, &p.command).err();
        Response {
            revision: self.revision,
            rejection,
        }
    }

    fn apply_command(&mut self, tx: &mut Tx<'_>, cmd: &Command) -> Applied {
        match cmd {
            Command::CreateNamespace { name, env } => self.create_namespace(tx, name, env),
            Command::UpdateNamespace {
                name,
                env,
                expected_revision,
            } => self.update_namespace(tx, name, env, *expected_revision),
            Command::DeleteNamespace { name } => self.delete_namespace(tx, name),
            Command::PutContainer {
                namespace,
                name,
                spec,
                expected_revision,
            } => self.put_container(
                tx,
                &ContainerKey::new(namespace, name),
                spec,
                *expected_revision,
            ),
            Command::DeleteContainer { namespace, name } => {
                self.delete_container(tx, &ContainerKey::new(namespace, name))
            }
            Command::RegisterNode { node } => self.register_node(tx, node),
            Command::RemoveNode { id } => self.remove_node(tx, *id),
            Command::PlaceInstances { add, remove } => self.place_instances(tx, add, remove),
            Command::ReportInstanceStatus { id, node, status } => {
                self.report_instance_status(tx, id, *node, status)
            }
            Command::PinImage {
                namespace,
                name,
                generation,
                image,
            } => self.pin_image(tx, &ContainerKey::new(namespace, name), *generation, image),
            Command::Scale {
                namespace,
                name,
                replicas,
            } => self.scale(tx, &ContainerKey::new(namespace, name), *replicas),
            Command::SetNodeState {
                id,
                down,
                cordoned,
                draining,
            } => self.set_node_state(tx, *id, *down, *cordoned, *draining),
            Command::SetPending {
                namespace,
                name,
                reason,
            } => self.set_pending(tx, &ContainerKey::new(namespace, name), reason),
            Command::InitDataKey { wrapped } => self.init_data_key(tx, wrapped),
            Command::SetSecrets { scope, entries } => self.set_secrets(tx, scope, entries),
            Command::DeleteSecret { scope, key } => self.delete_secret(tx, scope, key),
            Command::AddSigningKey { key } => self.add_signing_key(tx, key),
            Command::CreateToken { record } => self.create_token(tx, record),
            Command::RevokeToken { id } => self.revoke_token(tx, id),
            Command::CreateApiKey { key } => self.create_api_key(tx, key),
            Command::RevokeApiKey { id } => self.revoke_api_key(tx, id),
            Command::InitClusterCa { ca } => self.init_cluster_ca(tx, ca),
            Command::CreateJoinToken { token } => self.create_join_token(tx, token),
            Command::UseJoinToken { id, hash, node } => self.use_join_token(tx, id, hash, *node),
            Command::RotateKeys {
                from,
                kek_id,
                data_key,
                ca_key,
                secrets,
                signing_keys,
            } => self.rotate_keys(tx, from, kek_id, data_key, ca_key, secrets, signing_keys),
        }
    }

    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// New generation for the containers a secret scope feeds.
    fn regenerate(&mut self, tx: &mut Tx<'_>, scope: &Scope) {
        let rev = self.revision;
        for (key, c) in self.containers.iter_mut() {
            if scope.covers(key) {
                c.generation = rev;
                c.resolved_image = None;
                tx.touched.push(Key::Container(key.clone()));
            }
        }
    }

    fn remove_instance(&mut self, tx: &mut Tx<'_>, id: &str) {
        if self.instances.remove(id).is_some() {
            self.statuses.remove(id);
            tx.touched.push(Key::Instance(id.to_string()));
        }
    }

    fn container_mut(&mut self, key: &ContainerKey) -> Result<&mut Container, Rejection> {
        self.containers
            .get_mut(key)
            .ok_or_else(|| not_found(format_args!("container {:?}", key.as_str())))
    }

    // ------------------------------------------------------- namespaces

    fn create_namespace(
        &mut self,
        tx: &mut Tx<'_>,
        name: &str,
        env: &BTreeMap<String, String>,
    ) -> Applied {
        if self.namespaces.contains_key(name) {
            return Err(Rejection::AlreadyExists(format!(
                "namespace {name:?} already exists"
            )));
        }
        let revision = self.bump();
        self.namespaces.insert(
            name.to_string(),
            Namespace {
                name: name.to_string(),
                env: env.clone(),
                revision,
                created_at_ms: tx.at_ms,
                updated_at_ms: tx.at_ms,
            },
        );
        tx.touched.push(Key::Namespace(name.to_string()));
        Ok(())
    }

    fn update_namespace(
        &mut self,
        tx: &mut Tx<'_>,
        name: &str,
        env: &BTreeMap<String, String>,
        expected: Option<u64>,
    ) -> Applied {
        let ns = self
            .namespaces
            .get(name)
            .ok_or_else(|| not_found(format_args!("namespace {name:?}")))?;
        if let Some(r) = expected {
            if r != ns.revision {
                return Err(Rejection::Conflict(format!(
                    "namespace {name:?} changed (revision {} != {r})",
                    ns.revision
                )));
            }
        }
        let env_changed = &ns.env != env;
        let revision = self.bump();
        if let Some(ns) = self.namespaces.get_mut(name) {
            ns.env = env.clone();
            ns.revision = revision;
            ns.updated_at_ms = tx.at_ms;
        }
        tx.touched.push(Key::Namespace(name.to_string()));
        if env_changed {
            // Instances carry the namespace's env: start a new generation.
            for (key, c) in self
                .containers
                .iter_mut()
                .filter(|(_, c)| c.namespace == name)
            {
                c.generation = revision;
                c.resolved_image = None;
                tx.touched.push(Key::Container(key.clone()));
            }
        }
        Ok(())
    }

    fn delete_namespace(&mut self, tx: &mut Tx<'_>, name: &str) -> Applied {
        if !self.namespaces.contains_key(name) {
            return Err(not_found(format_args!("namespace {name:?}")));
        }
        let held = self.containers_in(name).count();
        if held > 0 {
            return Err(Rejection::FailedPrecondition(format!(
                "namespace {name:?} still holds {held} container(s); delete them first"
            )));
        }
        self.bump();
        self.namespaces.remove(name);
        tx.touched.push(Key::Namespace(name.to_string()));
        let scope = Scope::namespace(name);
        if self.secrets.remove(&scope).is_some() {
            tx.touched.push(Key::Secrets(scope));
        }
        Ok(())
    }

    // ------------------------------------------------------- containers

    fn put_container(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ContainerKey,
        spec: &ContainerSpec,
        expected: Option<u64>,
    ) -> Applied {
        if !self.namespaces.contains_key(key.namespace()) {
            return Err(not_found(format_args!("namespace {:?}", key.namespace())));
        }
        let k = key.as_str();
        let existing = self.containers.get(key);
        match (expected, existing) {
            (Some(0), Some(_)) => {
                return Err(Rejection::Conflict(format!(
                    "container {k:?} was created concurrently"
                )))
            }
            (Some(r), Some(c)) if r != c.revision => {
                return Err(Rejection::Conflict(format!(
                    "container {k:?} changed (revision {} != {r})",
                    c.revision
                )))
            }
            (Some(r), None) if r != 0 => {
                return Err(Rejection::Conflict(format!(
                    "container {k:?} was deleted concurrently"
                )))
            }
            _ => {}
        }
        let created_at_ms = existing.map_or(tx.at_ms, |c| c.created_at_ms);
        let kept = existing
            .filter(|c| !c.spec.runtime_differs(spec))
            .map(|c| (c.generation, c.resolved_image.clone()));
        let desired_scale = existing.map_or(0, |c| c.desired_scale);
        let cold_starts = existing.map(|c| c.cold_starts.clone()).unwrap_or_default();
        let pending_reason = existing.and_then(|c| c.pending_reason.clone());
        let revision = self.bump();
        let (generation, resolved_image) = kept.unwrap_or((revision, None));
        tx.touched.push(Key::Container(key.clone()));
        self.containers.insert(
            key.clone(),
            Container {
                namespace: key.namespace().to_string(),
                name: key.name().to_string(),
                spec: spec.clone(),
                revision,
                created_at_ms,
                updated_at_ms: tx.at_ms,
                generation,
                resolved_image,
                desired_scale,
                cold_starts,
                pending_reason,
            },
        );
        Ok(())
    }

    fn delete_container(&mut self, tx: &mut Tx<'_>, key: &ContainerKey) -> Applied {
        if !self.containers.contains_key(key) {
            return Err(not_found(format_args!("container {:?}", key.as_str())));
        }
        self.bump();
        self.containers.remove(key);
        let scope = Scope::container(key);
        if self.secrets.remove(&scope).is_some() {
            tx.touched.push(Key::Secrets(scope));
        }
        tx.touched.push(Key::Container(key.clone()));
        let gone: Vec<String> = self
            .instances_of(key.namespace(), key.name())
            .map(|i| i.id.clone())
            .collect();
        for id in gone {
            self.remove_instance(tx, &id);
        }
        Ok(())
    }

    fn pin_image(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ContainerKey,
        generation: u64,
        image: &str,
    ) -> Applied {
        let c = self.container_mut(key)?;
        if c.generation != generation || c.resolved_image.is_some() {
            return Err(Rejection::Conflict(format!(
                "container {:?} generation {generation} is gone or pinned",
                key.as_str()
            )));
        }
        c.resolved_image = Some(image.to_string());
        self.bump();
        tx.touched.push(Key::Container(key.clone()));
        Ok(())
    }

    fn scale(&mut self, tx: &mut Tx<'_>, key: &ContainerKey, replicas: u32) -> Applied {
        let c = self.container_mut(key)?;
        if c.desired_scale == replicas {
            return Err(Rejection::FailedPrecondition(format!(
                "container {:?} already wants {replicas}",
                key.as_str()
            )));
        }
        c.desired_scale = replicas;
        self.bump();
        tx.touched.push(Key::Container(key.clone()));
        Ok(())
    }

    fn set_pending(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ContainerKey,
        reason: &Option<String>,
    ) -> Applied {
        let c = self.container_mut(key)?;
        if &c.pending_reason == reason {
            return Err(Rejection::FailedPrecondition(
                "pending reason unchanged".into(),
            ));
        }
        c.pending_reason = reason.clone();
        self.bump();
        tx.touched.push(Key::Container(key.clone()));
        Ok(())
    }

    // ------------------------------------------------- nodes, instances

    fn register_node(&mut self, tx: &mut Tx<'_>, node: &NodeRecord) -> Applied {
        self.bump();
        self.nodes.insert(node.id, node.clone());
        tx.touched.push(Key::Node(node.id));
        Ok(())
    }

    fn remove_node(&mut self, tx: &mut Tx<'_>, id: NodeId) -> Applied {
        self.bump();
        if let Some(n) = self.nodes.get(&id).filter(|n| !n.cert_sha256.is_empty()) {
            self.revoked_certs.insert(n.cert_sha256.clone());
            tx.touched.push(Key::RevokedCerts);
        }
        self.nodes.remove(&id);
        self.node_states.remove(&id);
        tx.touched.push(Key::Node(id));
        let gone: Vec<String> = self
            .instances
            .values()
            .filter(|i| i.node == id)
            .map(|i| i.id.clone())
            .collect();
        for iid in gone {
            self.remove_instance(tx, &iid);
        }
        Ok(())
    }

    fn set_node_state(
        &mut self,
        tx: &mut Tx<'_>,
        id: NodeId,
        down: Option<bool>,
        cordoned: Option<bool>,
        draining: Option<bool>,
    ) -> Applied {
        if !self.nodes.contains_key(&id) {
            return Err(Rejection::NotFound(format!("node {id} is not registered")));
        }
        let cur = self.node_state(id);
        let next = NodeState {
            down: down.unwrap_or(cur.down),
            cordoned: cordoned.unwrap_or(cur.cordoned),
            draining: draining.unwrap_or(cur.draining),
            since_ms: tx.at_ms,
        };
        if (next.down, next.cordoned, next.draining) == (cur.down, cur.cordoned, cur.draining) {
            return Err(Rejection::FailedPrecondition(format!(
                "node {id} is already in that state"
            )));
        }
        self.bump();
        self.node_states.insert(id, next);
        tx.touched.push(Key::Node(id));
        Ok(())
    }

    fn place_instances(&mut self, tx: &mut Tx<'_>, add: &[Instance], remove: &[String]) -> Applied {
        let before = tx.touched.len();
        for id in remove {
            self.remove_instance(tx, id);
        }
        for inst in add {
            let fits = self
                .container(&inst.namespace, &inst.container)
                .is_some_and(|c| c.generation == inst.generation)
                && self.nodes.contains_key(&inst.node)
                && !self.instances.contains_key(&inst.id);
            if fits {
                self.instances.insert(inst.id.clone(), inst.clone());
                tx.touched.push(Key::Instance(inst.id.clone()));
            }
        }
        if tx.touched.len() == before {
            return Err(Rejection::FailedPrecondition(
                "placement plan is stale: nothing in it applies".into(),
            ));
        }
        self.bump();
        Ok(())
    }

    fn report_instance_status(
        &mut self,
        tx: &mut Tx<'_>,
        id: &str,
        node: NodeId,
        status: &InstanceStatus,
    ) -> Applied {
        let key = match self.instances.get(id) {
            Some(i) if i.node == node => ContainerKey::new(&i.namespace, &i.container),
            _ => {
                return Err(Rejection::NotFound(format!(
                    "instance {id:?} is not placed on node {node}"
                )))
            }
        };
        self.bump();
        let previous = self.statuses.insert(id.to_string(), status.clone());
        tx.touched.push(Key::Instance(id.to_string()));
        let new_cold_start = status
            .cold_start
            .filter(|c| previous.and_then(|p| p.cold_start) != Some(*c));
        if let (Some(cs), Some(c)) = (new_cold_start, self.containers.get_mut(&key)) {
            c.cold_starts.push(cs);
            if c.cold_starts.len() > COLD_START_HISTORY {
                c.cold_starts.remove(0);
            }
            tx.touched.push(Key::Container(key));
        }
        Ok(())
    }

    // --------------------------------------------------------- secrets

    fn init_data_key(&mut self, tx: &mut Tx<'_>, wrapped: &crate::secrets::Envelope) -> Applied {
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

    fn set_secrets(
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

    fn delete_secret(&mut self, tx: &mut Tx<'_>, scope: &Scope, key: &str) -> Applied {
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

    fn add_signing_key(&mut self, tx: &mut Tx<'_>, key: &SigningKey) -> Applied {
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

    fn create_token(&mut self, tx: &mut Tx<'_>, record: &TokenRecord) -> Applied {
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
        self.bump();
        self.tokens.insert(record.id.clone(), record.clone());
        tx.touched.push(Key::Token(record.id.clone()));
        Ok(())
    }

    fn revoke_token(&mut self, tx: &mut Tx<'_>, id: &str) -> Applied {
        let t = self
            .tokens
            .get_mut(id)
            .ok_or_else(|| not_found(format_args!("token {id:?}")))?;
        t.revoked = true;
        self.bump();
        tx.touched.push(Key::Token(id.to_string()));
        Ok(())
    }

    fn create_api_key(&mut self, tx: &mut Tx<'_>, key: &ApiKey) -> Applied {
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

    fn revoke_api_key(&mut self, tx: &mut Tx<'_>, id: &str) -> Applied {
        let k = self
            .api_keys
            .get_mut(id)
            .ok_or_else(|| not_found(format_args!("api key {id:?}")))?;
        k.revoked = true;
        self.bump();
        tx.touched.push(Key::ApiKey(id.to_string()));
        Ok(())
    }

    fn init_cluster_ca(&mut self, tx: &mut Tx<'_>, ca: &ClusterCa) -> Applied {
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

    fn create_join_token(&mut self, tx: &mut Tx<'_>, token: &JoinTokenRecord) -> Applied {
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

    fn use_join_token(&mut self, tx: &mut Tx<'_>, id: &str, hash: &str, node: NodeId) -> Applied {
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
        match t.used_by {
            Some(n) if n != node => Err(refused(&format!(
                "the token was already used (by node {n}); join tokens are good for one node"
            ))),
            Some(_) => Ok(()),
            None => {
                t.used_by = Some(node);
                self.bump();
                tx.touched.push(Key::JoinToken(id.to_string()));
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rotate_keys(
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
        Ok(())
    }
}
