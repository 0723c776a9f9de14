//! The life of one instance on its node, as a pure state machine: what the
//! supervisor does next given what just happened, with the backoffs for
//! instances that cannot start or keep crashing. The executor (`supervise`)
//! performs the steps against containerd and feeds back the events.
//!
//! ```text
//!  NeedsStart ─▶ [Pulling] Start ─┬─ Started ─▶ [Starting] WaitReady ─┬─ Ready ─▶ [Ready] WaitExit ─▶ Exited
//!                                 └─ StartFailed ─▶ [Failed] clean, back off (2 s … 60 s), again
//!  Adopted (a task already runs) ─▶ WaitReady                          └─ Exited ─▶ [Crashed] back off (1 s … 30 s), again
//!  NoPort ─▶ [Failed] back off, again
//! ```
//!
//! A crash after a minute or more of running starts the backoff afresh.

use std::time::Duration;

use crate::state::{ColdStart, InstanceState, InstanceStatus};

pub const FAIL_BACKOFF_MIN: Duration = Duration::from_secs(2);
pub const FAIL_BACKOFF_MAX: Duration = Duration::from_secs(60);
pub const CRASH_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Running this long resets the crash backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// No task runs: one must be started from `image`.
    NeedsStart {
        image: String,
    },
    /// A task of this instance already runs (this node restarted).
    Adopted,
    /// No port could be given to the instance.
    NoPort,
    StartFailed(String),
    /// The task started; the phases so far.
    Started(ColdStart),
    /// The instance answers (its port accepts, or its health path is 2xx).
    Ready,
    /// The task exited after running `ran_for`.
    Exited {
        code: Option<u32>,
        oom: bool,
        ran_for: Duration,
    },
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Record this status in the cluster.
    Report(InstanceStatus),
    /// Pull, create and start the task; answers `Started` or `StartFailed`.
    Start,
    /// Remove a half-created container so the next try starts afresh.
    CleanUp,
    /// Wait until ready (`Ready`) or exited (`Exited`).
    WaitReady,
    /// The instance is ready here (the mesh may route to it).
    MarkReady,
    /// Wait until the task exits (`Exited`).
    WaitExit,
    /// Back off, then begin again.
    Sleep(Duration),
    /// Begin again: look the instance up and start or adopt it.
    Again,
}

#[derive(Debug, Clone)]
pub struct Supervisor {
    pub status: InstanceStatus,
    fail_backoff: Duration,
    crash_backoff: Duration,
    /// The cold start under way: its phases until ready.
    cold: Option<ColdStart>,
    /// When the wait for readiness began (ms).
    started_ms: u64,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            status: InstanceStatus::default(),
            fail_backoff: FAIL_BACKOFF_MIN,
            crash_backoff: CRASH_BACKOFF_MIN,
            cold: None,
            started_ms: 0,
        }
    }
}

impl Supervisor {
    /// Where the instance listens (in its status): its address on the
    /// node's bridge (`None` in host mode) and its port.
    pub fn set_address(&mut self, ip: Option<std::net::Ipv4Addr>, port: u16) {
        self.status.ip = ip.map(|ip| ip.to_string()).unwrap_or_default();
        self.status.port = u32::from(port);
    }

    /// The status to report a pull's progress under, while pulling.
    pub fn pulling(&self) -> Option<InstanceStatus> {
        (self.status.state == InstanceState::Pulling).then(|| self.status.clone())
    }

    fn stamped(&self, now_ms: u64) -> InstanceStatus {
        InstanceStatus {
            updated_at_ms: now_ms,
            ..self.status.clone()
        }
    }

    /// The steps that follow `event`, at `now_ms`.
    pub fn next(&mut self, event: Event, now_ms: u64) -> Vec<Step> {
        match event {
            Event::NoPort => {
                self.status.state = InstanceState::Failed;
                self.status.message = "no free port in the instance port range".into();
                vec![
                    Step::Report(self.stamped(now_ms)),
                    Step::Sleep(self.fail_backoff),
                    Step::Again,
                ]
            }
            Event::Adopted => {
                self.started_ms = now_ms;
                vec![Step::WaitReady]
            }
            Event::NeedsStart { image } => {
                // A crashed instance keeps showing why it crashed while it restarts.
                if self.status.state == InstanceState::Crashed {
                    return vec![Step::Start];
                }
                self.status.state = InstanceState::Pulling;
                self.status.message = format!("pulling {image}");
                vec![Step::Report(self.stamped(now_ms)), Step::Start]
            }
            Event::StartFailed(message) => {
                self.status.state = InstanceState::Failed;
                self.status.message = message;
                let wait = self.fail_backoff;
                self.fail_backoff = (self.fail_backoff * 2).min(FAIL_BACKOFF_MAX);
                vec![
                    Step::Report(self.stamped(now_ms)),
                    Step::CleanUp,
                    Step::Sleep(wait),
                    Step::Again,
                ]
            }
            Event::Started(cold) => {
                self.fail_backoff = FAIL_BACKOFF_MIN;
                self.cold = Some(cold);
                self.status.state = InstanceState::Starting;
                self.status.message.clear();
                self.started_ms = now_ms;
                vec![Step::Report(self.stamped(now_ms)), Step::WaitReady]
            }
            Event::Ready => {
                if let Some(mut cs) = self.cold.take() {
                    cs.ready_ms = now_ms.saturating_sub(self.started_ms);
                    cs.total_ms =
                        cs.placement_ms + cs.pull_ms + cs.create_ms + cs.start_ms + cs.ready_ms;
                    cs.at_ms = now_ms;
                    tracing::info!(
                        total_ms = cs.total_ms,
                        pull_ms = cs.pull_ms,
                        ready_ms = cs.ready_ms,
                        "cold start"
                    );
                    self.status.cold_start = Some(cs);
                }
                self.status.state = InstanceState::Ready;
                self.status.message.clear();
                vec![
                    Step::MarkReady,
                    Step::Report(self.stamped(now_ms)),
                    Step::WaitExit,
                ]
            }
            Event::Exited { code, oom, ran_for } => {
                self.cold = None;
                if ran_for > STABLE_AFTER {
                    self.crash_backoff = CRASH_BACKOFF_MIN;
                }
                self.status.state = InstanceState::Crashed;
                self.status.exit_code = code.map(|c| i32::try_from(c).unwrap_or(i32::MAX));
                self.status.oom_killed = oom;
                self.status.restarts += 1;
                self.status.message = if oom {
                    "OOM-killed: the instance used more memory than its limit".into()
                } else {
                    format!(
                        "exited with code {}",
                        code.map_or("unknown".into(), |c| c.to_string())
                    )
                };
                let wait = self.crash_backoff;
                tracing::warn!(exit = ?code, oom, "instance exited; restarting in {wait:?}");
                self.crash_backoff = (self.crash_backoff * 2).min(CRASH_BACKOFF_MAX);
                vec![
                    Step::Report(self.stamped(now_ms)),
                    Step::Sleep(wait),
                    Step::Again,
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(steps: &[Step]) -> Vec<InstanceState> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Report(st) => Some(st.state),
                _ => None,
            })
            .collect()
    }

    fn sleeps(steps: &[Step]) -> Vec<Duration> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Sleep(d) => Some(*d),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_cold_start_reports_each_phase_and_its_timings() {
        let mut s = Supervisor::default();
        let steps = s.next(
            Event::NeedsStart {
                image: "img:1".into(),
            },
            1_000,
        );
        assert_eq!(steps, vec![Step::Report(s.stamped(1_000)), Step::Start]);
        assert_eq!(s.status.message, "pulling img:1");
        let cold = ColdStart {
            placement_ms: 5,
            pull_ms: 10,
            create_ms: 20,
            start_ms: 30,
            ..Default::default()
        };
        let steps = s.next(Event::Started(cold), 1_100);
        assert_eq!(reported(&steps), vec![InstanceState::Starting]);
        assert_eq!(steps.last(), Some(&Step::WaitReady));
        let steps = s.next(Event::Ready, 1_140);
        assert_eq!(steps[0], Step::MarkReady);
        assert_eq!(reported(&steps), vec![InstanceState::Ready]);
        let cs = s.status.cold_start.unwrap();
        assert_eq!((cs.ready_ms, cs.total_ms, cs.at_ms), (40, 105, 1_140));
        assert_eq!(steps.last(), Some(&Step::WaitExit));
    }

    #[test]
    fn crashes_back_off_doubling_to_a_cap_and_reset_after_a_stable_run() {
        let mut s = Supervisor::default();
        let crash = |ran: u64| Event::Exited {
            code: Some(137),
            oom: false,
            ran_for: Duration::from_secs(ran),
        };
        let mut waits = Vec::new();
        for _ in 0..7 {
            waits.extend(sleeps(&s.next(crash(1), 0)));
        }
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 30, 30].map(Duration::from_secs).to_vec()
        );
        assert_eq!(s.status.restarts, 7);
        assert_eq!(s.status.exit_code, Some(137));
        assert_eq!(s.status.message, "exited with code 137");
        // A long run starts the backoff afresh.
        assert_eq!(sleeps(&s.next(crash(61), 0)), vec![Duration::from_secs(1)]);
        // While restarting, a crashed instance keeps its crash in view.
        let steps = s.next(Event::NeedsStart { image: "i".into() }, 0);
        assert_eq!(steps, vec![Step::Start]);
    }

    #[test]
    fn start_failures_back_off_and_clean_up_until_a_start_works() {
        let mut s = Supervisor::default();
        let steps = s.next(Event::StartFailed("no such image".into()), 0);
        assert_eq!(reported(&steps), vec![InstanceState::Failed]);
        assert!(steps.contains(&Step::CleanUp));
        assert_eq!(sleeps(&steps), vec![Duration::from_secs(2)]);
        assert_eq!(
            sleeps(&s.next(Event::StartFailed("x".into()), 0)),
            vec![Duration::from_secs(4)]
        );
        s.next(Event::Started(ColdStart::default()), 0);
        assert_eq!(
            sleeps(&s.next(Event::StartFailed("x".into()), 0)),
            vec![Duration::from_secs(2)]
        );
    }

    #[test]
    fn oom_and_exhausted_ports_say_so() {
        let mut s = Supervisor::default();
        s.next(
            Event::Exited {
                code: Some(137),
                oom: true,
                ran_for: Duration::ZERO,
            },
            0,
        );
        assert!(s.status.oom_killed && s.status.message.starts_with("OOM-killed"));
        let steps = s.next(Event::NoPort, 0);
        assert_eq!(reported(&steps), vec![InstanceState::Failed]);
        assert_eq!(steps.last(), Some(&Step::Again));
    }
}
