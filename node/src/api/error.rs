//! The one place errors become gRPC statuses: the public API's, and the
//! peer and join services' (which convert to [`ApiError`] first).

use tonic::Status;

use crate::auth::AuthError;
use crate::cluster::ClusterError;
use crate::join::JoinError;
use crate::keys::KeyError;
use crate::state::validate::Invalid;
use crate::state::Rejection;
use crate::tokens::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// A caller of the peer service that is not a cluster member.
    #[error("peer: {0}")]
    NotAMember(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Join(#[from] JoinError),
    /// Another node's answer, relayed as it came.
    #[error("{}", .0.message())]
    Relayed(#[from] Status),
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError::Cluster(ClusterError::Rejected(r))
    }
}

impl ApiError {
    /// `field: rule` as an invalid-argument error.
    pub fn invalid(field: &str, rule: impl Into<String>) -> Self {
        ApiError::Invalid(Invalid {
            field: field.into(),
            rule: rule.into(),
        })
    }
}

fn cluster_status(c: ClusterError) -> Status {
    match c {
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
        ClusterError::Membership(_) => Status::failed_precondition(c.to_string()),
        c if c.is_unavailable() => Status::unavailable(c.to_string()),
        c => Status::internal(c.to_string()),
    }
}

fn key_status(k: KeyError) -> Status {
    match k {
        KeyError::Cluster(c) => cluster_status(c),
        KeyError::Sealing(_) | KeyError::Token(_) => Status::internal(k.to_string()),
        KeyError::NoDataKey
        | KeyError::NoMasterKey(_)
        | KeyError::WrongMasterKey(_)
        | KeyError::Precondition(_) => Status::failed_precondition(k.to_string()),
    }
}

fn join_status(j: JoinError) -> Status {
    match j {
        JoinError::NotOverTls | JoinError::OtherCluster | JoinError::Refused(_) => {
            Status::permission_denied(j.to_string())
        }
        JoinError::BadNodeId | JoinError::BadInput(_) => Status::invalid_argument(j.to_string()),
        JoinError::TooManyAttempts(_) => Status::resource_exhausted(j.to_string()),
        JoinError::NoCa | JoinError::Cluster(_) => Status::unavailable(j.to_string()),
        JoinError::Precondition(_) => Status::failed_precondition(j.to_string()),
        JoinError::Tls(_) => Status::internal(j.to_string()),
        JoinError::Keys(k) => key_status(k),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(i) => Status::invalid_argument(i.to_string()),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::Unimplemented(m) => Status::unimplemented(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Internal(m) => Status::internal(m),
            e @ ApiError::NotAMember(_) => Status::unauthenticated(e.to_string()),
            ApiError::Auth(a) => match a {
                AuthError::Missing | AuthError::Invalid => Status::unauthenticated(a.to_string()),
                AuthError::Scope(_) | AuthError::AdminOnly => {
                    Status::permission_denied(a.to_string())
                }
            },
            ApiError::Cluster(c) => cluster_status(c),
            ApiError::Keys(k) => key_status(k),
            ApiError::Token(t) => Status::internal(t.to_string()),
            ApiError::Join(j) => join_status(j),
            ApiError::Relayed(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_kind_has_its_code() {
        let code = |e: ApiError| Status::from(e).code();
        assert_eq!(code(ApiError::invalid("f", "r")), Code::InvalidArgument);
        assert_eq!(code(AuthError::Missing.into()), Code::Unauthenticated);
        assert_eq!(code(AuthError::AdminOnly.into()), Code::PermissionDenied);
        assert_eq!(code(Rejection::Conflict("x".into()).into()), Code::Aborted);
        assert_eq!(code(ClusterError::NoLeader.into()), Code::Unavailable);
        assert_eq!(code(KeyError::NoDataKey.into()), Code::FailedPrecondition);
        assert_eq!(
            code(JoinError::Refused(Rejection::FailedPrecondition("spent".into())).into()),
            Code::PermissionDenied
        );
        assert_eq!(code(JoinError::NoCa.into()), Code::Unavailable);
        let relayed = Status::not_found("on node 2");
        assert_eq!(code(ApiError::Relayed(relayed)), Code::NotFound);
    }
}
