//! The context one command is applied in, and the helpers commands share.

use super::super::command::Rejection;
use super::super::data::{Key, StateData};
use super::super::key::{ContainerKey, Scope};
use super::super::types::Container;

/// The context of one command: its time and the keys it changed.
pub(super) struct Tx<'a> {
    pub at_ms: u64,
    /// The entry's [`super::super::command::COMMAND_VERSION`]: which rules apply.
    pub v: u32,
    pub touched: &'a mut Vec<Key>,
}

pub(super) type Applied = Result<(), Rejection>;

pub(super) fn not_found(what: impl std::fmt::Display) -> Rejection {
    Rejection::NotFound(format!("{what} not found"))
}

impl StateData {
    pub(super) fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// New generation for the containers a secret scope feeds.
    pub(super) fn regenerate(&mut self, tx: &mut Tx<'_>, scope: &Scope) {
        let rev = self.revision;
        for (key, c) in self.containers.iter_mut() {
            if scope.covers(key) {
                c.generation = rev;
                c.resolved_image = None;
                tx.touched.push(Key::Container(key.clone()));
            }
        }
    }

    pub(super) fn remove_instance(&mut self, tx: &mut Tx<'_>, id: &str) {
        if let Some(i) = self.instances.remove(id) {
            self.statuses.remove(id);
            tx.touched.push(Key::Instance(id.to_string()));
            self.emit_instance(
                tx,
                "instance.stopped",
                &i,
                super::super::ledger::Event::default(),
            );
        }
    }

    pub(super) fn container_mut(
        &mut self,
        key: &ContainerKey,
    ) -> Result<&mut Container, Rejection> {
        self.containers
            .get_mut(key)
            .ok_or_else(|| not_found(format_args!("container {:?}", key.as_str())))
    }
}
