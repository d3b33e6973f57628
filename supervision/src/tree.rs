//! A snapshot of a live supervision tree, for the REST API, the CLI and traces.

use crate::spec::{ChildKind, Restart};

/// One node of the live tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TreeNode {
    /// The child name from its spec (for example `integration:orders`).
    pub name: String,
    /// The ractor actor id while it runs.
    pub actor_id: Option<String>,
    /// Worker or nested supervisor.
    pub kind: ChildKind,
    /// Its restart policy.
    pub restart: Restart,
    /// Whether it is running now (false while a restart is pending).
    pub running: bool,
    /// Restarts since it was first started.
    pub restarts: u32,
    /// Why it last exited, if it ever did.
    pub last_exit: Option<String>,
    /// Children of a nested supervisor.
    pub children: Vec<TreeNode>,
}

impl TreeNode {
    /// Finds a node by name anywhere below (and including) this one.
    pub fn find(&self, name: &str) -> Option<&TreeNode> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// Number of nodes in this subtree, this one included.
    pub fn len(&self) -> usize {
        1 + self.children.iter().map(TreeNode::len).sum::<usize>()
    }

    /// Always false: a tree has at least its root.
    pub fn is_empty(&self) -> bool {
        false
    }
}
