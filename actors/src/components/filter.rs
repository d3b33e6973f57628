//! The JSON field filter.

use serde_json::Value;

use super::{FieldOp, Filter};
use crate::envelope::Envelope;

/// Keeps a message when one field of its JSON body satisfies a comparison. A body that
/// is not JSON never matches, except for `missing` and `ne`, which it satisfies.
#[derive(Debug, Clone)]
pub struct JsonFieldFilter {
    path: String,
    op: FieldOp,
    value: Option<Value>,
}

impl JsonFieldFilter {
    /// A filter from validated spec parts.
    pub fn new(path: String, op: FieldOp, value: Option<Value>) -> Self {
        JsonFieldFilter { path, op, value }
    }
}

impl Filter for JsonFieldFilter {
    fn matches(&self, _envelope: &Envelope, json: Option<&Value>) -> bool {
        let field = json.and_then(|j| j.pointer(&self.path));
        match self.op {
            FieldOp::Exists => field.is_some(),
            FieldOp::Missing => field.is_none(),
            FieldOp::Eq => field.is_some() && field == self.value.as_ref(),
            FieldOp::Ne => field != self.value.as_ref(),
            FieldOp::In => match (field, &self.value) {
                (Some(f), Some(Value::Array(options))) => options.contains(f),
                _ => false,
            },
        }
    }

    fn describe(&self) -> String {
        let op = match self.op {
            FieldOp::Eq => "eq",
            FieldOp::Ne => "ne",
            FieldOp::Exists => "exists",
            FieldOp::Missing => "missing",
            FieldOp::In => "in",
        };
        match &self.value {
            Some(v) => format!("json_field {} {op} {v}", self.path),
            None => format!("json_field {} {op}", self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn env() -> Envelope {
        crate::testkit::envelope(None)
    }

    #[test]
    fn ops() {
        let body = json!({"event": {"type": "order.created", "n": 3}, "a/b": true});
        let f = |path: &str, op, value| JsonFieldFilter::new(path.into(), op, value).matches(&env(), Some(&body));
        assert!(f("/event/type", FieldOp::Eq, Some(json!("order.created"))));
        assert!(!f("/event/type", FieldOp::Eq, Some(json!("order.deleted"))));
        assert!(f("/event/type", FieldOp::Ne, Some(json!("order.deleted"))));
        assert!(f("/event/n", FieldOp::In, Some(json!([1, 3]))));
        assert!(!f("/event/n", FieldOp::In, Some(json!([1, 2]))));
        assert!(f("/a~1b", FieldOp::Exists, None));
        assert!(f("/nope", FieldOp::Missing, None));
        assert!(!f("/nope", FieldOp::Eq, Some(Value::Null)));
    }

    #[test]
    fn non_json_only_matches_negative_ops() {
        let e = env();
        assert!(!JsonFieldFilter::new("/a".into(), FieldOp::Exists, None).matches(&e, None));
        assert!(JsonFieldFilter::new("/a".into(), FieldOp::Missing, None).matches(&e, None));
        assert!(JsonFieldFilter::new("/a".into(), FieldOp::Ne, Some(json!(1))).matches(&e, None));
    }
}
