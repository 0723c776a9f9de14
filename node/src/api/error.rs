//! The one place API errors become gRPC statuses.

use tonic::Status;

use crate::cluster::ClusterError;
use crate::state::validate::Invalid;
use crate::state::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError::Cluster(ClusterError::Rejected(r))
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(i) => Status::invalid_argument(i.to_string()),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::Unimplemented(m) => Status::unimplemented(m),
            ApiError::Cluster(c) => match c {
                ClusterError::Rejected(r) => match r {
                    Rejection::NotFound(m) => Status::not_found(m),
                    Rejection::AlreadyExists(m) => Status::already_exists(m),
                    Rejection::FailedPrecondition(m) => Status::failed_precondition(m),
                    Rejection::Conflict(m) => Status::aborted(m),
                },
                ClusterError::Remote(s) => s,
                ClusterError::UnknownMember(_) => Status::not_found(c.to_string()),
                ClusterError::CommittedNotApplied(_) => Status::deadline_exceeded(c.to_string()),
                ClusterError::Precondition(m) => Status::failed_precondition(m),
                c if c.is_unavailable() => Status::unavailable(c.to_string()),
                c => Status::internal(c.to_string()),
            },
        }
    }
}
