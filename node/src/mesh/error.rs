//! Everything the mesh answers a client with besides the instance's own
//! response, and the one place such an answer is made.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

use crate::state::ContainerKey;
use crate::tokens::TokenError;

/// The body every mesh response carries.
pub type RespBody = BoxBody<Bytes, hyper::Error>;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("no container is served at host {0:?}")]
    UnknownHost(String),
    #[error("no container {} in namespace {}", .0.name(), .0.namespace())]
    UnknownContainer(ContainerKey),
    /// A private container's caller has no valid token for it.
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0} has {1} requests queued; retry")]
    QueueFull(ContainerKey, usize),
    #[error("{0} did not answer within its timeout of {1}s")]
    Timeout(ContainerKey, u64),
    #[error("could not resume instance {id}: {message}")]
    Resume { id: String, message: String },
    #[error("bad request path: {0}")]
    BadPath(String),
    #[error("the instance did not answer: {0}")]
    Upstream(String),
    /// Another node's mesh could not be reached (nothing was sent): that
    /// node is avoided for a few seconds.
    #[error("node {0}'s mesh is unreachable: {1}")]
    NodeUnreachable(crate::state::NodeId, String),
}

/// The header on every answer the mesh makes itself (not the instance's):
/// what went wrong, e.g. `timeout` or `upstream`.
pub const ERROR_HEADER: &str = "x-rouse-error";

impl MeshError {
    pub fn status(&self) -> StatusCode {
        match self {
            MeshError::UnknownHost(_) | MeshError::UnknownContainer(_) => StatusCode::NOT_FOUND,
            MeshError::Token(TokenError::WrongScope(_)) => StatusCode::FORBIDDEN,
            MeshError::Token(_) => StatusCode::UNAUTHORIZED,
            MeshError::QueueFull(..) => StatusCode::SERVICE_UNAVAILABLE,
            MeshError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
            MeshError::Resume { .. } | MeshError::Upstream(_) | MeshError::NodeUnreachable(..) => {
                StatusCode::BAD_GATEWAY
            }
            MeshError::BadPath(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A short name of the error, for [`ERROR_HEADER`].
    pub fn kind(&self) -> &'static str {
        match self {
            MeshError::UnknownHost(_) => "unknown-host",
            MeshError::UnknownContainer(_) => "unknown-container",
            MeshError::Token(_) => "token",
            MeshError::QueueFull(..) => "queue-full",
            MeshError::Timeout(..) => "timeout",
            MeshError::Resume { .. } => "resume",
            MeshError::BadPath(_) => "bad-path",
            MeshError::Upstream(_) => "upstream",
            MeshError::NodeUnreachable(..) => "node-unreachable",
        }
    }

    /// The response a client gets: the status, a one-line reason, and the
    /// headers the status calls for.
    pub fn into_response(self) -> Response<RespBody> {
        let status = self.status();
        let kind = self.kind();
        let mut r = text(status, format!("rouse: {self}"));
        r.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(kind));
        match status {
            StatusCode::UNAUTHORIZED => {
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"rouse\""),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<RespBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into() + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_headers() {
        let k = ContainerKey::new("shop", "web");
        let r = MeshError::Token(TokenError::Missing).into_response();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key(http::header::WWW_AUTHENTICATE));
        let r = MeshError::Token(TokenError::WrongScope("x".into())).into_response();
        assert_eq!(r.status(), 403);
        let r = MeshError::QueueFull(k.clone(), 1000).into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
        assert_eq!(MeshError::Timeout(k.clone(), 10).status(), 504);
        // The mesh's own answers say so (triggers retry platform failures).
        assert_eq!(r.headers()[ERROR_HEADER], "queue-full");
        let r = MeshError::NodeUnreachable(3, "refused".into()).into_response();
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()[ERROR_HEADER], "node-unreachable");
        assert_eq!(
            MeshError::UnknownContainer(k).to_string(),
            "no container web in namespace shop"
        );
    }
}
