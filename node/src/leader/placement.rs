//! Placement: the scheduler's plan (a pure function of the state) turned
//! into commands: the pending reasons that changed, then the placements in
//! one `PlaceInstances` per batch (a whole pass by default).

use super::driver::{Decider, Tick};
use crate::scheduler::{self, Params, Plan};
use crate::state::{Command, Instance, StateData};

/// The commands of a plan. `batch`: placements per proposal (0: all in one).
pub fn commands(plan: Plan, batch: usize) -> Vec<Command> {
    let mut out: Vec<Command> = plan
        .pending
        .into_iter()
        .map(|(namespace, name, reason)| Command::SetPending {
            namespace,
            name,
            reason,
        })
        .collect();
    if plan.add.is_empty() && plan.remove.is_empty() {
        return out;
    }
    let batch = match batch {
        0 => plan.add.len().max(1),
        n => n,
    };
    let mut remove = plan.remove;
    let mut chunks: Vec<Vec<Instance>> = plan.add.chunks(batch).map(<[_]>::to_vec).collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    for add in chunks {
        out.push(Command::PlaceInstances {
            add,
            remove: std::mem::take(&mut remove),
        });
    }
    out
}

impl Placement {
    fn draining(
        &self,
        tick: Tick,
    ) -> std::collections::BTreeMap<crate::state::ContainerKey, usize> {
        let fresh_after = tick.now_ms.saturating_sub(super::autoscale::STALE_AFTER_MS);
        crate::loads::draining(&self.book.reports(), fresh_after)
    }
}

/// The placement loop's decider.
pub struct Placement {
    pub params: Params,
    pub batch: usize,
    /// Nodes' reports: instances still stopping count against max-scale.
    pub book: std::sync::Arc<crate::loads::LoadBook>,
}

impl Decider for Placement {
    fn name(&self) -> &'static str {
        "placement"
    }

    /// The state's placement inputs and the instances still draining on
    /// nodes (from their load reports): nothing else moves a plan.
    fn inputs(&self, applied: &crate::store::Applied, tick: Tick) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        applied.placement_inputs.hash(&mut h);
        self.draining(tick).hash(&mut h);
        Some(h.finish())
    }

    fn decide(&mut self, state: &StateData, tick: Tick) -> Vec<Command> {
        let draining = self.draining(tick);
        let plan = scheduler::plan_with(
            state,
            tick.now_ms,
            self.params,
            &draining,
            rand::random::<u32>,
        );
        for (namespace, container, reason) in &plan.pending {
            if let Some(r) = reason {
                tracing::info!(%namespace, %container, reason = %r, "instances pending");
            }
        }
        if !plan.is_empty() {
            tracing::info!(
                add = plan.add.len(),
                remove = plan.remove.len(),
                "committing placement"
            );
        }
        commands(plan, self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str) -> Instance {
        Instance {
            id: id.into(),
            namespace: "n".into(),
            container: "c".into(),
            generation: 1,
            node: 1,
            created_at_ms: 0,
        }
    }

    #[test]
    fn a_pass_becomes_pending_reasons_then_batches() {
        let plan = Plan {
            add: vec![inst("a"), inst("b"), inst("c")],
            remove: vec!["old".into()],
            pending: vec![("n".into(), "c".into(), Some("no room".into()))],
        };
        let cmds = commands(plan.clone(), 2);
        assert!(matches!(&cmds[0], Command::SetPending { reason: Some(r), .. } if r == "no room"));
        match (&cmds[1], &cmds[2]) {
            (
                Command::PlaceInstances {
                    add: a1,
                    remove: r1,
                },
                Command::PlaceInstances {
                    add: a2,
                    remove: r2,
                },
            ) => {
                assert_eq!((a1.len(), r1.len(), a2.len(), r2.len()), (2, 1, 1, 0));
            }
            other => panic!("{other:?}"),
        }
        // Batch 0: the whole pass in one proposal.
        assert_eq!(commands(plan, 0).len(), 2);
        // Only removals: one proposal.
        let only_remove = Plan {
            remove: vec!["x".into()],
            ..Plan::default()
        };
        assert!(matches!(
            &commands(only_remove, 0)[..],
            [Command::PlaceInstances { add, remove }] if add.is_empty() && remove.len() == 1
        ));
        assert!(commands(Plan::default(), 0).is_empty());
    }
}
