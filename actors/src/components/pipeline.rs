//! Filters then converters, built once per integration from its spec.

use serde_json::Value;

use super::{ConvertError, Converter, ConverterSpec, Filter, FilterSpec, JsonFieldFilter, JsonMapConverter};
use crate::envelope::Envelope;

/// What the pipeline made of a message.
// Returned once per message and matched at once: boxing the envelope would cost an
// allocation per message to save a move of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    /// Deliver this (possibly converted) envelope.
    Deliver(Envelope),
    /// Filter number `filter` (0-based) rejected it.
    Filtered {
        /// Index of the rejecting filter.
        filter: usize,
        /// Which filter, what it checks, and why the body failed it (for example, that
        /// the body is not JSON).
        reason: String,
    },
    /// Converter number `converter` failed; never retryable.
    ConvertFailed {
        /// Index of the failing converter.
        converter: usize,
        /// Why.
        error: ConvertError,
    },
}

/// The compiled filters and converters of one integration.
pub struct Pipeline {
    filters: Vec<Box<dyn Filter>>,
    converters: Vec<Box<dyn Converter>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("filters", &self.filters.len())
            .field("converters", &self.converters.len())
            .finish()
    }
}

impl Pipeline {
    /// Builds the pipeline from validated specs.
    pub fn from_specs(filters: &[FilterSpec], converters: &[ConverterSpec]) -> Self {
        Pipeline {
            filters: filters
                .iter()
                .map(|f| match f {
                    FilterSpec::JsonField { path, op, value } => {
                        Box::new(JsonFieldFilter::new(path.clone(), *op, value.clone())) as Box<dyn Filter>
                    }
                })
                .collect(),
            converters: converters
                .iter()
                .map(|c| match c {
                    ConverterSpec::JsonMap {
                        fields,
                        constants,
                        on_missing,
                    } => Box::new(JsonMapConverter::new(fields.clone(), constants.clone(), *on_missing))
                        as Box<dyn Converter>,
                })
                .collect(),
        }
    }

    /// Whether it has no filter and no converter (every message is delivered as it came).
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.converters.is_empty()
    }

    /// Runs every filter, then every converter. The body is parsed as JSON at most once
    /// per stage, and only when there is a component to use it.
    pub fn run(&self, envelope: Envelope) -> Outcome {
        if self.filters.is_empty() && self.converters.is_empty() {
            return Outcome::Deliver(envelope);
        }
        let parsed: Result<Value, serde_json::Error> = serde_json::from_slice(&envelope.payload);
        let json = parsed.as_ref().ok();
        for (i, f) in self.filters.iter().enumerate() {
            if !f.matches(&envelope, json) {
                let reason = match &parsed {
                    Err(e) => format!(
                        "filter {i} ({}): the body is not JSON ({e}), so it has no field to match",
                        f.describe()
                    ),
                    Ok(_) => format!("filter {i} ({}) did not match", f.describe()),
                };
                return Outcome::Filtered { filter: i, reason };
            }
        }
        let mut env = envelope;
        let mut json = parsed.ok();
        for (i, c) in self.converters.iter().enumerate() {
            env = match c.convert(env, json.as_ref()) {
                Ok(e) => e,
                Err(error) => return Outcome::ConvertFailed { converter: i, error },
            };
            if i + 1 < self.converters.len() {
                json = serde_json::from_slice(&env.payload).ok();
            }
        }
        Outcome::Deliver(env)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::components::FieldOp;
    use serde_json::json;

    fn with_body(body: &[u8]) -> Envelope {
        Envelope {
            payload: bytes::Bytes::copy_from_slice(body),
            ..crate::testkit::envelope(None)
        }
    }

    fn order_filter() -> Pipeline {
        let f = FilterSpec::JsonField {
            path: "/type".into(),
            op: FieldOp::Eq,
            value: Some(json!("order")),
        };
        Pipeline::from_specs(&[f], &[])
    }

    #[test]
    fn a_filtered_message_says_which_filter_and_why() {
        match order_filter().run(with_body(br#"{"type":"refund"}"#)) {
            Outcome::Filtered { filter, reason } => {
                assert_eq!(filter, 0);
                assert_eq!(reason, r#"filter 0 (json_field /type eq "order") did not match"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            order_filter().run(with_body(br#"{"type":"order"}"#)),
            Outcome::Deliver(_)
        ));
    }

    #[test]
    fn a_body_that_is_not_json_is_filtered_with_the_parse_error() {
        match order_filter().run(with_body(b"<order id=\"42\"/>")) {
            Outcome::Filtered { reason, .. } => {
                assert!(
                    reason.contains("the body is not JSON (expected value at line 1 column 1)"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
