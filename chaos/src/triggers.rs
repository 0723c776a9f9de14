//! The trigger workload: a 2-second cron trigger on the mesh workload's
//! container for the whole run; after the heal, the invariant "no tick
//! claimed twice, no acknowledged tick lost", from the trigger's claimed
//! ticks (the cluster's account) and the container's own log of what it
//! received.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rouse_client::pb;
use serde::Serialize;

pub const NAME: &str = "tick";
const EVERY_2S: &str = "*/2 * * * * *";

/// What the trigger check found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TriggerReport {
    /// Ticks claimed (committed) during the run.
    pub claimed: usize,
    /// Distinct event ids the container received.
    pub received: usize,
    /// Deliveries of an event id past its first (a retried delivery whose
    /// answer was lost): allowed, counted.
    pub duplicate_deliveries: usize,
    /// A tick claimed twice, or an event delivered that no claim covers.
    pub trigger_ticks_claimed_twice: usize,
    /// Claimed ticks the container never received and the cluster never
    /// recorded an outcome for, and schedule ticks neither claimed nor
    /// recorded as missed.
    pub trigger_ticks_lost: usize,
    pub fired: u64,
    pub failed: u64,
    pub missed: u64,
    pub settled: bool,
}

impl TriggerReport {
    pub fn ok(&self) -> bool {
        self.settled && self.trigger_ticks_claimed_twice == 0 && self.trigger_ticks_lost == 0
    }
}

pub async fn create(endpoint: &str) -> anyhow::Result<u64> {
    let mut c = crate::connect(endpoint).await?;
    let at = now_ms();
    c.create_trigger(pb::CreateTriggerRequest {
        namespace: "mesh".into(),
        container: "web".into(),
        name: NAME.into(),
        cron: EVERY_2S.into(),
        path: "/cgi-bin/record".into(),
        catch_up_seconds: Some(60),
        ..Default::default()
    })
    .await?;
    Ok(at)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Event id → deliveries, from the instance logs under `dirs`.
pub fn received(dirs: &[PathBuf]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir.join("logs")) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with("mesh-web-") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines() {
                let mut f = line.split_whitespace();
                if f.next() == Some("rouse-event") && f.next() == Some(NAME) {
                    if let Some(ev) = f.next() {
                        *out.entry(ev.to_string()).or_default() += 1;
                    }
                }
            }
        }
    }
    out
}

/// The invariant, from the claimed ticks, what the container received, the
/// trigger's counters and the schedule's ticks in (created, disabled].
pub fn judge(
    claimed: &[u64],
    received: &BTreeMap<String, usize>,
    t: &pb::Trigger,
    created_ms: u64,
    disabled_ms: u64,
) -> TriggerReport {
    let mut r = TriggerReport {
        claimed: claimed.len(),
        received: received.len(),
        duplicate_deliveries: received.values().map(|n| n - 1).sum(),
        fired: t.fired,
        failed: t.failed,
        missed: t.missed,
        settled: t.pending == 0,
        ..Default::default()
    };
    let set: BTreeSet<u64> = claimed.iter().copied().collect();
    r.trigger_ticks_claimed_twice = claimed.len() - set.len();
    for id in received.keys() {
        let tick = id
            .strip_prefix(&format!("{NAME}-"))
            .and_then(|t| t.parse::<u64>().ok());
        if tick.is_none_or(|t| !set.contains(&t)) {
            r.trigger_ticks_claimed_twice += 1;
        }
    }
    // A claimed tick neither received nor recorded as failed is lost.
    let not_received = set
        .iter()
        .filter(|t| !received.contains_key(&format!("{NAME}-{t}")))
        .count() as u64;
    r.trigger_ticks_lost = not_received.saturating_sub(t.failed) as usize;
    // Every schedule tick in the window is claimed or recorded missed (the
    // edges may fall either side of the creation and the disable).
    let first = (created_ms / 2000 + 1) * 2000;
    let expected = (first..=disabled_ms).step_by(2000).count() as u64;
    let accounted = set.len() as u64 + t.missed;
    if expected > accounted + 1 {
        r.trigger_ticks_lost += (expected - accounted - 1) as usize;
    }
    r
}

/// Disables the trigger through any member, waits until its claimed ticks
/// are answered, then judges.
pub async fn check(endpoints: &[String], dirs: &[PathBuf], created_ms: u64) -> TriggerReport {
    let t0 = Instant::now();
    let mut disabled_ms = None;
    while t0.elapsed() < Duration::from_secs(90) {
        for ep in endpoints {
            let Ok(mut c) = crate::connect(ep).await else {
                continue;
            };
            if disabled_ms.is_none() {
                if c.set_trigger_enabled("mesh", "web", NAME, false)
                    .await
                    .is_ok()
                {
                    disabled_ms = Some(now_ms());
                } else {
                    continue;
                }
            }
            if let Ok(t) = c.get_trigger("mesh", "web", NAME).await {
                if t.pending == 0 {
                    let got = received(dirs);
                    return judge(
                        &t.claimed_ticks,
                        &got,
                        &t,
                        created_ms,
                        disabled_ms.unwrap_or(0),
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    TriggerReport::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(fired: u64, failed: u64, missed: u64) -> pb::Trigger {
        pb::Trigger {
            fired,
            failed,
            missed,
            ..Default::default()
        }
    }

    fn got(ids: &[(u64, usize)]) -> BTreeMap<String, usize> {
        ids.iter()
            .map(|(t, n)| (format!("{NAME}-{t}"), *n))
            .collect()
    }

    #[test]
    fn a_clean_run_passes_and_duplicates_are_only_counted() {
        let r = judge(
            &[2000, 4000, 6000],
            &got(&[(2000, 1), (4000, 2), (6000, 1)]),
            &trigger(3, 0, 0),
            1000,
            6500,
        );
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.duplicate_deliveries, 1);
    }

    #[test]
    fn a_double_claim_a_phantom_delivery_and_a_lost_tick_fail() {
        let r = judge(
            &[2000, 2000, 4000],
            &got(&[(2000, 1), (4000, 1)]),
            &trigger(3, 0, 0),
            1000,
            4500,
        );
        assert_eq!(r.trigger_ticks_claimed_twice, 1);
        let r = judge(
            &[2000],
            &got(&[(2000, 1), (4000, 1)]),
            &trigger(2, 0, 0),
            1000,
            4500,
        );
        assert_eq!(r.trigger_ticks_claimed_twice, 1, "delivered with no claim");
        let r = judge(
            &[2000, 4000],
            &got(&[(2000, 1)]),
            &trigger(1, 0, 0),
            1000,
            4500,
        );
        assert_eq!(
            r.trigger_ticks_lost, 1,
            "claimed, never received, no failure recorded"
        );
        let r = judge(
            &[2000, 4000],
            &got(&[(2000, 1)]),
            &trigger(1, 1, 0),
            1000,
            4500,
        );
        assert_eq!(r.trigger_ticks_lost, 0, "a recorded failure is not lost");
        // Ticks 2..20 s: 10; claimed 4, missed 2: 4 unaccounted (one edge allowed).
        let r = judge(
            &[2000, 4000, 6000, 8000],
            &got(&[(2000, 1), (4000, 1), (6000, 1), (8000, 1)]),
            &trigger(4, 0, 2),
            1000,
            20_500,
        );
        assert_eq!(r.trigger_ticks_lost, 3);
    }
}
