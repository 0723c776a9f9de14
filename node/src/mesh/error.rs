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
}

impl MeshError {
    pub fn status(&self) -> StatusCode {
        match self {
            MeshError::UnknownHost(_) | MeshError::UnknownContainer(_) => StatusCode::NOT_FOUND,
            MeshError::Token(TokenError::WrongScope(_)) => StatusCode::FORBIDDEN,
            MeshError::Token(_) => StatusCode::UNAUTHORIZED,
            MeshError::QueueFull(..) => StatusCode::SERVICE_UNAVAILABLE,
            MeshError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
            MeshError::Resume { .. } | MeshError::Upstream(_) => StatusCode::BAD_GATEWAY,
            MeshError::BadPath(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The response a client gets: the status, a one-line reason, and the
    /// headers the status calls for.
    pub fn into_response(self) -> Response<RespBody> {
        let status = self.status();
        let mut r = text(status, format!("rouse: {self}"));
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
        assert_eq!(
            MeshError::UnknownContainer(k).to_string(),
            "no container web in namespace shop"
        );
    }
}
