//! The event stream: commands record what they did as [`Event`]s, numbered
//! in order and kept bounded (the oldest leave first). Derived from the log
//! as it is applied, so every node holds the same stream; entries written
//! before command version 4 record none.

use super::super::data::{Key, StateData};
use super::super::ledger::{Event, EVENTS_KEPT};
use super::super::types::{Instance, InstanceState, InstanceStatus};
use super::tx::Tx;

impl StateData {
    /// Records `e` (its `seq` and `at_ms` are set here).
    pub(super) fn emit(&mut self, tx: &mut Tx<'_>, mut e: Event) {
        if tx.v < 4 {
            return;
        }
        e.seq = self.events.back().map_or(1, |l| l.seq + 1);
        e.at_ms = tx.at_ms;
        tx.touched.push(Key::Event(e.seq));
        self.events.push_back(e);
        while self.events.len() > EVENTS_KEPT {
            if let Some(old) = self.events.pop_front() {
                tx.touched.push(Key::Event(old.seq));
            }
        }
    }

    /// An event about an instance.
    pub(super) fn emit_instance(&mut self, tx: &mut Tx<'_>, kind: &str, i: &Instance, e: Event) {
        self.emit(
            tx,
            Event {
                kind: kind.to_string(),
                namespace: i.namespace.clone(),
                container: i.container.clone(),
                instance: i.id.clone(),
                node: i.node,
                ..e
            },
        );
    }

    /// The event a status report makes, when the state changed (a crash
    /// also when it crashed again).
    pub(super) fn emit_status(
        &mut self,
        tx: &mut Tx<'_>,
        i: &Instance,
        previous: Option<&InstanceStatus>,
        now: &InstanceStatus,
    ) {
        let before = previous.map(|p| p.state);
        let again = previous.is_some_and(|p| p.restarts != now.restarts);
        if before == Some(now.state) && !(now.state == InstanceState::Crashed && again) {
            return;
        }
        let kind = match (before, now.state) {
            (Some(InstanceState::Suspended), InstanceState::Ready) => "resumed",
            (_, InstanceState::Pending) => return,
            (_, InstanceState::Pulling) => "pulling",
            (_, InstanceState::Starting) => "starting",
            (_, InstanceState::Ready) => "ready",
            (_, InstanceState::Crashed) => "crashed",
            (_, InstanceState::Failed) => "failed",
            (_, InstanceState::Stopping) => "stopping",
            (_, InstanceState::Suspended) => "suspended",
        };
        let reason = match now.state {
            InstanceState::Crashed if now.oom_killed => "oom",
            InstanceState::Crashed => "exit",
            _ => "",
        };
        let failed = matches!(now.state, InstanceState::Crashed | InstanceState::Failed);
        self.emit_instance(
            tx,
            &format!("instance.{kind}"),
            i,
            Event {
                reason: reason.into(),
                message: if failed {
                    now.message.clone()
                } else {
                    String::new()
                },
                exit_code: now.exit_code.filter(|_| failed),
                ..Event::default()
            },
        );
    }
}
