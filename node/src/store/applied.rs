//! What the state machine holds: the domain state, the last applied log
//! id and the membership.

use openraft::{BasicNode, LogId, StoredMembership};
use serde::{Deserialize, Serialize};

use crate::state::{NodeId, StateData};

/// What the state machine holds besides the domain state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub data: StateData,
    /// Bumped by every applied entry that changed a container, a node or
    /// an instance: what placement depends on (not replicated, not stored).
    #[serde(skip)]
    pub placement_inputs: u64,
}
