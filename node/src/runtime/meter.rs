//! Metering: every half second this node samples its instances (their
//! cgroups, whether suspended, whether busy) and adds what they were
//! allocated and used to per-container, per-minute usage; every 10 s it
//! sends the batch through Raft (`RecordUsage`, applied once per sequence,
//! so a batch sent again after a lost answer is not counted twice).
//!
//! Allocated: memory limit × running time, mVCPU × running time.
//! Used: cgroup memory in use integrated over time, cgroup CPU time.
//! Suspended time is counted apart and allocates nothing.
//!
//! What is not yet committed is journaled on disk after every sample (see
//! [`Journal`]): a node killed mid-period sends it when it comes back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::{now_ms, Cluster};
use crate::local::LocalInstances;
use crate::state::{Command, InstanceState, NodeId, Usage, UsageEntry, USAGE_MINUTE_MS};

const SAMPLE: Duration = Duration::from_millis(500);
const FLUSH: Duration = Duration::from_secs(10);

/// What one sample of one instance adds, from the time since the last one.
pub fn accrue(
    dt_ms: u64,
    memory_mb: u32,
    mvcpu: u32,
    suspended: bool,
    busy: bool,
    used_kib: u64,
    cpu_delta_us: u64,
) -> Usage {
    if suspended {
        return Usage {
            suspended_ms: dt_ms,
            ..Default::default()
        };
    }
    Usage {
        memory_mb_ms: u64::from(memory_mb) * dt_ms,
        mvcpu_ms: u64::from(mvcpu) * dt_ms,
        memory_used_kib_ms: used_kib * dt_ms,
        cpu_used_us: cpu_delta_us,
        request_ms: if busy { dt_ms } else { 0 },
        instance_ms: dt_ms,
        ..Default::default()
    }
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// CPU time (ns) and memory in use (bytes) of an instance's cgroup (v1).
fn cgroup(id: &str) -> (Option<u64>, Option<u64>) {
    let parent = super::spec::CGROUP_PARENT;
    (
        read_u64(&format!(
            "/sys/fs/cgroup/cpuacct/{parent}/{id}/cpuacct.usage"
        )),
        read_u64(&format!(
            "/sys/fs/cgroup/memory/{parent}/{id}/memory.usage_in_bytes"
        )),
    )
}

/// An instance's last sample: wall-clock time and cgroup CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Sampled {
    at_ms: u64,
    cpu_ns: Option<u64>,
}

/// What the meter holds between batches, kept in `<data-dir>/usage.json`
/// after every sample so that a node killed mid-period loses nothing: on
/// restart it sends its unsent batch again (the same sequence: applied
/// once) and counts the time its instances ran while it was down (when
/// their cgroup's CPU time shows the same task went on).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    last: BTreeMap<String, Sampled>,
    pending: Vec<UsageEntry>,
    outbox: Option<(u64, Vec<UsageEntry>)>,
}

impl Journal {
    fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable usage journal: starting afresh");
                Journal::default()
            }),
            Err(_) => Journal::default(),
        }
    }

    /// Written whole and renamed into place: a kill leaves the old or the
    /// new one.
    fn save(&self, path: &Path) {
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "writing the usage journal");
        }
    }
}

type Pending = BTreeMap<(String, String, u64), Usage>;

fn entries(pending: &Pending) -> Vec<UsageEntry> {
    pending
        .iter()
        .filter(|(_, u)| !u.is_empty())
        .map(|((namespace, container, period_ms), usage)| UsageEntry {
            namespace: namespace.clone(),
            container: container.clone(),
            period_ms: *period_ms,
            usage: *usage,
        })
        .collect()
}

/// The time since `prev` to count for an instance sampled now: none when
/// its cgroup's CPU time went back (another task since: a reboot).
fn elapsed(prev: Sampled, now_ms: u64, cpu_ns: Option<u64>) -> (u64, u64) {
    match (prev.cpu_ns, cpu_ns) {
        (Some(a), Some(b)) if b < a => (0, 0),
        (Some(a), Some(b)) => (now_ms.saturating_sub(prev.at_ms), (b - a) / 1000),
        _ => (now_ms.saturating_sub(prev.at_ms), 0),
    }
}

/// Meters this node's instances until the node stops; `journal`: where
/// unsent usage is kept.
pub async fn run(cluster: Arc<Cluster>, local: Arc<LocalInstances>, me: NodeId, journal: PathBuf) {
    let j = Journal::load(&journal);
    let mut last = j.last;
    let mut pending: Pending = j
        .pending
        .into_iter()
        .map(|e| ((e.namespace, e.container, e.period_ms), e.usage))
        .collect();
    let mut outbox = j.outbox;
    let mut flushed = Instant::now();
    loop {
        tokio::time::sleep(SAMPLE).await;
        let now = now_ms();
        let minute = now - now % USAGE_MINUTE_MS;
        let mine: Vec<(String, String, String, u32, u32)> = {
            let sm = cluster.sm.read();
            sm.data
                .instances
                .values()
                .filter(|i| i.node == me)
                .filter(|i| {
                    sm.data.statuses.get(&i.id).is_some_and(|s| {
                        matches!(s.state, InstanceState::Ready | InstanceState::Suspended)
                    })
                })
                .filter_map(|i| {
                    let c = sm.data.container(&i.namespace, &i.container)?;
                    Some((
                        i.id.clone(),
                        i.namespace.clone(),
                        i.container.clone(),
                        c.spec.memory_mb,
                        c.spec.cpu_mvcpu,
                    ))
                })
                .collect()
        };
        let live: std::collections::HashSet<&str> = mine.iter().map(|m| m.0.as_str()).collect();
        let before = last.len();
        last.retain(|id, _| live.contains(id.as_str()));
        let mut changed = before != last.len();
        for (id, ns, ct, memory_mb, mvcpu) in &mine {
            let (cpu_ns, mem_bytes) = cgroup(id);
            let requests = local.take_requests(id);
            let u = match last.get(id) {
                Some(prev) => {
                    let (dt, cpu_delta_us) = elapsed(*prev, now, cpu_ns);
                    let mut u = accrue(
                        dt,
                        *memory_mb,
                        *mvcpu,
                        local.is_suspended(id),
                        local.in_flight(id) > 0,
                        mem_bytes.unwrap_or(0) / 1024,
                        cpu_delta_us,
                    );
                    u.requests = requests;
                    u
                }
                None => Usage {
                    requests,
                    ..Default::default()
                },
            };
            last.insert(id.clone(), Sampled { at_ms: now, cpu_ns });
            changed = true;
            pending
                .entry((ns.clone(), ct.clone(), minute))
                .or_default()
                .add(&u);
        }
        if flushed.elapsed() >= FLUSH {
            flushed = Instant::now();
            if outbox.is_none() && !pending.is_empty() {
                let batch = entries(&std::mem::take(&mut pending));
                if !batch.is_empty() {
                    // Later than any batch this node sent before (its clock).
                    outbox = Some((now_ms(), batch));
                }
                changed = true;
            }
            if let Some((seq, batch)) = &outbox {
                let cmd = Command::RecordUsage {
                    node: me,
                    seq: *seq,
                    entries: batch.clone(),
                };
                match cluster.write(cmd).await {
                    Ok(_) => {
                        outbox = None;
                        changed = true;
                    }
                    // Sent again next time, with the same sequence.
                    Err(e) => {
                        tracing::debug!(error = %e, "usage batch not committed; sending it again")
                    }
                }
            }
        }
        if changed {
            Journal {
                last: last.clone(),
                pending: entries(&pending),
                outbox: outbox.clone(),
            }
            .save(&journal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downtime_counts_only_when_the_same_task_went_on() {
        let prev = Sampled {
            at_ms: 1_000,
            cpu_ns: Some(5_000_000),
        };
        // Killed at 1 s, back at 9 s, the task still running.
        assert_eq!(elapsed(prev, 9_000, Some(7_000_000)), (8_000, 2_000));
        // A new task in the cgroup (its CPU time started over): nothing.
        assert_eq!(elapsed(prev, 9_000, Some(1_000)), (0, 0));
        assert_eq!(elapsed(prev, 9_000, None), (8_000, 0));
    }

    #[test]
    fn the_journal_round_trips_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let j = Journal {
            last: BTreeMap::from([(
                "i1".to_string(),
                Sampled {
                    at_ms: 5,
                    cpu_ns: Some(9),
                },
            )]),
            pending: vec![UsageEntry {
                namespace: "n".into(),
                container: "c".into(),
                period_ms: 60_000,
                usage: Usage {
                    instance_ms: 500,
                    ..Default::default()
                },
            }],
            outbox: Some((7, vec![])),
        };
        j.save(&path);
        let back = Journal::load(&path);
        assert_eq!(back.last, j.last);
        assert_eq!(back.pending, j.pending);
        assert_eq!(back.outbox, j.outbox);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Journal::load(&path).pending.is_empty());
    }

    #[test]
    fn running_time_allocates_and_suspended_time_does_not() {
        let u = accrue(500, 256, 500, false, true, 10_240, 3000);
        assert_eq!(
            (u.memory_mb_ms, u.mvcpu_ms, u.instance_ms, u.request_ms),
            (128_000, 250_000, 500, 500)
        );
        assert_eq!((u.memory_used_kib_ms, u.cpu_used_us), (10_240 * 500, 3000));
        let s = accrue(500, 256, 500, true, false, 10_240, 3000);
        assert_eq!(
            s,
            Usage {
                suspended_ms: 500,
                ..Default::default()
            }
        );
        assert_eq!(accrue(500, 256, 500, false, false, 0, 0).request_ms, 0);
    }
}
