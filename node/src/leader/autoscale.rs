//! The autoscaler, Knative-style: a stable window (60 s by default) and a
//! panic window (a tenth of it) of observed concurrency, a 70 % utilisation
//! target, bounded by min/max scale, and scale to zero after an idle time.
//!
//! ```text
//!  node reports (fresh ones only) ─▶ totals per container ─▶ windows
//!     ─▶ desired(window, ready instances, spec) ─▶ Scale when it changes
//! ```
//!
//! [`desired`], [`totals`] and [`plan`] are pure; [`Autoscaler`] keeps the
//! windows between passes and forgets them when leadership moves.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::driver::{Decider, Tick};
use crate::loads::{LoadBook, Report};
use crate::state::{Command, ContainerKey, NodeId, StateData};

/// A node's report older than this is ignored (the node may be gone).
pub const STALE_AFTER_MS: u64 = 3_000;

pub const STABLE_WINDOW_MS: u64 = 60_000;
pub const TARGET_UTILISATION: f64 = 0.7;
/// Enter panic mode when the panic window wants this many times the current scale.
pub const PANIC_THRESHOLD: f64 = 2.0;

/// Concurrency samples of one container (requests in flight or queued,
/// summed over nodes), oldest first.
#[derive(Debug, Default, Clone)]
pub struct Window {
    samples: VecDeque<(u64, f64)>,
    /// Last time any node saw a request for the container.
    pub last_request_ms: u64,
    /// Requests in flight or queued now, summed over nodes.
    pub now: f64,
    /// Panic mode holds (no scale-down) until then: a burst is followed by
    /// a whole stable window before the scale may fall.
    pub panic_until_ms: u64,
}

impl Window {
    /// An empty window whose last request is `now_ms` (a full idle period
    /// must pass before it scales to zero).
    pub fn starting(now_ms: u64) -> Self {
        Window {
            samples: VecDeque::new(),
            last_request_ms: now_ms,
            now: 0.0,
            panic_until_ms: 0,
        }
    }

    pub fn record(&mut self, now_ms: u64, concurrency: f64) {
        self.now = concurrency;
        self.samples.push_back((now_ms, concurrency));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > 10 * STABLE_WINDOW_MS)
        {
            self.samples.pop_front();
        }
    }

    fn average(&self, now_ms: u64, span: u64) -> f64 {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter(|(t, _)| now_ms.saturating_sub(*t) <= span)
            .map(|(_, c)| *c)
            .collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }
}

/// Inputs of one decision.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Stable window; the panic window is a tenth of it.
    pub window_ms: u64,
    pub min_scale: u32,
    pub max_scale: u32,
    pub max_concurrency: u32,
    pub scale_to_zero_after_ms: u64,
    pub current: u32,
}

/// Desired instances for a container, and why (for `container get`).
/// Never below the current scale while requests are in flight or queued
/// anywhere, or during the stable window after a burst (panic mode): a
/// burst never sees a scale-down in its middle, nor down-then-up after.
/// Updates the window's panic mode.
pub fn desired(w: &mut Window, p: Params, now_ms: u64) -> (u32, String) {
    let per = f64::from(p.max_concurrency.max(1)) * TARGET_UTILISATION;
    let stable_avg = w.average(now_ms, p.window_ms);
    let panic_avg = w.average(now_ms, p.window_ms / 10);
    let stable = (stable_avg / per).ceil();
    // Enough for what is in flight or queued right now, at full concurrency.
    let needed_now = (w.now / f64::from(p.max_concurrency.max(1))).ceil();
    let panic = (panic_avg / per).ceil().max(needed_now);
    let current = f64::from(p.current);
    let bursting = panic >= PANIC_THRESHOLD * current.max(1.0) || (p.current == 0 && w.now > 0.0);
    if bursting {
        w.panic_until_ms = now_ms + p.window_ms;
    }
    let panicking = now_ms < w.panic_until_ms;
    let (mut want, mut why) = if panicking {
        (
            panic.max(current),
            format!("burst: {} in flight or queued, {} ready", w.now, p.current),
        )
    } else {
        (
            stable,
            format!("load: {stable_avg:.1} in flight on average"),
        )
    };
    if w.now > 0.0 && want < current {
        want = current;
        why = format!("busy: {} in flight or queued (no scale-down)", w.now);
    }
    let idle_for = now_ms.saturating_sub(w.last_request_ms);
    let idle = idle_for >= p.scale_to_zero_after_ms && w.now == 0.0;
    if want < 1.0 && !idle {
        // Recently used: keep one warm until the idle time passes.
        want = 1.0;
        why = format!("warm: last request {}s ago", idle_for / 1000);
    } else if want < 1.0 {
        why = format!("idle {}s", idle_for / 1000);
    }
    let want = want.min(f64::from(u32::MAX)) as u32;
    if want < p.min_scale {
        return (p.min_scale, "min-scale".into());
    }
    if want > p.max_scale {
        return (p.max_scale, format!("{why}; capped at max-scale"));
    }
    (want, why)
}

/// Demand per container summed over nodes' fresh reports: (in flight or
/// queued, last request time).
pub fn totals(reports: &HashMap<NodeId, Report>, now_ms: u64) -> HashMap<ContainerKey, (f64, u64)> {
    let mut out: HashMap<ContainerKey, (f64, u64)> = HashMap::new();
    for r in reports.values() {
        if now_ms.saturating_sub(r.at_ms) > STALE_AFTER_MS {
            continue;
        }
        for l in &r.loads {
            let e = out.entry(l.key.clone()).or_default();
            e.0 += f64::from(l.in_flight);
            e.1 = e.1.max(l.last_request_ms);
        }
    }
    out
}

/// One pass: records each container's demand in its window and returns a
/// `Scale` for every container whose desired scale changes. `windows` is
/// the decider's memory; containers that are gone leave it.
pub fn plan(
    windows: &mut HashMap<ContainerKey, Window>,
    state: &StateData,
    totals: &HashMap<ContainerKey, (f64, u64)>,
    now_ms: u64,
    window_ms: u64,
) -> Vec<Command> {
    let mut out = Vec::new();
    for (key, c) in &state.containers {
        let w = windows
            .entry(key.clone())
            .or_insert_with(|| Window::starting(now_ms));
        let (conc, last) = totals.get(key).copied().unwrap_or((0.0, 0));
        w.record(now_ms, conc);
        w.last_request_ms = w.last_request_ms.max(last);
        // The mesh scaled it up from zero for a request: that request may
        // not be in a load report yet, and the container is not idle.
        if c.scale_reason.as_deref() == Some(crate::state::COLD_START_REASON) {
            w.last_request_ms = w.last_request_ms.max(c.scaled_at_ms);
        }
        let ready = state
            .instances_of(&c.namespace, &c.name)
            .filter(|i| {
                state
                    .statuses
                    .get(&i.id)
                    .is_some_and(|s| s.state.routable())
            })
            .count();
        let p = Params {
            window_ms,
            min_scale: c.spec.min_scale,
            max_scale: c.spec.max_scale,
            max_concurrency: c.spec.max_concurrency,
            scale_to_zero_after_ms: u64::from(c.spec.scale_to_zero_after_secs) * 1000,
            current: u32::try_from(ready)
                .unwrap_or(u32::MAX)
                .max(c.desired_scale),
        };
        let (want, reason) = desired(w, p, now_ms);
        if want != c.desired_scale {
            tracing::info!(namespace = %c.namespace, container = %c.name, from = c.desired_scale, to = want, %reason, "autoscaling");
            out.push(Command::Scale {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                replicas: want,
                reason: Some(reason),
            });
        }
    }
    windows.retain(|k, _| state.containers.contains_key(k));
    out
}

/// The autoscaler loop's decider.
pub struct Autoscaler {
    pub window_ms: u64,
    pub book: Arc<LoadBook>,
    pub windows: HashMap<ContainerKey, Window>,
}

impl Decider for Autoscaler {
    fn name(&self) -> &'static str {
        "autoscale"
    }

    fn decide(&mut self, state: &StateData, tick: Tick) -> Vec<Command> {
        let totals = totals(&self.book.reports(), tick.now_ms);
        plan(
            &mut self.windows,
            state,
            &totals,
            tick.now_ms,
            self.window_ms,
        )
    }

    /// A new leader starts with fresh windows and gives every container a
    /// full idle period before scaling it to zero.
    fn lost_leadership(&mut self) {
        self.windows.clear();
    }
}

#[cfg(test)]
mod tests {
    fn world(min: u32) -> StateData {
        use crate::state::{ContainerSpec, Proposal};
        let mut s = StateData::default();
        s.apply(&Proposal::new(
            0,
            Command::CreateNamespace {
                name: "n".into(),
                env: Default::default(),
            },
        ));
        s.apply(&Proposal::new(
            0,
            Command::PutContainer {
                namespace: "n".into(),
                name: "c".into(),
                spec: ContainerSpec {
                    min_scale: min,
                    max_concurrency: 10,
                    scale_to_zero_after_secs: 30,
                    ..ContainerSpec::with_image("i")
                },
                expected_revision: None,
            },
        ));
        s
    }

    fn report(at_ms: u64, in_flight: u32) -> Report {
        Report {
            at_ms,
            loads: vec![crate::loads::ContainerLoad {
                key: ContainerKey::new("n", "c"),
                in_flight,
                last_request_ms: at_ms,
                draining: 0,
            }],
        }
    }

    #[test]
    fn stale_reports_are_left_out_of_the_totals() {
        let reports = HashMap::from([(1, report(10_000, 4)), (2, report(6_000, 100))]);
        let t = totals(&reports, 10_000);
        assert_eq!(t[&ContainerKey::new("n", "c")], (4.0, 10_000));
    }

    #[test]
    fn plan_scales_up_on_demand_and_forgets_deleted_containers() {
        let s = world(0);
        let mut windows = HashMap::new();
        let reports = HashMap::from([(1, report(1_000, 30))]);
        let cmds = plan(&mut windows, &s, &totals(&reports, 1_000), 1_000, 60_000);
        // 30 in flight / (10 × 0.7) → 5 (the container's max scale).
        assert!(
            matches!(&cmds[..], [Command::Scale { replicas: 5, .. }]),
            "{cmds:?}"
        );
        let empty = StateData::default();
        assert!(plan(&mut windows, &empty, &HashMap::new(), 2_000, 60_000).is_empty());
        assert!(windows.is_empty());
    }

    #[test]
    fn a_cold_start_is_not_undone_by_a_stale_idle_view() {
        use crate::state::Proposal;
        let mut s = world(0);
        let mut windows = HashMap::new();
        // Idle for long: the window says so (the state's desired is 0).
        plan(&mut windows, &s, &HashMap::new(), 0, 60_000);
        assert!(plan(&mut windows, &s, &HashMap::new(), 100_000, 60_000).is_empty());
        // The mesh scales it from zero for a request no report shows yet.
        s.apply(&Proposal::new(
            100_500,
            Command::Scale {
                namespace: "n".into(),
                name: "c".into(),
                replicas: 1,
                reason: Some(crate::state::COLD_START_REASON.into()),
            },
        ));
        let cmds = plan(&mut windows, &s, &HashMap::new(), 101_000, 60_000);
        assert!(cmds.is_empty(), "the cold start was undone: {cmds:?}");
    }

    #[test]
    fn an_idle_container_goes_to_zero_only_after_its_idle_time() {
        use crate::state::Proposal;
        let mut s = world(0);
        s.apply(&Proposal::new(
            0,
            Command::Scale {
                namespace: "n".into(),
                name: "c".into(),
                replicas: 1,
                reason: None,
            },
        ));
        let mut windows = HashMap::new();
        let none = HashMap::new();
        assert!(plan(&mut windows, &s, &none, 1_000, 60_000).is_empty());
        assert!(plan(&mut windows, &s, &none, 30_000, 60_000).is_empty());
        let cmds = plan(&mut windows, &s, &none, 31_001, 60_000);
        assert!(
            matches!(&cmds[..], [Command::Scale { replicas: 0, .. }]),
            "{cmds:?}"
        );
    }

    use super::*;

    fn p(current: u32) -> Params {
        Params {
            window_ms: STABLE_WINDOW_MS,
            min_scale: 0,
            max_scale: 10,
            max_concurrency: 10,
            scale_to_zero_after_ms: 30_000,
            current,
        }
    }

    #[test]
    fn scales_to_load_with_target_utilisation() {
        let mut w = Window::default();
        for t in 0..60 {
            w.record(t * 1000, 14.0);
        }
        w.last_request_ms = 59_000;
        // 14 in flight / (10 × 0.7) = 2 instances.
        assert_eq!(desired(&mut w.clone(), p(2), 59_000).0, 2);
    }

    #[test]
    fn panics_on_a_burst() {
        let mut w = Window::default();
        for t in 0..53 {
            w.record(t * 1000, 0.0);
        }
        for t in 53..60 {
            w.record(t * 1000, 40.0);
        }
        w.last_request_ms = 59_000;
        // Stable average is low, but 40/7 → 6 in the panic window.
        assert_eq!(desired(&mut w.clone(), p(1), 59_000).0, 6);
    }

    #[test]
    fn a_burst_sees_no_scale_down_in_its_middle_nor_after() {
        let mut w = Window::default();
        let mut p = p(1);
        p.max_concurrency = 1;
        // From idle, 6 arrive: up to what is needed now.
        for t in 0..50 {
            w.record(t * 1000, 0.0);
        }
        w.record(50_000, 6.0);
        w.last_request_ms = 50_000;
        let (up, why) = desired(&mut w, p, 50_000);
        assert_eq!(up, 6);
        assert!(why.starts_with("burst"), "{why}");
        // The burst drains; the averages fall but the scale holds while
        // anything is in flight, and for a stable window after the burst.
        p.current = up;
        for (t, c) in [(51_000, 4.0), (52_000, 1.0), (53_000, 0.0), (70_000, 0.0)] {
            w.record(t, c);
            w.last_request_ms = t;
            assert_eq!(desired(&mut w, p, t).0, 6, "at {t}");
        }
        // A stable window after the burst, idle: down.
        w.record(111_000, 0.0);
        assert!(desired(&mut w, p, 111_000).0 < 6);
    }

    #[test]
    fn nothing_scales_down_while_requests_are_in_flight() {
        let mut w = Window::default();
        for t in 0..60 {
            w.record(t * 1000, 0.0);
        }
        w.record(60_000, 1.0);
        w.last_request_ms = 60_000;
        let (want, why) = desired(&mut w, p(3), 60_000);
        assert_eq!(want, 3, "{why}");
    }

    #[test]
    fn keeps_one_until_idle_then_zero_and_respects_bounds() {
        let mut w = Window::default();
        w.record(0, 0.0);
        w.last_request_ms = 0;
        assert_eq!(desired(&mut w.clone(), p(1), 10_000).0, 1, "used 10 s ago");
        assert_eq!(
            desired(&mut w.clone(), p(1), 30_000).0,
            0,
            "idle for scale_to_zero_after"
        );
        assert_eq!(
            desired(
                &mut w.clone(),
                Params {
                    min_scale: 2,
                    ..p(1)
                },
                30_000
            )
            .0,
            2
        );
        let mut hot = Window::default();
        hot.record(0, 1000.0);
        hot.last_request_ms = 0;
        assert_eq!(desired(&mut hot, p(1), 0).0, 10, "capped at max_scale");
    }
}
