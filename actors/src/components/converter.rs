//! The JSON mapping converter.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{ConvertError, Converter, MissingField};
use crate::envelope::Envelope;

/// Builds a new JSON object from fields of the input and constants. The output's content
/// type is `application/json`.
#[derive(Debug, Clone)]
pub struct JsonMapConverter {
    fields: BTreeMap<String, String>,
    constants: BTreeMap<String, Value>,
    on_missing: MissingField,
}

impl JsonMapConverter {
    /// A converter from validated spec parts.
    pub fn new(fields: BTreeMap<String, String>, constants: BTreeMap<String, Value>, on_missing: MissingField) -> Self {
        JsonMapConverter {
            fields,
            constants,
            on_missing,
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Sets `value` at `pointer` in `root`, creating objects on the way.
fn set_pointer(root: &mut Value, pointer: &str, value: Value) -> Result<(), ConvertError> {
    let mut cur = root;
    let tokens: Vec<String> = pointer.split('/').skip(1).map(unescape).collect();
    let Some((last, parents)) = tokens.split_last() else {
        return Err(ConvertError::Output("cannot replace the root".into()));
    };
    for t in parents {
        let obj = cur
            .as_object_mut()
            .ok_or_else(|| ConvertError::Output(format!("{pointer}: parent is not an object")))?;
        cur = obj.entry(t.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
    let obj = cur
        .as_object_mut()
        .ok_or_else(|| ConvertError::Output(format!("{pointer}: parent is not an object")))?;
    obj.insert(last.clone(), value);
    Ok(())
}

impl Converter for JsonMapConverter {
    fn convert(&self, mut envelope: Envelope, json: Option<&Value>) -> Result<Envelope, ConvertError> {
        let input = json.ok_or(ConvertError::NotJson)?;
        let mut out = Value::Object(Map::new());
        for (to, from) in &self.fields {
            match (input.pointer(from), self.on_missing) {
                (Some(v), _) => set_pointer(&mut out, to, v.clone())?,
                (None, MissingField::Skip) => {}
                (None, MissingField::Null) => set_pointer(&mut out, to, Value::Null)?,
                (None, MissingField::Error) => return Err(ConvertError::MissingField(from.clone())),
            }
        }
        for (to, v) in &self.constants {
            set_pointer(&mut out, to, v.clone())?;
        }
        let body = serde_json::to_vec(&out).map_err(|e| ConvertError::Output(e.to_string()))?;
        envelope.payload = Bytes::from(body);
        envelope.payload_ref = None;
        envelope.content_type = Some("application/json".into());
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn env() -> Envelope {
        crate::testkit::envelope(Some("text/plain"))
    }

    fn map(fields: &[(&str, &str)], consts: &[(&str, Value)], m: MissingField) -> JsonMapConverter {
        JsonMapConverter::new(
            fields.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            consts.iter().map(|(a, b)| (a.to_string(), b.clone())).collect(),
            m,
        )
    }

    #[test]
    fn maps_nested_fields_and_constants() {
        let input = json!({"order": {"id": 7, "total": 9.5}, "x": 1});
        let c = map(
            &[
                ("/id", "/order/id"),
                ("/money/total", "/order/total"),
                ("/gone", "/nope"),
            ],
            &[("/source", json!("vrsky"))],
            MissingField::Skip,
        );
        let out = c.convert(env(), Some(&input)).unwrap();
        assert_eq!(out.content_type.as_deref(), Some("application/json"));
        let v: Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(v, json!({"id": 7, "money": {"total": 9.5}, "source": "vrsky"}));
    }

    #[test]
    fn missing_field_policies() {
        let input = json!({});
        let out = map(&[("/a", "/b")], &[], MissingField::Null)
            .convert(env(), Some(&input))
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out.payload).unwrap(),
            json!({"a": null})
        );
        let e = map(&[("/a", "/b")], &[], MissingField::Error)
            .convert(env(), Some(&input))
            .unwrap_err();
        assert!(matches!(e, ConvertError::MissingField(f) if f == "/b"));
        let e = map(&[("/a", "/b")], &[], MissingField::Skip)
            .convert(env(), None)
            .unwrap_err();
        assert!(matches!(e, ConvertError::NotJson));
    }

    #[test]
    fn conflicting_outputs_are_an_error_not_a_panic() {
        let input = json!({"s": "text", "n": 1});
        let c = map(&[("/a", "/s"), ("/a/b", "/n")], &[], MissingField::Skip);
        assert!(matches!(c.convert(env(), Some(&input)), Err(ConvertError::Output(_))));
    }
}
