//! Component interfaces (the spec's Consumer, Producer, Converter, Filter) and the first
//! implementations that need no I/O. The HTTP producer lives in the runtime crate, which
//! owns the HTTP client.

mod consumer;
mod converter;
mod filter;
mod pipeline;
pub mod signature;
mod spec;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::envelope::Envelope;

pub use consumer::{InboundRequest, WebhookConsumer};
pub use converter::JsonMapConverter;
pub use filter::JsonFieldFilter;
pub use pipeline::{Outcome, Pipeline};
pub use spec::{
    ConsumerSpec, ConverterSpec, FieldOp, FilterSpec, HttpMethod, HttpProducerSpec, IntegrationSpec, MissingField,
    PayloadDelivery, ProducerSpec, REDACTED, SignatureScheme, SignatureSpec, SigningSpec, SpecError,
};

/// Turns an inbound request into an envelope (the webhook receiver is the first).
pub trait Consumer: Send + Sync {
    /// Builds the envelope, or refuses the request.
    fn accept(&self, request: InboundRequest) -> Result<Envelope, ConsumeError>;
}

/// Decides whether a message goes on. `json` is the payload parsed once per message when
/// it is JSON, shared by every component that wants it.
pub trait Filter: Send + Sync {
    /// True to keep the message.
    fn matches(&self, envelope: &Envelope, json: Option<&Value>) -> bool;
    /// What the filter checks, for the reason of a message it dropped
    /// (`json_field /type eq "order"`).
    fn describe(&self) -> String;
}

/// Changes a message on its way.
pub trait Converter: Send + Sync {
    /// The converted envelope, or why it cannot be converted.
    fn convert(&self, envelope: Envelope, json: Option<&Value>) -> Result<Envelope, ConvertError>;
}

/// Delivers a message to its destination.
pub trait Producer: Send + Sync {
    /// Delivers once; the caller decides about retries from the error's kind.
    fn deliver<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<Delivered, ProduceError>>;
}

/// A successful delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The destination's status code (HTTP for the HTTP producer).
    pub status: u16,
}

/// Whether a failed delivery may succeed when tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceErrorKind {
    /// Connection errors, timeouts, 408, 429, 5xx.
    Retryable,
    /// Other 4xx, 3xx (redirects are never followed), bad requests we built.
    Permanent,
}

/// A failed delivery.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProduceError {
    /// Retryable or not.
    pub kind: ProduceErrorKind,
    /// Destination status code, if it answered.
    pub status: Option<u16>,
    /// What happened, for logs and the dead-letter queue.
    pub message: String,
    /// The destination's `Retry-After` (429, 503), in ms.
    pub retry_after_ms: Option<u64>,
}

/// A request the consumer refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsumeError {
    /// A header could not be carried.
    #[error("header {0:?} is not valid UTF-8 text")]
    BadHeader(String),
}

/// A conversion that cannot be done; never retryable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConvertError {
    /// The converter needs a JSON body.
    #[error("payload is not JSON")]
    NotJson,
    /// A required field is absent.
    #[error("field {0} is missing")]
    MissingField(String),
    /// The output could not be built.
    #[error("cannot build output: {0}")]
    Output(String),
}
