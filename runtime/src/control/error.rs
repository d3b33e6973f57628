//! The control layer's one error type: a small `Copy` kind that callers match (and that
//! maps to one HTTP status, later one gRPC code), a message, the field at fault for
//! invalid input, and the underlying error when there is one.

use std::error::Error as StdError;
use std::fmt;

use vrsky_actors::components::SpecError;
use vrsky_actors::message::StoreError;
use vrsky_actors::tenant::Refusal;
use vrsky_supervision::SupervisorError;

use crate::db::DbError;
use crate::platform::PlatformError;

/// What went wrong, by the answer the caller should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlErrorKind {
    /// The named thing does not exist (404).
    NotFound,
    /// The request conflicts with the current state: it changed meanwhile, or is in the
    /// wrong state for it (409; gRPC `FAILED_PRECONDITION`).
    Conflict,
    /// What it would create exists already (409; gRPC `ALREADY_EXISTS`).
    AlreadyExists,
    /// A limit is reached (409; gRPC `RESOURCE_EXHAUSTED`).
    Exhausted,
    /// The request is malformed or invalid (400).
    Invalid,
    /// A dependency is down or a subtree is (re)starting; retrying may help (503).
    Unavailable,
    /// A bug or corrupt state (500).
    Internal,
}

impl ControlErrorKind {
    /// Whether it is answered 409 (conflict, exists already, or at a limit).
    pub fn is_conflict(self) -> bool {
        matches!(
            self,
            ControlErrorKind::Conflict | ControlErrorKind::AlreadyExists | ControlErrorKind::Exhausted
        )
    }
}

/// A control operation that failed.
#[derive(Debug)]
pub struct ControlError {
    kind: ControlErrorKind,
    message: String,
    field: Option<String>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl ControlError {
    /// An error of `kind`.
    pub fn new(kind: ControlErrorKind, message: impl Into<String>) -> Self {
        ControlError {
            kind,
            message: message.into(),
            field: None,
            source: None,
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ControlErrorKind::NotFound, message)
    }

    /// 409: in conflict with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ControlErrorKind::Conflict, message)
    }

    /// 409: exists already.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ControlErrorKind::AlreadyExists, message)
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ControlErrorKind::Unavailable, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ControlErrorKind::Internal, message)
    }

    /// 400, naming the offending field by its path.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ControlError {
            field: Some(field.into()),
            ..Self::new(ControlErrorKind::Invalid, message)
        }
    }

    /// The same error, carrying its cause.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// An error of `kind` whose message is `context: cause`.
    pub fn caused(kind: ControlErrorKind, context: &str, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::new(kind, format!("{context}: {source}")).with_source(source)
    }

    /// Which answer it gets.
    pub fn kind(&self) -> ControlErrorKind {
        self.kind
    }

    /// The field at fault (invalid input only).
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The message without the field.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl StdError for ControlError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<DbError> for ControlError {
    fn from(e: DbError) -> Self {
        let kind = match &e {
            DbError::Conflict => ControlErrorKind::AlreadyExists,
            DbError::Corrupt(_) => ControlErrorKind::Internal,
            _ => ControlErrorKind::Unavailable,
        };
        Self::caused(kind, "metadata store", e)
    }
}

impl From<SpecError> for ControlError {
    fn from(e: SpecError) -> Self {
        Self::invalid(e.field, e.message)
    }
}

impl From<PlatformError> for ControlError {
    fn from(e: PlatformError) -> Self {
        Self::new(ControlErrorKind::Unavailable, e.to_string()).with_source(e)
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        Self::new(ControlErrorKind::Unavailable, e.to_string()).with_source(e)
    }
}

impl From<SupervisorError> for ControlError {
    fn from(e: SupervisorError) -> Self {
        Self::new(ControlErrorKind::Unavailable, e.to_string()).with_source(e)
    }
}

impl From<Refusal> for ControlError {
    fn from(r: Refusal) -> Self {
        let kind = match &r {
            Refusal::Missing(_) => ControlErrorKind::NotFound,
            Refusal::Exists(_) => ControlErrorKind::AlreadyExists,
            Refusal::AtLimit(_) => ControlErrorKind::Exhausted,
            Refusal::Conflict(_) => ControlErrorKind::Conflict,
        };
        Self::new(kind, r.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_survive_conversion_and_sources_are_kept() {
        let e = ControlError::from(DbError::Conflict);
        assert_eq!(e.kind(), ControlErrorKind::AlreadyExists);
        assert!(e.source().is_some());
        let e = ControlError::from(Refusal::AtLimit("full".into()));
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (ControlErrorKind::Exhausted, "full")
        );
        assert!(ControlErrorKind::Exhausted.is_conflict() && ControlErrorKind::AlreadyExists.is_conflict());
        assert!(!ControlErrorKind::Invalid.is_conflict());
        let e = ControlError::invalid("filters[0].path", "must start with /");
        assert_eq!(e.to_string(), "filters[0].path: must start with /");
        assert_eq!(e.field(), Some("filters[0].path"));
    }
}
