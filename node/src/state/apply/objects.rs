//! Namespaces and containers.

use std::collections::BTreeMap;

use super::super::command::Rejection;
use super::super::data::{Key, StateData};
use super::super::key::{ContainerKey, Scope};
use super::super::ledger::Event;
use super::super::types::{Container, ContainerSpec, Namespace};
use super::tx::{not_found, Applied, Tx};

impl StateData {
    pub(super) fn create_namespace(
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
                quota: Default::default(),
            },
        );
        tx.touched.push(Key::Namespace(name.to_string()));
        self.emit(
            tx,
            Event {
                kind: "namespace.created".into(),
                namespace: name.into(),
                ..Event::default()
            },
        );
        Ok(())
    }

    pub(super) fn update_namespace(
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

    pub(super) fn delete_namespace(&mut self, tx: &mut Tx<'_>, name: &str) -> Applied {
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
        if tx.v >= 2 {
            self.revoke_credentials_of(tx, name, None);
        }
        let scope = Scope::namespace(name);
        if self.secrets.remove(&scope).is_some() {
            tx.touched.push(Key::Secrets(scope));
        }
        self.emit(
            tx,
            Event {
                kind: "namespace.deleted".into(),
                namespace: name.into(),
                ..Event::default()
            },
        );
        Ok(())
    }

    // ------------------------------------------------------- containers

    pub(super) fn put_container(
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
        self.check_container_quota(tx, key, spec)?;
        let existing = self.containers.get(key);
        let created_at_ms = existing.map_or(tx.at_ms, |c| c.created_at_ms);
        let kept = existing
            .filter(|c| !c.spec.runtime_differs(spec))
            .map(|c| (c.generation, c.resolved_image.clone()));
        let desired_scale = existing.map_or(0, |c| c.desired_scale);
        let cold_starts = existing.map(|c| c.cold_starts.clone()).unwrap_or_default();
        let pending_reason = existing.and_then(|c| c.pending_reason.clone());
        let scaling = existing.map(|c| {
            (
                c.scale_reason.clone(),
                c.scaled_at_ms,
                c.scale_ups,
                c.scale_downs,
            )
        });
        let (scale_reason, scaled_at_ms, scale_ups, scale_downs) = scaling.unwrap_or_default();
        let created = existing.is_none();
        let restarts = existing.is_some() && kept.is_none();
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
                scale_reason,
                scaled_at_ms,
                scale_ups,
                scale_downs,
            },
        );
        self.emit(
            tx,
            Event {
                kind: if created {
                    "container.created"
                } else {
                    "container.updated"
                }
                .into(),
                namespace: key.namespace().into(),
                container: key.name().into(),
                message: if restarts {
                    format!("new revision {revision}: instances are replaced")
                } else {
                    format!("revision {revision}")
                },
                ..Event::default()
            },
        );
        Ok(())
    }

    pub(super) fn delete_container(&mut self, tx: &mut Tx<'_>, key: &ContainerKey) -> Applied {
        if !self.containers.contains_key(key) {
            return Err(not_found(format_args!("container {:?}", key.as_str())));
        }
        self.bump();
        self.containers.remove(key);
        if tx.v >= 2 {
            self.revoke_credentials_of(tx, key.namespace(), Some(key.name()));
        }
        let scope = Scope::container(key);
        if self.secrets.remove(&scope).is_some() {
            tx.touched.push(Key::Secrets(scope));
        }
        tx.touched.push(Key::Container(key.clone()));
        self.delete_triggers_of(tx, key);
        let gone: Vec<String> = self
            .instances_of(key.namespace(), key.name())
            .map(|i| i.id.clone())
            .collect();
        for id in gone {
            self.remove_instance(tx, &id);
        }
        self.emit(
            tx,
            Event {
                kind: "container.deleted".into(),
                namespace: key.namespace().into(),
                container: key.name().into(),
                ..Event::default()
            },
        );
        Ok(())
    }

    pub(super) fn pin_image(
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

    pub(super) fn scale(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ContainerKey,
        replicas: u32,
        reason: &Option<String>,
    ) -> Applied {
        let c = self.container_mut(key)?;
        if c.desired_scale == replicas {
            return Err(Rejection::FailedPrecondition(format!(
                "container {:?} already wants {replicas}",
                key.as_str()
            )));
        }
        let from = c.desired_scale;
        if replicas > c.desired_scale {
            c.scale_ups += 1;
        } else {
            c.scale_downs += 1;
        }
        c.desired_scale = replicas;
        c.scale_reason = reason.clone();
        c.scaled_at_ms = tx.at_ms;
        self.bump();
        tx.touched.push(Key::Container(key.clone()));
        self.emit(
            tx,
            Event {
                kind: "container.scaled".into(),
                namespace: key.namespace().into(),
                container: key.name().into(),
                reason: reason.clone().unwrap_or_default(),
                message: format!("{from} → {replicas}"),
                ..Event::default()
            },
        );
        Ok(())
    }

    pub(super) fn set_pending(
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
}
