//! Filters then converters, built once per integration from its spec.

use serde_json::Value;

use super::{ConvertError, Converter, ConverterSpec, Filter, FilterSpec, JsonFieldFilter, JsonMapConverter};
use crate::envelope::Envelope;

/// What the pipeline made of a message.
#[derive(Debug)]
pub enum Outcome {
    /// Deliver this (possibly converted) envelope.
    Deliver(Envelope),
    /// Filter number `filter` (0-based) rejected it.
    Filtered {
        /// Index of the rejecting filter.
        filter: usize,
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

    /// Runs every filter, then every converter. The body is parsed as JSON at most once
    /// per stage, and only when there is a component to use it.
    pub fn run(&self, envelope: Envelope) -> Outcome {
        if self.filters.is_empty() && self.converters.is_empty() {
            return Outcome::Deliver(envelope);
        }
        let json: Option<Value> = serde_json::from_slice(&envelope.payload).ok();
        for (i, f) in self.filters.iter().enumerate() {
            if !f.matches(&envelope, json.as_ref()) {
                return Outcome::Filtered { filter: i };
            }
        }
        let mut env = envelope;
        let mut json = json;
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
