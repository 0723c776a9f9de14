//! Nodes, placement and instance status.

use super::super::command::Rejection;
use super::super::data::{Key, StateData};
use super::super::key::ContainerKey;
use super::super::ledger::Event;
use super::super::types::{
    Instance, InstanceStatus, NodeId, NodeRecord, NodeState, COLD_START_HISTORY,
};
use super::tx::{Applied, Tx};

impl StateData {
    pub(super) fn register_node(&mut self, tx: &mut Tx<'_>, node: &NodeRecord) -> Applied {
        if tx.v >= 2 {
            for other in self.nodes.values().filter(|n| n.id != node.id) {
                for (field, mine, theirs) in [
                    ("api_addr", &node.api_addr, &other.api_addr),
                    ("http_addr", &node.http_addr, &other.http_addr),
                    ("hop_addr", &node.hop_addr, &other.hop_addr),
                ] {
                    if !mine.is_empty() && mine == theirs {
                        return Err(Rejection::Conflict(format!(
                            "{field}: {mine} is already node {}'s address",
                            other.id
                        )));
                    }
                }
            }
        }
        self.bump();
        let joined = self.nodes.insert(node.id, node.clone()).is_none();
        tx.touched.push(Key::Node(node.id));
        if joined {
            self.emit(
                tx,
                Event {
                    kind: "node.joined".into(),
                    node: node.id,
                    message: node.api_addr.clone(),
                    ..Event::default()
                },
            );
        }
        Ok(())
    }

    pub(super) fn remove_node(&mut self, tx: &mut Tx<'_>, id: NodeId) -> Applied {
        self.bump();
        // Every certificate the node held: the one in its record and every
        // one issued to its id.
        let mut revoke: Vec<String> = self
            .nodes
            .get(&id)
            .filter(|n| !n.cert_sha256.is_empty())
            .map(|n| n.cert_sha256.clone())
            .into_iter()
            .collect();
        revoke.extend(
            self.join_tokens
                .values()
                .filter(|t| t.used_by == Some(id))
                .filter_map(|t| t.issued.as_ref().map(|i| i.cert_sha256.clone())),
        );
        if !revoke.is_empty() {
            self.revoked_certs.extend(revoke);
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
        self.emit(
            tx,
            Event {
                kind: "node.removed".into(),
                node: id,
                ..Event::default()
            },
        );
        Ok(())
    }

    pub(super) fn set_node_state(
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
        for (was, is, on, off) in [
            (cur.down, next.down, "node.down", "node.up"),
            (
                cur.cordoned,
                next.cordoned,
                "node.cordoned",
                "node.uncordoned",
            ),
            (
                cur.draining,
                next.draining,
                "node.draining",
                "node.drain_stopped",
            ),
        ] {
            if was != is {
                self.emit(
                    tx,
                    Event {
                        kind: if is { on } else { off }.into(),
                        node: id,
                        ..Event::default()
                    },
                );
            }
        }
        self.node_states.insert(id, next);
        tx.touched.push(Key::Node(id));
        Ok(())
    }

    pub(super) fn place_instances(
        &mut self,
        tx: &mut Tx<'_>,
        add: &[Instance],
        remove: &[String],
    ) -> Applied {
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
                self.instances.insert(inst.clone());
                tx.touched.push(Key::Instance(inst.id.clone()));
                self.emit_instance(tx, "instance.placed", inst, Event::default());
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

    pub(super) fn report_instance_status(
        &mut self,
        tx: &mut Tx<'_>,
        id: &str,
        node: NodeId,
        status: &InstanceStatus,
    ) -> Applied {
        let (key, inst) = match self.instances.get(id) {
            Some(i) if i.node == node => (ContainerKey::new(&i.namespace, &i.container), i.clone()),
            _ => {
                return Err(Rejection::NotFound(format!(
                    "instance {id:?} is not placed on node {node}"
                )))
            }
        };
        self.bump();
        let previous = self.statuses.insert(id.to_string(), status.clone());
        tx.touched.push(Key::Instance(id.to_string()));
        self.emit_status(tx, &inst, previous.as_ref(), status);
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
}
