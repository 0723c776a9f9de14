//! The autoscaler's decision, Knative-style: a stable window (60 s) and a
//! panic window (6 s) of observed concurrency, a 70 % utilisation target,
//! bounded by min/max scale, and scale to zero after an idle time. Pure.

use std::collections::VecDeque;

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

#[cfg(test)]
mod tests {
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
