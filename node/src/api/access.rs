//! Who is calling, and whether they may: every handler starts here.

use tonic::Request;

use super::error::ApiError;
use super::service::Api;
use crate::auth::{AuthError, Principal};

/// `authorization: Bearer …` of a request.
pub(super) fn bearer<T>(req: &Request<T>) -> Option<&str> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

impl Api {
    /// The caller, from its API key.
    pub(super) fn principal<T>(&self, req: &Request<T>) -> Result<Principal, ApiError> {
        let p = {
            let sm = self.cluster.sm.read();
            crate::auth::authenticate(&sm.data, bearer(req))?
        };
        if let Some(id) = bearer(req).and_then(crate::auth::key_id) {
            // To the minute: enough for `apikey list`, cheap to keep.
            let now = crate::cluster::now_ms();
            self.key_uses.record(id, now - now % 60_000);
        }
        Ok(p)
    }

    pub(super) fn require_admin<T>(&self, req: &Request<T>) -> Result<(), ApiError> {
        match self.principal(req)? {
            Principal::Admin => Ok(()),
            _ => Err(AuthError::AdminOnly.into()),
        }
    }

    pub(super) fn require_ns<T>(&self, req: &Request<T>, ns: &str) -> Result<Principal, ApiError> {
        let p = self.principal(req)?;
        match &p {
            Principal::Namespace(n) if n != ns => Err(AuthError::Scope(n.clone()).into()),
            _ => Ok(p),
        }
    }

    /// The caller of a listing, which must also be allowed `ns` when it
    /// names one (empty: every namespace it may see).
    pub(super) fn list_scope<T>(&self, req: &Request<T>, ns: &str) -> Result<Principal, ApiError> {
        if ns.is_empty() {
            self.principal(req)
        } else {
            self.require_ns(req, ns)
        }
    }
}
