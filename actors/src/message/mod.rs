//! Durable message state: the lifecycle state machine, the retry policy, the keys in the
//! `message_state` bucket and the stored envelope format. Pure: the runtime's platform
//! adapter does the revision-checked writes.

mod keys;
mod record;
mod redrive;
mod retry;
mod state;
mod store;

pub use keys::{ALL_STATE_KEYS, idempotent_message_id, parse_state_key, payload_key, state_key};
pub use record::{RecordError, decode_envelope, encode_envelope};
pub use redrive::Deadlines;
pub use retry::{MAX_RETRIES_LIMIT, RetryPolicy};
pub use state::{Attempt, Event, IllegalTransition, MessageState, Status};
pub use store::{Committed, Committer, MessageStore, SharedStore, StoreError, TenantPublisher};

#[cfg(test)]
mod model_tests;
