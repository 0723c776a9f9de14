//! Triggers: created, enabled and deleted by users; ticks claimed and
//! firings recorded by the node that delivers them.

use super::super::command::Rejection;
use super::super::data::{Key, StateData};
use super::super::key::ContainerKey;
use super::super::types::{
    Firing, NodeId, Trigger, TriggerSpec, TRIGGER_CLAIMS_KEPT, TRIGGER_HISTORY,
};
use super::tx::{not_found, Applied, Tx};

fn id(namespace: &str, container: &str, name: &str) -> String {
    format!("{namespace}/{container}/{name}")
}

impl StateData {
    fn trigger_mut(&mut self, id: &str) -> Result<&mut Trigger, Rejection> {
        self.triggers
            .get_mut(id)
            .ok_or_else(|| not_found(format_args!("trigger {id:?}")))
    }

    pub(super) fn create_trigger(
        &mut self,
        tx: &mut Tx<'_>,
        namespace: &str,
        container: &str,
        name: &str,
        spec: &TriggerSpec,
    ) -> Applied {
        if !self
            .containers
            .contains_key(&ContainerKey::new(namespace, container))
        {
            return Err(not_found(format_args!(
                "container \"{namespace}/{container}\""
            )));
        }
        let id = id(namespace, container, name);
        if self.triggers.contains_key(&id) {
            return Err(Rejection::AlreadyExists(format!(
                "trigger {id:?} already exists; delete it first to change it"
            )));
        }
        self.bump();
        self.triggers.insert(
            id.clone(),
            Trigger {
                namespace: namespace.into(),
                container: container.into(),
                name: name.into(),
                spec: spec.clone(),
                enabled: true,
                created_at_ms: tx.at_ms,
                fired: 0,
                failed: 0,
                missed: 0,
                last_tick_ms: 0,
                claimed: Vec::new(),
                pending: Default::default(),
                history: Vec::new(),
            },
        );
        tx.touched.push(Key::Trigger(id));
        Ok(())
    }

    pub(super) fn delete_trigger(&mut self, tx: &mut Tx<'_>, id: &str) -> Applied {
        self.trigger_mut(id)?;
        self.bump();
        self.triggers.remove(id);
        tx.touched.push(Key::Trigger(id.to_string()));
        Ok(())
    }

    /// Deletes the triggers of a container (it is being deleted).
    pub(super) fn delete_triggers_of(&mut self, tx: &mut Tx<'_>, key: &ContainerKey) {
        let gone: Vec<String> = self
            .triggers_of(key.namespace(), key.name())
            .map(Trigger::id)
            .collect();
        for id in gone {
            self.triggers.remove(&id);
            tx.touched.push(Key::Trigger(id));
        }
    }

    pub(super) fn set_trigger_enabled(
        &mut self,
        tx: &mut Tx<'_>,
        id: &str,
        enabled: bool,
    ) -> Applied {
        let at = tx.at_ms;
        let t = self.trigger_mut(id)?;
        if t.enabled != enabled {
            t.enabled = enabled;
            if enabled {
                // Ticks while disabled are not owed: the schedule resumes now.
                t.last_tick_ms = t.last_tick_ms.max(at);
            }
        }
        self.bump();
        tx.touched.push(Key::Trigger(id.to_string()));
        Ok(())
    }

    pub(super) fn claim_tick(
        &mut self,
        tx: &mut Tx<'_>,
        id: &str,
        (tick_ms, missed, deliver): (u64, u64, bool),
        node: NodeId,
    ) -> Applied {
        let at = tx.at_ms;
        let t = self.trigger_mut(id)?;
        if !t.enabled {
            return Err(Rejection::FailedPrecondition(format!(
                "trigger {id:?} is disabled"
            )));
        }
        if tick_ms <= t.last_tick_ms {
            return Err(Rejection::FailedPrecondition(format!(
                "tick {tick_ms} of trigger {id:?} is not after its last claimed tick {}",
                t.last_tick_ms
            )));
        }
        t.last_tick_ms = tick_ms;
        t.missed += missed;
        if deliver {
            t.claimed.push(tick_ms);
            if t.claimed.len() > TRIGGER_CLAIMS_KEPT {
                t.claimed.remove(0);
            }
            t.pending.insert(tick_ms, (node, at));
        }
        self.bump();
        tx.touched.push(Key::Trigger(id.to_string()));
        Ok(())
    }

    pub(super) fn record_firing(&mut self, tx: &mut Tx<'_>, id: &str, firing: &Firing) -> Applied {
        let t = self.trigger_mut(id)?;
        t.pending.remove(&firing.scheduled_ms);
        if firing.ok {
            t.fired += 1;
        } else {
            t.failed += 1;
        }
        t.history.push(firing.clone());
        if t.history.len() > TRIGGER_HISTORY {
            t.history.remove(0);
        }
        let e = super::super::ledger::Event {
            kind: if firing.ok {
                "trigger.fired"
            } else {
                "trigger.failed"
            }
            .into(),
            namespace: t.namespace.clone(),
            container: t.container.clone(),
            node: firing.node,
            reason: t.name.clone(),
            message: format!(
                "{} after {} attempt(s), {} ms",
                firing.status, firing.attempts, firing.latency_ms
            ),
            ..Default::default()
        };
        self.bump();
        tx.touched.push(Key::Trigger(id.to_string()));
        self.emit(tx, e);
        Ok(())
    }
}
