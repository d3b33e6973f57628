//! Bearer-token check for `/api/*`, in one place. Tenant-scoped keys come with the
//! security work; until then every API call is an operator call.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Rejects requests without `Authorization: Bearer <admin token>` with 401.
pub(crate) async fn require_admin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let expected = state.admin_token.as_deref();
    match check(header, expected) {
        Ok(()) => Ok(next.run(req).await),
        Err(message) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)),
    }
}

const EXPECTED: &str = "expected `Authorization: Bearer <token>`";

/// Why an `Authorization` header value does not authorise an API call, if it does not.
fn check(header: Option<&str>, expected: Option<&str>) -> Result<(), String> {
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
    match expected {
        Some(e) if constant_time_eq(token.as_bytes(), e.as_bytes()) => Ok(()),
        _ => Err("invalid token".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{check, constant_time_eq};

    #[test]
    fn each_wrong_header_says_what_is_wrong() {
        let t = Some("0123456789abcdef");
        assert_eq!(check(Some("Bearer 0123456789abcdef"), t), Ok(()));
        assert_eq!(check(Some("bearer  0123456789abcdef "), t), Ok(()));
        let err = |h| check(h, t).unwrap_err();
        assert!(err(None).starts_with("missing Authorization header: expected `Authorization: Bearer <token>`"));
        assert!(
            err(Some("0123456789abcdef")).contains("without the `Bearer ` prefix"),
            "{}",
            err(Some("x"))
        );
        assert!(err(Some("Basic abc")).starts_with("expected `Authorization: Bearer <token>`"));
        assert!(err(Some("Bearer")).contains("is VRSKY_ADMIN_TOKEN set"));
        assert!(err(Some("Bearer ")).contains("the token after `Bearer` is empty"));
        assert_eq!(err(Some("Bearer nope")), "invalid token");
        assert_eq!(check(Some("Bearer x"), None).unwrap_err(), "invalid token");
    }

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
