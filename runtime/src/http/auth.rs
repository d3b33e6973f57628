//! Who is calling `/api/*`, and what they may touch, in one place.
//!
//! - The admin token (`admin_token`) is the operator: everything.
//! - A tenant API key (`vrsky_<id>_<secret>`, see [`crate::api_keys`]) is its tenant:
//!   `/api/tenants/{t}/...` of its own tenant only. Another tenant's paths answer the same
//!   404 as a tenant that does not exist; platform operations (listing and creating
//!   tenants, deleting one, API keys, the tree, the audit log) answer 403.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use vrsky_actors::TenantId;

use super::AppState;
use super::error::ApiError;
use crate::api_keys;

use vrsky_actors::components::signature::constant_time_eq;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator (admin token).
    Admin,
    /// A tenant, by one of its API keys.
    Tenant {
        /// Whose key.
        tenant: TenantId,
        /// Which key.
        key_id: String,
    },
}

impl Principal {
    /// How the audit log names it.
    pub fn actor(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Tenant { key_id, .. } => format!("api_key:{key_id}"),
        }
    }
}

const EXPECTED: &str = "expected `Authorization: Bearer <token>`";

/// The bearer token of an `Authorization` header value, or what is wrong with it.
pub(crate) fn bearer(header: Option<&str>) -> Result<&str, String> {
    let Some(value) = header else {
        return Err(format!("missing Authorization header: {EXPECTED}"));
    };
    let value = value.trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        // `Bearer ` with an empty shell variable after it: trailing blanks are not sent.
        None if value.eq_ignore_ascii_case("bearer") => "",
        _ => return Err(format!("{EXPECTED}, got a header without the `Bearer ` prefix")),
    };
    if token.is_empty() {
        return Err(format!(
            "the token after `Bearer` is empty ({EXPECTED}; is VRSKY_ADMIN_TOKEN set in this shell?)"
        ));
    }
    Ok(token)
}

/// Whether a header carries the admin token.
pub(crate) fn is_admin(header: Option<&str>, admin_token: Option<&str>) -> bool {
    match (bearer(header), admin_token) {
        (Ok(t), Some(e)) => constant_time_eq(t.as_bytes(), e.as_bytes()),
        _ => false,
    }
}

/// A path's segments below `/api` (handlers nested under `/api` see the path without it).
pub(crate) fn api_segments(path: &str) -> std::str::Split<'_, char> {
    path.strip_prefix("/api")
        .unwrap_or(path)
        .trim_start_matches('/')
        .split('/')
}

/// The tenant a path under `/api` names, if it is a tenant path (the raw segment: a
/// percent-encoded spelling is not the tenant).
pub(crate) fn path_tenant(path: &str) -> Option<&str> {
    let mut seg = api_segments(path);
    match (seg.next(), seg.next()) {
        (Some("tenants"), Some(t)) if !t.is_empty() => Some(t),
        _ => None,
    }
}

/// What a principal may do on `method path` (a path under `/api`). Pure.
pub fn authorize(p: &Principal, method: &Method, path: &str) -> Result<(), ApiError> {
    let Principal::Tenant { tenant, .. } = p else {
        return Ok(());
    };
    let forbidden = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a tenant API key cannot do this: it is an operator call (use the admin token)",
        )
    };
    let mut seg = api_segments(path);
    match (seg.next(), seg.next(), seg.next()) {
        (Some("tenants"), Some(t), next) if !t.is_empty() => {
            if t != tenant.as_str() {
                // The same answer as a tenant that does not exist.
                return Err(ApiError::not_found(format!("tenant {t} not found")));
            }
            match next {
                None if method == Method::GET => Ok(()),
                None => Err(forbidden()),
                Some("api-keys") => Err(forbidden()),
                Some(_) => Ok(()),
            }
        }
        _ => Err(forbidden()),
    }
}

/// Authenticates `/api/*` calls (401 with what is wrong), authorizes them (403, or 404
/// outside the key's tenant), and hands the [`Principal`] to the handlers and the audit.
pub(crate) async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let principal = match bearer(header) {
        Err(message) => Err(message),
        Ok(_) if is_admin(header, state.admin_token.as_deref()) => Ok(Principal::Admin),
        Ok(token) => match api_keys::KeyParts::parse(token) {
            None => Err("invalid token".to_owned()),
            Some(parts) => match state.control.db().api_key(parts.id).await {
                Ok(Some(row))
                    if constant_time_eq(api_keys::sha256_hex(token).as_bytes(), row.key_sha256.as_bytes()) =>
                {
                    Ok(Principal::Tenant {
                        tenant: row.tenant_id,
                        key_id: row.id,
                    })
                }
                Ok(_) => Err("invalid token".to_owned()),
                Err(e) => {
                    return ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!("cannot check the API key: {e}"),
                    )
                    .with_retry_after(1)
                    .into_response();
                }
            },
        },
    };
    let principal = match principal {
        Ok(p) => p,
        Err(message) => {
            super::audit::record_failed_auth(&state, req.method(), req.uri().path(), &message);
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
        }
    };
    if let Err(e) = authorize(&principal, req.method(), req.uri().path()) {
        return e.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn each_wrong_header_says_what_is_wrong() {
        let t = Some("0123456789abcdef");
        assert!(is_admin(Some("Bearer 0123456789abcdef"), t));
        assert!(is_admin(Some("bearer  0123456789abcdef "), t));
        assert!(!is_admin(Some("Bearer nope"), t));
        assert!(!is_admin(Some("Bearer x"), None));
        let err = |h| bearer(h).unwrap_err();
        assert!(err(None).starts_with("missing Authorization header: expected `Authorization: Bearer <token>`"));
        assert!(err(Some("0123456789abcdef")).contains("without the `Bearer ` prefix"));
        assert!(err(Some("Basic abc")).starts_with("expected `Authorization: Bearer <token>`"));
        assert!(err(Some("Bearer")).contains("is VRSKY_ADMIN_TOKEN set"));
        assert!(err(Some("Bearer ")).contains("the token after `Bearer` is empty"));
    }

    #[test]
    fn a_tenant_key_reaches_its_own_tenant_only() {
        let a = Principal::Tenant {
            tenant: TenantId::new("a").unwrap(),
            key_id: "k".into(),
        };
        let ok = |m: Method, p: &str| authorize(&a, &m, p).is_ok();
        let status = |m: Method, p: &str| authorize(&a, &m, p).unwrap_err().status.as_u16();
        assert!(ok(Method::GET, "/api/tenants/a"));
        assert!(ok(Method::POST, "/api/tenants/a/integrations"));
        assert!(ok(Method::DELETE, "/api/tenants/a/dead-letters/x"));
        assert_eq!(status(Method::GET, "/api/tenants/b"), 404);
        assert_eq!(status(Method::POST, "/api/tenants/b/integrations"), 404);
        assert_eq!(status(Method::GET, "/api/tenants/ab/stats"), 404);
        assert_eq!(status(Method::DELETE, "/api/tenants/a"), 403);
        assert_eq!(status(Method::POST, "/api/tenants/a/api-keys"), 403);
        assert_eq!(status(Method::GET, "/api/tenants"), 403);
        assert_eq!(status(Method::POST, "/api/tenants"), 403);
        assert_eq!(status(Method::GET, "/api/tree"), 403);
        assert_eq!(status(Method::GET, "/api/audit"), 403);
        assert!(authorize(&Principal::Admin, &Method::DELETE, "/api/tenants/b").is_ok());
        // Under the `/api` nest, handlers see the path without its prefix.
        assert!(ok(Method::GET, "/tenants/a/stats"));
        assert_eq!(status(Method::GET, "/tenants/b/stats"), 404);
        assert_eq!(status(Method::GET, "/tree"), 403);
        assert_eq!(
            status(Method::GET, "/tenants/%61/stats"),
            404,
            "an encoded spelling is not the tenant"
        );
    }
}
