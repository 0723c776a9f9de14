//! What can go wrong talking to the cluster, typed so that callers decide
//! on a retry by kind, never by message text.

use std::time::Duration;

use crate::state::{NodeId, Rejection};

/// Metadata key a peer sets when it refused a forwarded call because it is
/// not the leader (the call was not applied, so it is safe to retry).
pub const NOT_LEADER: &str = "x-rouse-not-leader";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no leader is known: the cluster is electing one or has lost its quorum")]
    NoLeader,
    /// This node has been cut off from a working majority for a while.
    /// `in_flight`: the write had been sent to a leader before that was
    /// known, so it may still apply.
    #[error(
        "no quorum: node {node} has heard from no leader backed by a majority since {} ({} s ago); \
         writes and linearizable reads are refused until it does (its running containers keep serving){}",
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(*since_ms)),
        super::now_ms().saturating_sub(*since_ms) / 1000,
        if *in_flight { "; this write had already been sent and may still apply" } else { "" }
    )]
    NoQuorum {
        node: NodeId,
        since_ms: u64,
        in_flight: bool,
    },
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The leader could not be reached. `never_sent`: the call did not
    /// leave this node (no connection), so it certainly did not apply.
    #[error("the leader (node {leader}) at {addr} could not be reached: {message}")]
    LeaderUnreachable {
        leader: NodeId,
        addr: String,
        message: String,
        never_sent: bool,
    },
    #[error("the leader answered: {0}")]
    Remote(tonic::Status),
    #[error("timed out after {0:?} waiting for the cluster")]
    Timeout(Duration),
    /// The write is committed, but this node is too far behind to show it.
    #[error("the change was committed at log index {0}, but this node has not applied it yet; read it again later")]
    CommittedNotApplied(u64),
    #[error("node {0} is not a member of the cluster")]
    UnknownMember(NodeId),
    #[error("{0}")]
    Precondition(String),
    #[error("raft stopped on this node: {0}")]
    Fatal(#[from] openraft::error::Fatal<NodeId>),
    #[error("membership change refused: {0}")]
    Membership(#[from] openraft::error::ChangeMembershipError<NodeId>),
    #[error("encoding a peer message: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error("peer address: {0}")]
    Address(#[from] tonic::transport::Error),
}

impl ClusterError {
    /// True for failures a caller may retry without risk of a double apply.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader
                | ClusterError::NoQuorum { .. }
                | ClusterError::LeaderUnreachable { .. }
                | ClusterError::Timeout(_)
        )
    }

    /// True when the write certainly did not reach the leader, so sending
    /// it again cannot apply it twice.
    pub fn never_sent(&self) -> bool {
        match self {
            ClusterError::NoLeader => true,
            ClusterError::NoQuorum { in_flight, .. } => !*in_flight,
            ClusterError::LeaderUnreachable { never_sent, .. } => *never_sent,
            ClusterError::Remote(s) => status_never_sent(s),
            _ => false,
        }
    }
}

/// Whether a peer call failed before it left this node: the peer refused
/// it as a follower (it applied nothing), or no connection was made (a
/// connect error anywhere in the status's source chain).
pub fn status_never_sent(status: &tonic::Status) -> bool {
    if status.metadata().get(NOT_LEADER).is_some() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_sent_is_read_from_types_not_text() {
        let refused = {
            let mut s = tonic::Status::unavailable("not the leader");
            s.metadata_mut()
                .insert(NOT_LEADER, tonic::metadata::MetadataValue::from_static("1"));
            s
        };
        assert!(status_never_sent(&refused));
        // A connect error, as tonic reports one.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        assert_eq!(connect.code(), tonic::Code::Unavailable);
        assert!(status_never_sent(&connect));
        // The same words without the type prove nothing.
        let words = tonic::Status::unavailable("error trying to connect: tcp connect error");
        assert!(!status_never_sent(&words));
        assert!(!ClusterError::Remote(words).never_sent());
        assert!(ClusterError::NoLeader.never_sent());
    }
}
