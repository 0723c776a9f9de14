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
}

impl Window {
    /// An empty window whose last request is `now_ms` (a full idle period
    /// must pass before it scales to zero).
    pub fn starting(now_ms: u64) -> Self {
        Window {
            samples: VecDeque::new(),
            last_request_ms: now_ms,
        }
    }

    pub fn record(&mut self, now_ms: u64, concurrency: f64) {
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

/// Desired instances for a container.
pub fn desired(w: &Window, p: Params, now_ms: u64) -> u32 {
    let per = f64::from(p.max_concurrency.max(1)) * TARGET_UTILISATION;
    let stable = (w.average(now_ms, p.window_ms) / per).ceil();
    let panic = (w.average(now_ms, p.window_ms / 10) / per).ceil();
    let mut want = if panic >= PANIC_THRESHOLD * f64::from(p.current.max(1)) {
        // Panic: scale up at once and do not scale down.
        panic.max(f64::from(p.current))
    } else {
        stable
    };
    let idle = now_ms.saturating_sub(w.last_request_ms) >= p.scale_to_zero_after_ms;
    if want < 1.0 && !idle {
        // Recently used: keep one warm until the idle time passes.
        want = 1.0;
    }
    let want = want.min(f64::from(u32::MAX)) as u32;
    want.max(p.min_scale).min(p.max_scale)
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
        let want = desired(w, p, now_ms);
        if want != c.desired_scale {
            tracing::info!(namespace = %c.namespace, container = %c.name, from = c.desired_scale, to = want, "autoscaling");
            out.push(Command::Scale {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                replicas: want,
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
    fn an_idle_container_goes_to_zero_only_after_its_idle_time() {
        use crate::state::Proposal;
        let mut s = world(0);
        s.apply(&Proposal::new(
            0,
            Command::Scale {
                namespace: "n".into(),
                name: "c".into(),
                replicas: 1,
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
        assert_eq!(desired(&w, p(2), 59_000), 2);
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
        assert_eq!(desired(&w, p(1), 59_000), 6);
    }

    #[test]
    fn keeps_one_until_idle_then_zero_and_respects_bounds() {
        let mut w = Window::default();
        w.record(0, 0.0);
        w.last_request_ms = 0;
        assert_eq!(desired(&w, p(1), 10_000), 1, "used 10 s ago");
        assert_eq!(desired(&w, p(1), 30_000), 0, "idle for scale_to_zero_after");
        assert_eq!(
            desired(
                &w,
                Params {
                    min_scale: 2,
                    ..p(1)
                },
                30_000
            ),
            2
        );
        let mut hot = Window::default();
        hot.record(0, 1000.0);
        hot.last_request_ms = 0;
        assert_eq!(desired(&hot, p(1), 0), 10, "capped at max_scale");
    }
}
