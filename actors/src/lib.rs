//! VRSky's domain: validated ids, the envelope and its NATS wire form, the component
//! interfaces with their pure implementations, and the domain actors with their typed
//! messages. Adapters (NATS connections, SQL, HTTP) live in the runtime crate and reach
//! the actors only through their arguments and ports.

pub mod components;
pub mod envelope;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod ids;
pub mod integration;
pub mod message;
pub mod nats_instance;
pub mod payload;
pub mod subjects;
pub mod telemetry;
pub mod tenant;
pub mod wire;

pub use envelope::Envelope;
pub use ids::{IdError, IntegrationId, MessageId, TenantId};
pub use payload::{PayloadError, PayloadRef, Payloads};

/// Wall-clock time in ms since the Unix epoch: the time base of message state (0 if the
/// clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Shared proptest configuration: regressions go to the workspace's top-level
    //! `proptest-regressions/` (tests run with the crate directory as working directory).
    use proptest::test_runner::{Config, FileFailurePersistence};

    /// A small envelope for component tests.
    #[allow(clippy::unwrap_used)]
    pub(crate) fn envelope(content_type: Option<&str>) -> crate::Envelope {
        crate::Envelope {
            message_id: crate::MessageId::generate(),
            tenant_id: crate::TenantId::new("t").unwrap(),
            integration_id: crate::IntegrationId::new("i").unwrap(),
            headers: vec![],
            content_type: content_type.map(str::to_owned),
            payload: bytes::Bytes::new(),
            payload_ref: None,
            trace_context: None,
            attempt: 1,
            received_at_ms: 0,
        }
    }

    /// A config persisting failures to `proptest-regressions/<file>`.
    pub(crate) fn proptest_config(file: &'static str) -> Config {
        Config {
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
            ..Config::default()
        }
    }
}
