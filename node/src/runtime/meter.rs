//! Metering: every half second this node samples its instances (their
//! cgroups, whether suspended, whether busy) and adds what they were
//! allocated and used to per-container, per-minute usage; every 10 s it
//! sends the batch through Raft (`RecordUsage`, applied once per sequence,
//! so a batch sent again after a lost answer is not counted twice).
//!
//! Allocated: memory limit × running time, mVCPU × running time.
//! Used: cgroup memory in use integrated over time, cgroup CPU time.
//! Suspended time is counted apart and allocates nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

struct Sampled {
    at: Instant,
    cpu_ns: Option<u64>,
}

pub async fn run(cluster: Arc<Cluster>, local: Arc<LocalInstances>, me: NodeId) {
    let mut last: HashMap<String, Sampled> = HashMap::new();
    let mut pending: BTreeMap<(String, String, u64), Usage> = BTreeMap::new();
    let mut outbox: Option<(u64, Vec<UsageEntry>)> = None;
    let mut flushed = Instant::now();
    loop {
        tokio::time::sleep(SAMPLE).await;
        let now = Instant::now();
        let minute = now_ms() - now_ms() % USAGE_MINUTE_MS;
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
        last.retain(|id, _| live.contains(id.as_str()));
        for (id, ns, ct, memory_mb, mvcpu) in &mine {
            let (cpu_ns, mem_bytes) = cgroup(id);
            let requests = local.take_requests(id);
            let u = match last.get(id) {
                Some(prev) => {
                    let dt = now.duration_since(prev.at).as_millis() as u64;
                    let cpu_delta_us = match (prev.cpu_ns, cpu_ns) {
                        (Some(a), Some(b)) => b.saturating_sub(a) / 1000,
                        _ => 0,
                    };
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
            last.insert(id.clone(), Sampled { at: now, cpu_ns });
            pending
                .entry((ns.clone(), ct.clone(), minute))
                .or_default()
                .add(&u);
        }
        if flushed.elapsed() < FLUSH {
            continue;
        }
        flushed = Instant::now();
        if outbox.is_none() && !pending.is_empty() {
            let entries = std::mem::take(&mut pending)
                .into_iter()
                .filter(|(_, u)| !u.is_empty())
                .map(|((namespace, container, period_ms), usage)| UsageEntry {
                    namespace,
                    container,
                    period_ms,
                    usage,
                })
                .collect::<Vec<_>>();
            if !entries.is_empty() {
                // Later than any batch this node sent before (its clock).
                outbox = Some((now_ms(), entries));
            }
        }
        if let Some((seq, entries)) = &outbox {
            let cmd = Command::RecordUsage {
                node: me,
                seq: *seq,
                entries: entries.clone(),
            };
            match cluster.write(cmd).await {
                Ok(_) => outbox = None,
                // Sent again next time, with the same sequence.
                Err(e) => {
                    tracing::debug!(error = %e, "usage batch not committed; sending it again")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
