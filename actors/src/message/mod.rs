//! Durable message state: the lifecycle state machine, the retry policy, the keys in the
//! `message_state` bucket and the stored envelope format. Pure: the runtime's platform
//! adapter does the revision-checked writes.

mod keys;
mod record;
mod redrive;
mod retry;
mod state;
mod store;

pub use keys::{idempotent_message_id, parse_state_key, state_key};
pub use record::{
    RecordError, decode_envelope, decode_stored, empty_envelope, encode_envelope, encode_stored, payload_ref_of,
    trace_context_of,
};
pub use redrive::{Deadlines, Due, Observed, deadline_of};
pub use retry::{MAX_RETRIES_LIMIT, RetryPolicy};
pub use state::{Attempt, Event, IllegalTransition, MessageState, Status, new_incarnation};
pub use store::{Committed, Committer, MessageStore, SharedStore, StoreError, StoreErrorKind, Stored, TenantPublisher};

#[cfg(test)]
mod model_tests;
