//! The loop every leader-only decider runs in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{now_ms, Cluster, ClusterError};
use crate::state::{Command, StateData};
use crate::store::Applied;

/// When a decision is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub now_ms: u64,
    /// How long this node has led without interruption.
    pub leader_for: Duration,
}

/// A leader-only decision: from a snapshot of the state to the commands
/// that bring the cluster where it should be. `decide` does no I/O and
/// reads no clock (the time is in `tick`).
pub trait Decider: Send {
    /// Names the loop in logs.
    fn name(&self) -> &'static str;
    fn decide(&mut self, state: &StateData, tick: Tick) -> Vec<Command>;
    /// A fingerprint of everything the decision depends on, when the
    /// decider can tell: a pass whose inputs are those of the last pass
    /// that wrote all it decided is skipped (it would decide the same).
    fn inputs(&self, _applied: &Applied, _tick: Tick) -> Option<u64> {
        None
    }
    /// This node stopped leading: forget what the leadership learned.
    fn lost_leadership(&mut self) {}
}

/// How a loop wakes up.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// On every applied change, and at least this often.
    OnChange(Duration),
    /// On a timer.
    Every(Duration),
}

/// Runs `d` while this node lives; it decides only while the node leads.
pub async fn run(cluster: Arc<Cluster>, mut d: impl Decider, pace: Pace) {
    let mut seen = 0;
    let mut since: Option<Instant> = None;
    let mut last_inputs = None;
    loop {
        match pace {
            Pace::OnChange(max) => {
                cluster.applied_change(&mut seen, max).await;
            }
            Pace::Every(d) => tokio::time::sleep(d).await,
        }
        if !cluster.is_leader() {
            if since.take().is_some() {
                d.lost_leadership();
                last_inputs = None;
            }
            continue;
        }
        let started = *since.get_or_insert_with(Instant::now);
        let pass = Instant::now();
        let tick = Tick {
            now_ms: now_ms(),
            leader_for: started.elapsed(),
        };
        let (commands, inputs) = {
            let sm = cluster.sm.read();
            let inputs = d.inputs(&sm, tick);
            if inputs.is_some() && inputs == last_inputs {
                continue;
            }
            (d.decide(&sm.data, tick), inputs)
        };
        // Remembered only once all it decided is written.
        last_inputs = None;
        if write_serially(&cluster, d.name(), batched(commands)).await {
            last_inputs = inputs;
        }
        crate::telemetry::METRICS.pass(d.name(), pass.elapsed());
    }
}

/// Most commands a batch entry holds.
const BATCH: usize = 1000;

/// A pass's commands in as few entries as they fit: runs of commands in
/// `Batch` entries (one command alone stays as it is), placements in their
/// own entries (the placement loop sizes those itself). Order is kept.
pub fn batched(commands: Vec<Command>) -> Vec<Command> {
    let mut out = Vec::new();
    let mut run: Vec<Command> = Vec::new();
    let flush = |run: &mut Vec<Command>, out: &mut Vec<Command>| match run.len() {
        0 => {}
        1 => out.append(run),
        _ => out.push(Command::Batch {
            commands: std::mem::take(run),
        }),
    };
    for c in commands {
        if matches!(c, Command::PlaceInstances { .. }) {
            flush(&mut run, &mut out);
            out.push(c);
        } else {
            run.push(c);
            if run.len() == BATCH {
                flush(&mut run, &mut out);
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Writes `commands` in order; true if every one was accepted. A rejected
/// one is skipped (the state moved on; the next pass decides again); any
/// other error ends the pass.
pub async fn write_serially(cluster: &Cluster, name: &str, commands: Vec<Command>) -> bool {
    let mut all = true;
    for cmd in commands {
        match cluster.write(cmd).await {
            Ok(_) => {}
            Err(ClusterError::Rejected(r)) => {
                all = false;
                tracing::debug!(decider = name, reason = %r, "command refused; deciding again next pass")
            }
            Err(e) => {
                tracing::debug!(decider = name, error = %e, "not committed; trying again next pass");
                return false;
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale(name: &str) -> Command {
        Command::Scale {
            namespace: "ns".into(),
            name: name.into(),
            replicas: 1,
            reason: None,
        }
    }

    fn place() -> Command {
        Command::PlaceInstances {
            add: Vec::new(),
            remove: vec!["x".into()],
        }
    }

    #[test]
    fn a_pass_goes_out_in_few_entries_in_order() {
        assert!(batched(Vec::new()).is_empty());
        assert_eq!(batched(vec![scale("a")]), vec![scale("a")]);
        let out = batched(vec![scale("a"), scale("b"), place(), scale("c"), place()]);
        assert_eq!(
            out,
            vec![
                Command::Batch {
                    commands: vec![scale("a"), scale("b")]
                },
                place(),
                scale("c"),
                place(),
            ]
        );
        let many: Vec<Command> = (0..2500).map(|i| scale(&i.to_string())).collect();
        let out = batched(many.clone());
        assert_eq!(out.len(), 3);
        let flat: Vec<Command> = out
            .into_iter()
            .flat_map(|c| match c {
                Command::Batch { commands } => commands,
                c => vec![c],
            })
            .collect();
        assert_eq!(flat, many);
    }
}
