//! Keys of the cluster and of this node.
//!
//! - [`ring`]: the master key and the data key this node holds ([`Keyring`]).
//! - [`rotate`]: rotating both, and every node following a rotation.
//! - [`signing`]: token-signing keys.

pub mod ring;
pub mod rotate;
pub mod signing;

pub use ring::{KeyError, Keyring};
