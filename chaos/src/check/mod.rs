//! One module per invariant.
//!
//! - [`linearizable`]: every register's history is linearizable.
//! - [`lost`]: no acknowledged create is missing after heal.
//! - convergence and panics are checked against the live cluster in `run`.

pub mod linearizable;
pub mod lost;
