//! The tenant: its desired state with the pure decisions over it (`state.rs`), the
//! capacity decisions over its instances (`scaling.rs`), and the names and supervision
//! policies of its subtree (`specs.rs`). The TenantActor that owns
//! the state lives in the runtime, which has the adapters its executor needs.

pub mod scaling;
mod specs;
mod state;

pub use specs::*;
pub use state::{Command, Endpoint, InstanceModel, InstanceStatus, IntegrationModel, Refusal, TenantModel};
