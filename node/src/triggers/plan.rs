//! What the leader does for triggers now: pure, from the state and the
//! time.

use std::collections::HashSet;

use super::schedule::{due, Due, Schedule};
use crate::state::{NodeId, StateData, TriggerSource};

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Claim `tick` (and deliver it unless it is past the catch-up window).
    Claim {
        trigger: (String, String, String),
        tick: u64,
        missed: u64,
        deliver: bool,
    },
    /// Deliver a tick claimed earlier whose delivery has no outcome and no
    /// one delivering it: its claimer died, or stopped leading mid-way.
    Redeliver {
        trigger: (String, String, String),
        tick: u64,
    },
}

/// How long a live node's claimed tick stays its own before the leader
/// delivers it: its whole retry budget, and some.
pub fn handoff_ms(timeout_s: u32, max_retries: u32) -> u64 {
    (u64::from(timeout_s) + 5) * 1000 * (u64::from(max_retries) + 1) + 10_000
}

/// When the next cron tick of any enabled trigger is due (ms), if any.
pub fn next_due(state: &StateData, now_ms: u64) -> Option<u64> {
    state
        .triggers
        .values()
        .filter(|t| t.enabled)
        .filter_map(|t| match &t.spec.source {
            TriggerSource::Cron {
                schedule, timezone, ..
            } => {
                let s = Schedule::parse(schedule, timezone).ok()?;
                s.next_after(
                    t.last_tick_ms
                        .max(t.created_at_ms)
                        .max(now_ms.saturating_sub(1)),
                )
            }
            TriggerSource::Nats { .. } => None,
        })
        .min()
}

/// The actions for every enabled cron trigger at `now_ms`. `busy`: the
/// (trigger id, tick) this node is delivering.
pub fn plan(
    state: &StateData,
    me: NodeId,
    now_ms: u64,
    busy: &HashSet<(String, u64)>,
) -> Vec<Action> {
    let mut out = Vec::new();
    for (id, t) in &state.triggers {
        let TriggerSource::Cron {
            schedule,
            timezone,
            catch_up_s,
        } = &t.spec.source
        else {
            continue;
        };
        let key = (t.namespace.clone(), t.container.clone(), t.name.clone());
        let timeout = state
            .container(&t.namespace, &t.container)
            .map_or(900, |c| c.spec.timeout_secs);
        for (tick, (node, at)) in &t.pending {
            if busy.contains(&(id.clone(), *tick)) {
                continue;
            }
            let claimer_gone = *node != me && state.node_state(*node).down;
            let overdue = now_ms.saturating_sub(*at) > handoff_ms(timeout, t.spec.max_retries);
            if claimer_gone || overdue || *node == me {
                // Mine and not busy: this node claimed it before it last
                // lost the lead (or restarted) and no longer delivers it.
                out.push(Action::Redeliver {
                    trigger: key.clone(),
                    tick: *tick,
                });
            }
        }
        if !t.enabled {
            continue;
        }
        let Ok(s) = Schedule::parse(schedule, timezone) else {
            continue;
        };
        let last = t.last_tick_ms.max(t.created_at_ms);
        match due(&s, last, now_ms, catch_up_s.saturating_mul(1000)) {
            Due::Wait(_) => {}
            Due::Claim { tick, missed } => out.push(Action::Claim {
                trigger: key,
                tick,
                missed,
                deliver: true,
            }),
            Due::Missed { tick, missed } => out.push(Action::Claim {
                trigger: key,
                tick,
                missed: missed + 1,
                deliver: false,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, ContainerSpec, NodeState, Proposal, TriggerSpec};
    use std::collections::BTreeMap;

    fn world() -> StateData {
        let mut s = StateData::default();
        for c in [
            Command::CreateNamespace {
                name: "n".into(),
                env: BTreeMap::new(),
            },
            Command::PutContainer {
                namespace: "n".into(),
                name: "c".into(),
                spec: ContainerSpec::with_image("img:1"),
                expected_revision: None,
            },
            Command::CreateTrigger {
                namespace: "n".into(),
                container: "c".into(),
                name: "t".into(),
                spec: TriggerSpec {
                    source: TriggerSource::Cron {
                        schedule: "*/2 * * * * *".into(),
                        timezone: "UTC".into(),
                        catch_up_s: 60,
                    },
                    method: "POST".into(),
                    path: "/".into(),
                    headers: BTreeMap::new(),
                    body: String::new(),
                    max_retries: 3,
                },
            },
        ] {
            assert!(s.apply(&Proposal::new(1000, c)).rejection.is_none());
        }
        s
    }

    fn claim(s: &mut StateData, tick: u64, node: NodeId) {
        let c = Command::ClaimTick {
            namespace: "n".into(),
            container: "c".into(),
            name: "t".into(),
            tick_ms: tick,
            missed: 0,
            deliver: true,
            node,
        };
        assert!(s.apply(&Proposal::new(tick, c)).rejection.is_none());
    }

    fn key() -> (String, String, String) {
        ("n".into(), "c".into(), "t".into())
    }

    #[test]
    fn the_next_due_tick_is_known() {
        let s = world();
        assert_eq!(next_due(&s, 1500), Some(2000));
        assert_eq!(next_due(&StateData::default(), 1500), None);
    }

    #[test]
    fn the_next_due_tick_is_claimed_once_it_is_due() {
        let s = world();
        assert!(plan(&s, 1, 1500, &HashSet::new()).is_empty());
        assert_eq!(
            plan(&s, 1, 2050, &HashSet::new()),
            vec![Action::Claim {
                trigger: key(),
                tick: 2000,
                missed: 0,
                deliver: true
            }]
        );
    }

    #[test]
    fn unanswered_ticks_are_delivered_again_by_the_leader() {
        let mut s = world();
        claim(&mut s, 2000, 2);
        let none = HashSet::new();
        // Node 2 is alive and within its retry budget: its tick.
        assert!(!plan(&s, 1, 2100, &none)
            .iter()
            .any(|a| matches!(a, Action::Redeliver { .. })));
        // Node 2 is down: the leader delivers it.
        s.node_states.insert(
            2,
            NodeState {
                down: true,
                ..Default::default()
            },
        );
        assert!(plan(&s, 1, 2100, &none).contains(&Action::Redeliver {
            trigger: key(),
            tick: 2000
        }));
        // Claimed by this node, which is not delivering it (it lost the
        // lead, or restarted): again.
        let mut s = world();
        claim(&mut s, 2000, 1);
        assert!(plan(&s, 1, 2100, &none).contains(&Action::Redeliver {
            trigger: key(),
            tick: 2000
        }));
        let busy = HashSet::from([("n/c/t".to_string(), 2000)]);
        assert!(!plan(&s, 1, 2100, &busy)
            .iter()
            .any(|a| matches!(a, Action::Redeliver { .. })));
        // A live node's tick past its whole retry budget: again.
        let mut s = world();
        claim(&mut s, 2000, 2);
        let late = 2000 + handoff_ms(300, 3) + 1;
        assert!(plan(&s, 1, late, &none).contains(&Action::Redeliver {
            trigger: key(),
            tick: 2000
        }));
    }
}
