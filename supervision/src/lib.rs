//! Generic supervision over ractor, knowing nothing of VRSky's domain.
//!
//! Restart policy is data ([`ChildSpec`]: [`Restart`], [`Backoff`], [`Intensity`]) and one
//! generic [`Supervisor`] actor interprets it. ractor itself has no restart policy: its
//! default supervisor stops when any child exits. Here a child that exits is restarted
//! (or not) by its policy, with exponential backoff; a child that exceeds its restart
//! intensity makes its supervisor stop every child and fail, escalating to the parent.
//! [`SupervisorMsg::GetTree`] lists the live tree with restart counts.

mod events;
mod spec;
mod state;
mod supervisor;
pub mod telemetry;
mod tree;

pub use events::{TreeEvent, TreeEventKind, TreeEvents};
pub use spec::{Backoff, ChildKind, ChildSpec, ExitKind, Intensity, Restart, StartFn};
pub use state::{ChildRecord, Decision};
pub use supervisor::{
    ChildSource, ChildSourceError, Supervisor, SupervisorArgs, SupervisorError, SupervisorExt, SupervisorMsg,
    SupervisorState, spawn_root, supervisor_child,
};
pub use tree::TreeNode;

#[cfg(test)]
mod tests;
