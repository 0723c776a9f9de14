//! Node liveness: a node is down when its lease (the load report it sends
//! about every 500 ms) is older than the grace, and up again when fresh. A
//! new leader gives every node a full grace before judging it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::driver::{Decider, Tick};
use crate::loads::LoadBook;
use crate::state::{Command, NodeId, StateData};

/// The liveness changes to make: `SetNodeState{down}` for every registered
/// node whose freshness disagrees with its recorded state. `me` is always
/// fresh; nothing is judged before the leader has led for `grace`.
pub fn changes(
    state: &StateData,
    last_seen: &HashMap<NodeId, u64>,
    me: NodeId,
    tick: Tick,
    grace: Duration,
) -> Vec<Command> {
    if tick.leader_for < grace {
        return Vec::new();
    }
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    state
        .nodes
        .keys()
        .filter_map(|id| {
            let fresh = *id == me
                || last_seen
                    .get(id)
                    .is_some_and(|t| tick.now_ms.saturating_sub(*t) <= grace_ms);
            let down = state.node_state(*id).down;
            (fresh == down).then(|| {
                tracing::warn!(node = id, up = fresh, "node liveness changed");
                Command::SetNodeState {
                    id: *id,
                    down: Some(!fresh),
                    cordoned: None,
                    draining: None,
                }
            })
        })
        .collect()
}

/// The liveness loop's decider.
pub struct Liveness {
    pub me: NodeId,
    pub grace: Duration,
    pub book: Arc<LoadBook>,
}

impl Decider for Liveness {
    fn name(&self) -> &'static str {
        "liveness"
    }

    fn decide(&mut self, state: &StateData, tick: Tick) -> Vec<Command> {
        changes(state, &self.book.last_seen(), self.me, tick, self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NodeRecord, Proposal};

    fn nodes(ids: &[NodeId]) -> StateData {
        let mut s = StateData::default();
        for id in ids {
            s.apply(&Proposal::new(
                0,
                Command::RegisterNode {
                    node: NodeRecord {
                        id: *id,
                        ..Default::default()
                    },
                },
            ));
        }
        s
    }

    fn tick(now_ms: u64, leader_for_ms: u64) -> Tick {
        Tick {
            now_ms,
            leader_for: Duration::from_millis(leader_for_ms),
        }
    }

    fn downs(cmds: &[Command]) -> Vec<(NodeId, bool)> {
        cmds.iter()
            .map(|c| match c {
                Command::SetNodeState { id, down, .. } => (*id, down.unwrap()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn stale_leases_go_down_fresh_ones_come_back() {
        let grace = Duration::from_secs(3);
        let mut s = nodes(&[1, 2, 3]);
        let seen = HashMap::from([(2, 10_000), (3, 6_000)]);
        // Node 3 is 4 s silent; node 1 is the leader itself.
        assert_eq!(
            downs(&changes(&s, &seen, 1, tick(10_000, 5_000), grace)),
            vec![(3, true)]
        );
        for c in changes(&s, &seen, 1, tick(10_000, 5_000), grace) {
            s.apply(&Proposal::new(1, c));
        }
        assert!(
            changes(&s, &seen, 1, tick(10_000, 5_000), grace).is_empty(),
            "settled"
        );
        let back = HashMap::from([(2, 10_500), (3, 10_400)]);
        assert_eq!(
            downs(&changes(&s, &back, 1, tick(10_500, 5_500), grace)),
            vec![(3, false)]
        );
    }

    #[test]
    fn a_new_leader_waits_a_full_grace() {
        let s = nodes(&[1, 2]);
        let nobody = HashMap::new();
        let grace = Duration::from_secs(3);
        assert!(changes(&s, &nobody, 1, tick(100_000, 2_999), grace).is_empty());
        assert_eq!(
            downs(&changes(&s, &nobody, 1, tick(100_000, 3_000), grace)),
            vec![(2, true)]
        );
    }
}
