//! Validated identifiers. Every id is checked once, on construction; past that point
//! code may put it into a NATS subject, a KV key or a SQL row without further checks.

use std::fmt;
use std::str::FromStr;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct IdError {
    /// Which id (`tenant id`, `integration id`, `message id`).
    pub kind: &'static str,
    /// The rejected input, truncated to 80 characters.
    pub value: String,
    /// The rule it broke.
    pub rule: &'static str,
}

const SLUG_RULE: &str = "must match ^[a-z0-9][a-z0-9-]{0,62}$ (lowercase letters, digits and '-', 1 to 63 characters, not starting with '-')";

fn validate_slug(kind: &'static str, s: &str) -> Result<(), IdError> {
    let bytes = s.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdError {
            kind,
            value: s.chars().take(80).collect(),
            rule: SLUG_RULE,
        })
    }
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_slug($kind, &s)?;
                Ok(Self(s))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

slug_id!(
    /// A tenant: `^[a-z0-9][a-z0-9-]{0,62}$`.
    TenantId,
    "tenant id"
);
slug_id!(
    /// An integration, unique within its tenant: `^[a-z0-9][a-z0-9-]{0,62}$`.
    IntegrationId,
    "integration id"
);

/// A message: a UUIDv7 assigned at ingress, or a caller-chosen idempotency key of
/// 1 to 128 characters from `[A-Za-z0-9_-]` (safe in KV keys and subjects).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// A fresh time-ordered id.
    pub fn generate() -> Self {
        MessageId(uuid::Uuid::now_v7().simple().to_string())
    }

    /// Validates and wraps an id.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let ok =
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(MessageId(s))
        } else {
            Err(IdError {
                kind: "message id",
                value: s.chars().take(80).collect(),
                rule: "must be 1 to 128 characters from [A-Za-z0-9_-]",
            })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MessageId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slug_examples() {
        for ok in ["a", "0", "acme", "tenant-a", "a-", &"a".repeat(63)] {
            assert!(TenantId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "a b", "é", &"a".repeat(64)] {
            let err = TenantId::new(bad).unwrap_err();
            assert_eq!(err.kind, "tenant id");
        }
    }

    #[test]
    fn generated_message_ids_are_valid() {
        let id = MessageId::generate();
        assert_eq!(MessageId::new(id.as_str()).unwrap(), id);
        assert!(MessageId::new("has.dot").is_err());
        assert!(MessageId::new("").is_err());
    }

    proptest! {
        #![proptest_config(crate::testkit::proptest_config("../proptest-regressions/actors-ids.txt"))]
        #[test]
        fn slug_accepts_exactly_the_regex(s in "\\PC{0,70}") {
            let by_regex = {
                let b = s.as_bytes();
                !b.is_empty() && b.len() <= 63
                    && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                    && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            };
            prop_assert_eq!(IntegrationId::new(s.clone()).is_ok(), by_regex);
        }

        #[test]
        fn valid_slugs_round_trip(s in "[a-z0-9][a-z0-9-]{0,62}") {
            let id = TenantId::new(s.clone()).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
            let json = serde_json::to_string(&id).unwrap();
            let back: TenantId = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, id);
        }
    }
}
