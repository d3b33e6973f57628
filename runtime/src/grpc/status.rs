//! REST error answers as gRPC status codes: one table, so both protocols refuse the same
//! calls the same way.

use axum::http::StatusCode;
use tonic::Code;

/// The gRPC code of a REST error with `status` and error `code`. Pure.
pub(crate) fn status_of(status: StatusCode, code: &str) -> Code {
    match status.as_u16() {
        400 | 413 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 => Code::Unimplemented,
        409 => match code {
            "already_exists" => Code::AlreadyExists,
            "limit_reached" => Code::ResourceExhausted,
            _ => Code::FailedPrecondition,
        },
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        500 => Code::Internal,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rest_refusal_has_its_code() {
        let code = |s: u16, c: &str| status_of(StatusCode::from_u16(s).unwrap_or(StatusCode::IM_A_TEAPOT), c);
        assert_eq!(code(400, "invalid"), Code::InvalidArgument);
        assert_eq!(code(401, "unauthorized"), Code::Unauthenticated);
        assert_eq!(code(403, "forbidden"), Code::PermissionDenied);
        assert_eq!(code(404, "not_found"), Code::NotFound);
        assert_eq!(code(409, "already_exists"), Code::AlreadyExists);
        assert_eq!(code(409, "limit_reached"), Code::ResourceExhausted);
        assert_eq!(code(409, "conflict"), Code::FailedPrecondition);
        assert_eq!(code(429, "too_many"), Code::ResourceExhausted);
        assert_eq!(code(503, "unavailable"), Code::Unavailable);
        assert_eq!(code(500, "internal"), Code::Internal);
        assert_eq!(code(418, ""), Code::Unknown);
    }
}
