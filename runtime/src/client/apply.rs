//! `vrsky integration apply`: what a file asks for against what the node has, decided
//! without I/O. Both sides are read through the same `IntegrationSpec` the node uses, so
//! defaults the file leaves out compare equal, and both are redacted, since the API never
//! shows secret values (a change of a secret alone needs `--force`).

use serde_json::Value;
use vrsky_actors::components::IntegrationSpec;

/// Fields of an integration as the API shows it that are not part of its spec.
const SHOWN_ONLY: [&str; 4] = ["tenant_id", "webhook_path", "created_at", "stats"];

/// A document to apply: its tenant (from `tenant_id`, or the flag) and its spec.
#[derive(Debug)]
pub struct Desired {
    /// Whose integration.
    pub tenant: String,
    /// The spec to send, as the file has it (secrets included).
    pub spec: Value,
    /// Its canonical, redacted form, for comparing.
    pub canonical: Value,
}

/// Reads a YAML or JSON document (what `integration get -o yaml|json` prints, or a bare
/// spec). Precise errors: the document's own mistakes are found here, before any call.
pub fn desired(text: &str, tenant_flag: Option<&str>) -> anyhow::Result<Desired> {
    let mut doc: Value =
        serde_norway::from_str(text).map_err(|e| anyhow::anyhow!("the file is not YAML or JSON: {e}"))?;
    let Value::Object(m) = &mut doc else {
        anyhow::bail!("the file must hold one integration (a mapping with id, producer, ...)");
    };
    let in_file = m.get("tenant_id").and_then(Value::as_str).map(str::to_owned);
    let tenant = match (tenant_flag, in_file) {
        (Some(f), Some(d)) if f != d => anyhow::bail!("--tenant {f} differs from tenant_id {d} in the file"),
        (Some(f), _) => f.to_owned(),
        (None, Some(d)) => d,
        (None, None) => anyhow::bail!("the file has no tenant_id: add one, or pass --tenant"),
    };
    for k in SHOWN_ONLY {
        m.remove(k);
    }
    let canonical = canonical(&doc).map_err(|e| anyhow::anyhow!("the file is not a valid integration: {e}"))?;
    Ok(Desired {
        tenant,
        spec: doc,
        canonical,
    })
}

/// Whether a document holds the API's mask of a secret value anywhere.
pub fn has_redacted(v: &Value) -> bool {
    match v {
        Value::String(s) => s == vrsky_actors::components::REDACTED,
        Value::Array(a) => a.iter().any(has_redacted),
        Value::Object(m) => m.values().any(has_redacted),
        _ => false,
    }
}

/// A spec in the node's canonical form (defaults filled in, secrets redacted).
pub fn canonical(spec: &Value) -> Result<Value, serde_json::Error> {
    let mut v = spec.clone();
    if let Value::Object(m) = &mut v {
        for k in SHOWN_ONLY {
            m.remove(k);
        }
    }
    let parsed: IntegrationSpec = serde_json::from_value(v)?;
    serde_json::to_value(parsed.redacted())
}

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// It does not exist: create it.
    Create,
    /// It exists and differs: replace its spec (the diff, current to file).
    Update(String),
    /// It exists as the file says.
    Unchanged,
}

/// Decides, from the node's current integration (`None`: missing). Pure.
pub fn plan(current: Option<&Value>, want: &Desired, force: bool) -> Plan {
    let Some(current) = current else {
        return Plan::Create;
    };
    let now = canonical(current).unwrap_or(Value::Null);
    if now == want.canonical && !force {
        return Plan::Unchanged;
    }
    Plan::Update(diff(&now, &want.canonical))
}

/// A unified diff of two specs' YAML.
pub fn diff(from: &Value, to: &Value) -> String {
    let a = serde_norway::to_string(from).unwrap_or_default();
    let b = serde_norway::to_string(to).unwrap_or_default();
    similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .header("on the node", "in the file")
        .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn shown(spec: Value) -> Value {
        // What `integration get` shows: the canonical spec plus the view's own fields.
        let mut v = canonical(&spec).unwrap();
        v["tenant_id"] = json!("acme");
        v["webhook_path"] = json!("/webhooks/acme/orders");
        v["stats"] = json!({"delivered": 3});
        v
    }

    #[test]
    fn what_get_shows_applies_unchanged_and_a_change_is_a_diff() {
        let spec = json!({"id": "orders", "producer": {"type": "http", "url": "http://x/y", "headers": {"authorization": "Bearer s"}}});
        let node = shown(spec.clone());
        // The file `get -o yaml` printed: unchanged, secrets and defaults included.
        let printed = serde_norway::to_string(&node).unwrap();
        let want = desired(&printed, None).unwrap();
        assert_eq!(want.tenant, "acme");
        assert_eq!(plan(Some(&node), &want, false), Plan::Unchanged);
        // A minimal file with the real secret: the same integration.
        let minimal = desired(&serde_json::to_string(&spec).unwrap(), Some("acme")).unwrap();
        assert_eq!(plan(Some(&node), &minimal, false), Plan::Unchanged);
        assert!(matches!(plan(Some(&node), &minimal, true), Plan::Update(_)));
        // A change shows as a diff.
        let mut changed = spec.clone();
        changed["producer"]["url"] = json!("http://x/z");
        let want = desired(&serde_json::to_string(&changed).unwrap(), Some("acme")).unwrap();
        let Plan::Update(d) = plan(Some(&node), &want, false) else {
            panic!()
        };
        assert!(
            d.contains("-  url: http://x/y") && d.contains("+  url: http://x/z"),
            "{d}"
        );
        assert_eq!(plan(None, &want, false), Plan::Create);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = desired("- a\n- b\n", Some("acme")).unwrap_err().to_string();
        assert!(e.contains("one integration"), "{e}");
        let e = desired("{\"id\": \"x\"}", None).unwrap_err().to_string();
        assert!(e.contains("no tenant_id"), "{e}");
        let e = desired("{\"id\": \"x\", \"tenant_id\": \"a\"}", Some("b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("differs"), "{e}");
        let e = desired("{\"id\": \"x\"}", Some("a")).unwrap_err().to_string();
        assert!(e.contains("not a valid integration"), "{e}");
        let e = desired("id: [", Some("a")).unwrap_err().to_string();
        assert!(e.contains("not YAML or JSON"), "{e}");
    }
}
