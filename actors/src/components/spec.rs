//! Integration configuration as data: what the REST API accepts and the database stores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::IntegrationId;

/// Limits on a spec, written down next to the checks that use them.
const FILTERS_MAX: usize = 32;
const CONVERTERS_MAX: usize = 32;
const MAPPING_FIELDS_MAX: usize = 256;
const HEADERS_MAX: usize = 64;
const TIMEOUT_MS_MAX: u64 = 300_000;
const IN_FLIGHT_MAX: usize = 1024;

/// A whole integration: consumer -> filters -> converters -> producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSpec {
    /// Unique within the tenant.
    pub id: IntegrationId,
    /// The webhook receiver's settings.
    #[serde(default)]
    pub consumer: ConsumerSpec,
    /// Applied in order; a message any filter rejects is dropped.
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    /// Applied in order after the filters.
    #[serde(default)]
    pub converters: Vec<ConverterSpec>,
    /// Where messages go.
    pub producer: ProducerSpec,
    /// Deliveries in flight at once for this integration on one node.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Retries of failed deliveries (the specification's defaults when absent). Checked
    /// against the platform's retention by the runtime, which knows it.
    #[serde(default)]
    pub retry: crate::message::RetryPolicy,
}

fn default_in_flight() -> usize {
    32
}

/// The HTTP webhook consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Request headers carried to the producer (case-insensitive). `content-type` always is.
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Verify incoming webhooks' signatures; unsigned or badly signed ones get 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureSpec>,
}

/// How incoming webhooks are signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureSpec {
    /// The signature scheme: `standard-webhooks`.
    pub scheme: SignatureScheme,
    /// The shared secret, `whsec_<base64>`.
    pub secret: String,
}

/// Signature schemes a consumer can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureScheme {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
}

/// How deliveries are signed (Standard Webhooks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSpec {
    /// The shared secret, `whsec_<base64>`.
    pub secret: String,
}

/// One filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterSpec {
    /// A predicate on one field of a JSON body, addressed by JSON pointer (RFC 6901).
    JsonField {
        /// JSON pointer, for example `/event/type`.
        path: String,
        /// The comparison.
        op: FieldOp,
        /// The operand: a value for `eq`/`ne`, an array for `in`, absent for `exists`/`missing`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
    },
}

/// Comparisons a JSON field filter can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldOp {
    /// Field equals the value.
    Eq,
    /// Field is absent or differs from the value.
    Ne,
    /// Field is present.
    Exists,
    /// Field is absent.
    Missing,
    /// Field equals one of the array's values.
    In,
}

/// One converter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConverterSpec {
    /// Builds a new JSON object: each output pointer takes the value at an input pointer,
    /// and constants are set as given.
    JsonMap {
        /// Output pointer -> input pointer.
        #[serde(default)]
        fields: BTreeMap<String, String>,
        /// Output pointer -> constant value.
        #[serde(default)]
        constants: BTreeMap<String, Value>,
        /// What a missing input field does.
        #[serde(default)]
        on_missing: MissingField,
    },
}

/// Handling of a mapped input field that is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingField {
    /// Leave the output field out.
    #[default]
    Skip,
    /// Set the output field to `null`.
    Null,
    /// Fail the conversion (the message is not delivered).
    Error,
}

/// One producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProducerSpec {
    /// An HTTP call to a REST API.
    Http(HttpProducerSpec),
}

/// The HTTP producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProducerSpec {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Request method.
    #[serde(default)]
    pub method: HttpMethod,
    /// Extra request headers; they override forwarded ones of the same name.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Whole-request timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Sign each delivery (Standard Webhooks: `webhook-id` is the message id, the same on
    /// every attempt, `webhook-timestamp` the attempt's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSpec>,
    /// How a claim-checked payload (one in the object store) reaches the destination:
    /// `body`, streamed as the request body (the default), or `url`, an empty body and the
    /// object's presigned GET URL in `Vrsky-Payload-Url` for the destination to fetch.
    #[serde(default, skip_serializing_if = "PayloadDelivery::is_body")]
    pub payload_delivery: PayloadDelivery,
}

/// See [`HttpProducerSpec::payload_delivery`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadDelivery {
    /// The payload is the request body.
    #[default]
    Body,
    /// The request carries the payload's presigned URL instead.
    Url,
}

impl PayloadDelivery {
    fn is_body(&self) -> bool {
        *self == PayloadDelivery::Body
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// Methods the HTTP producer may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// POST (the default).
    #[default]
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
    /// GET (the body is still sent).
    Get,
}

/// A spec that parsed but does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Where, as a path into the JSON document (`filters[1].path`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

fn check_pointer(field: String, p: &str) -> Result<(), SpecError> {
    if p.is_empty() || p.starts_with('/') {
        Ok(())
    } else {
        Err(err(
            field,
            format!("{p:?} is not a JSON pointer (must be empty or start with '/')"),
        ))
    }
}

fn check_header_name(field: String, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(field, format!("{name:?} is not a valid HTTP header name")))
    }
}

/// What the API shows in place of a secret: signing secrets and producer header values.
/// Sent back in an update, it keeps the stored value.
pub const REDACTED: &str = "********";

impl IntegrationSpec {
    /// The spec as the API shows it: signing secrets and producer header values replaced
    /// by [`REDACTED`] (header values often carry credentials).
    pub fn redacted(&self) -> IntegrationSpec {
        let mut s = self.clone();
        if let Some(sig) = &mut s.consumer.signature {
            sig.secret = REDACTED.into();
        }
        let ProducerSpec::Http(http) = &mut s.producer;
        if let Some(signing) = &mut http.signing {
            signing.secret = REDACTED.into();
        }
        for v in http.headers.values_mut() {
            *v = REDACTED.into();
        }
        s
    }

    /// Every secret value of the spec, by field path: signing secrets and producer header
    /// values (what is masked in the API and encrypted at rest).
    pub fn secrets_mut(&mut self) -> Vec<(String, &mut String)> {
        let mut out = Vec::new();
        if let Some(sig) = &mut self.consumer.signature {
            out.push(("consumer.signature.secret".to_owned(), &mut sig.secret));
        }
        let ProducerSpec::Http(http) = &mut self.producer;
        if let Some(signing) = &mut http.signing {
            out.push(("producer.signing.secret".to_owned(), &mut signing.secret));
        }
        for (name, v) in http.headers.iter_mut() {
            out.push((format!("producer.headers.{name}"), v));
        }
        out
    }

    /// For an update: every value given as [`REDACTED`] takes the previous spec's (a
    /// client that read the spec, changed a field and sent it back keeps its secrets).
    pub fn keep_secrets_from(&mut self, previous: &IntegrationSpec) {
        if let (Some(sig), Some(old)) = (&mut self.consumer.signature, &previous.consumer.signature)
            && sig.secret == REDACTED
        {
            sig.secret = old.secret.clone();
        }
        let ProducerSpec::Http(http) = &mut self.producer;
        let ProducerSpec::Http(old) = &previous.producer;
        if let (Some(signing), Some(was)) = (&mut http.signing, &old.signing)
            && signing.secret == REDACTED
        {
            signing.secret = was.secret.clone();
        }
        for (name, v) in http.headers.iter_mut() {
            if v == REDACTED
                && let Some(was) = old.headers.get(name)
            {
                *v = was.clone();
            }
        }
    }

    /// Checks everything serde cannot; the URL itself is checked by the producer's builder.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.consumer.forward_headers.len() > HEADERS_MAX {
            return Err(err(
                "consumer.forward_headers",
                format!("at most {HEADERS_MAX} headers"),
            ));
        }
        for (i, h) in self.consumer.forward_headers.iter().enumerate() {
            check_header_name(format!("consumer.forward_headers[{i}]"), h)?;
        }
        if let Some(sig) = &self.consumer.signature {
            super::signature::Secret::parse(&sig.secret).map_err(|m| err("consumer.signature.secret", m))?;
        }
        let ProducerSpec::Http(http) = &self.producer;
        if let Some(signing) = &http.signing {
            super::signature::Secret::parse(&signing.secret).map_err(|m| err("producer.signing.secret", m))?;
        }
        if self.filters.len() > FILTERS_MAX {
            return Err(err("filters", format!("at most {FILTERS_MAX} filters")));
        }
        for (i, f) in self.filters.iter().enumerate() {
            let FilterSpec::JsonField { path, op, value } = f;
            check_pointer(format!("filters[{i}].path"), path)?;
            match (op, value) {
                (FieldOp::Eq | FieldOp::Ne, None) => {
                    return Err(err(format!("filters[{i}].value"), "required for eq and ne"));
                }
                (FieldOp::In, Some(Value::Array(_))) => {}
                (FieldOp::In, _) => {
                    return Err(err(format!("filters[{i}].value"), "must be an array for in"));
                }
                (FieldOp::Exists | FieldOp::Missing, Some(_)) => {
                    return Err(err(format!("filters[{i}].value"), "not allowed for exists and missing"));
                }
                _ => {}
            }
        }
        if self.converters.len() > CONVERTERS_MAX {
            return Err(err("converters", format!("at most {CONVERTERS_MAX} converters")));
        }
        for (i, c) in self.converters.iter().enumerate() {
            let ConverterSpec::JsonMap { fields, constants, .. } = c;
            if fields.len() + constants.len() > MAPPING_FIELDS_MAX {
                return Err(err(
                    format!("converters[{i}]"),
                    format!("at most {MAPPING_FIELDS_MAX} fields"),
                ));
            }
            if fields.is_empty() && constants.is_empty() {
                return Err(err(format!("converters[{i}]"), "needs at least one field or constant"));
            }
            for (out, input) in fields {
                check_pointer(format!("converters[{i}].fields"), out)?;
                check_pointer(format!("converters[{i}].fields[{out:?}]"), input)?;
                if out.is_empty() {
                    return Err(err(
                        format!("converters[{i}].fields"),
                        "the output pointer cannot be the root",
                    ));
                }
            }
            for out in constants.keys() {
                check_pointer(format!("converters[{i}].constants"), out)?;
                if out.is_empty() {
                    return Err(err(
                        format!("converters[{i}].constants"),
                        "the output pointer cannot be the root",
                    ));
                }
            }
        }
        let ProducerSpec::Http(http) = &self.producer;
        if http.timeout_ms == 0 || http.timeout_ms > TIMEOUT_MS_MAX {
            return Err(err("producer.timeout_ms", format!("must be 1 to {TIMEOUT_MS_MAX}")));
        }
        if http.headers.len() > HEADERS_MAX {
            return Err(err("producer.headers", format!("at most {HEADERS_MAX} headers")));
        }
        for name in http.headers.keys() {
            check_header_name("producer.headers".into(), name)?;
        }
        for (name, value) in &http.headers {
            if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                return Err(err(
                    format!("producer.headers[{name:?}]"),
                    "value has control characters",
                ));
            }
        }
        if self.max_in_flight == 0 || self.max_in_flight > IN_FLIGHT_MAX {
            return Err(err("max_in_flight", format!("must be 1 to {IN_FLIGHT_MAX}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(v: Value) -> Result<IntegrationSpec, String> {
        serde_json::from_value::<IntegrationSpec>(v).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = parse(serde_json::json!({
            "id": "orders",
            "producer": {"type": "http", "url": "http://example.test/x"}
        }))
        .unwrap();
        let ProducerSpec::Http(h) = &s.producer;
        assert_eq!(h.method, HttpMethod::Post);
        assert_eq!(h.timeout_ms, 10_000);
        assert_eq!(s.max_in_flight, 32);
        s.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_ids_are_refused() {
        let e =
            parse(serde_json::json!({"id": "o", "producer": {"type": "http", "url": "u"}, "extra": 1})).unwrap_err();
        assert!(e.contains("unknown field `extra`"), "{e}");
        let e = parse(serde_json::json!({"id": "Bad_Id", "producer": {"type": "http", "url": "u"}})).unwrap_err();
        assert!(e.contains("invalid integration id"), "{e}");
        let e = parse(serde_json::json!({"id": "o", "producer": {"type": "ftp", "url": "u"}})).unwrap_err();
        assert!(e.contains("unknown variant `ftp`"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let s = parse(serde_json::json!({
            "id": "o",
            "filters": [{"type": "json_field", "path": "/a", "op": "exists"},
                        {"type": "json_field", "path": "a", "op": "exists"}],
            "producer": {"type": "http", "url": "u"}
        }))
        .unwrap();
        assert_eq!(s.validate().unwrap_err().field, "filters[1].path");
        let s = parse(serde_json::json!({
            "id": "o",
            "filters": [{"type": "json_field", "path": "/a", "op": "in", "value": 3}],
            "producer": {"type": "http", "url": "u"}
        }))
        .unwrap();
        assert_eq!(s.validate().unwrap_err().field, "filters[0].value");
        let s = parse(serde_json::json!({
            "id": "o", "producer": {"type": "http", "url": "u", "timeout_ms": 0}
        }))
        .unwrap();
        assert_eq!(s.validate().unwrap_err().field, "producer.timeout_ms");
    }
}
