//! What only the leader does, each as a loop that takes a snapshot of the
//! state, calls a pure decider, and writes the commands it returns one
//! after the other (the plan-apply shape: apply re-checks every
//! precondition, so a stale plan is refused, never half-applied).
//!
//! ```text
//!  every pass (on an applied change, or a timer):
//!    leader? ──no──▶ forget what this leadership learned
//!       │yes
//!    snapshot ─▶ decide(state, tick) ─▶ Vec<Command> ─▶ write, one at a time
//! ```
//!
//! - [`driver`]: the loop and the [`driver::Decider`] trait.
//! - [`placement`]: the scheduler's plan as commands.
//! - [`liveness`]: nodes up and down by their load-report lease.
//! - [`autoscale`]: desired scale from demand (stable and panic windows).
//! - [`bootstrap`]: the cluster data key, first signing key and the CA.

pub mod autoscale;
pub mod bootstrap;
pub mod driver;
pub mod liveness;
pub mod placement;
