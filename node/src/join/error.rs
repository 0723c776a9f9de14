//! Why a node could not join, or could not be given its certificate.

use crate::cluster::ClusterError;
use crate::keys::KeyError;
use crate::state::Rejection;
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("join: a join token is accepted only over TLS")]
    NotOverTls,
    #[error("node_id: must be at least 1")]
    BadNodeId,
    /// A malformed token or certificate request.
    #[error(transparent)]
    BadInput(TlsError),
    #[error("join_token: the token is for another cluster (CA fingerprint differs)")]
    OtherCluster,
    #[error("join: too many attempts from {0}; wait a minute")]
    TooManyAttempts(std::net::IpAddr),
    /// The replicated state refused to spend the token.
    #[error("{0}")]
    Refused(Rejection),
    #[error("this node has no cluster CA yet; retry in a moment")]
    NoCa,
    #[error("{0}")]
    Precondition(String),
    #[error("the cluster CA: {0}")]
    Tls(TlsError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Cluster(ClusterError),
}

impl From<ClusterError> for JoinError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Rejected(r) => JoinError::Refused(r),
            ClusterError::Precondition(m) => JoinError::Precondition(m),
            e => JoinError::Cluster(e),
        }
    }
}
