//! How the CLI shows what it got: `-o table|json|yaml`; tables on a terminal, JSON when
//! piped.

use std::io::IsTerminal as _;

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::Value;

/// The `-o` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns (the default on a terminal).
    Table,
    /// JSON (the default when piped).
    Json,
    /// YAML.
    Yaml,
}

/// Writes `text` on stdout. When stdout is a pipe whose reader has gone (`vrsky tenant
/// ls | head -1`), the command ends there with success, as Unix tools do, instead of
/// `println!`'s panic.
pub fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing the output: {e}");
        std::process::exit(1);
    }
}

/// The format asked for, or the default for where stdout goes.
pub fn chosen(asked: Option<Format>) -> Format {
    asked.unwrap_or_else(|| {
        if std::io::stdout().is_terminal() {
            Format::Table
        } else {
            Format::Json
        }
    })
}

/// A field as a cell: strings bare, null empty, the rest as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints `v` as JSON or YAML, or as `table` when the format is a table.
pub fn print(format: Format, v: &Value, table: impl FnOnce() -> Table) -> anyhow::Result<()> {
    match format {
        Format::Json => say!("{}", serde_json::to_string_pretty(v)?),
        Format::Yaml => say_raw!("{}", serde_norway::to_string(v)?),
        Format::Table => say!("{}", table()),
    }
    Ok(())
}

/// A table with `header` and a row per item of `items`, each cell the field of that name
/// (a `/json/pointer` reaches into the item).
pub fn rows(items: &[Value], header: &[&str], fields: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.iter().copied());
    for item in items {
        t.add_row(fields.iter().map(|f| {
            if f.starts_with('/') {
                cell(item.pointer(f).unwrap_or(&Value::Null))
            } else {
                cell(&item[*f])
            }
        }));
    }
    t
}

/// A two-column table of an object's fields.
pub fn fields(v: &Value) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    if let Value::Object(m) = v {
        for (k, x) in m {
            t.add_row([k.clone(), cell(x)]);
        }
    }
    t
}

/// The supervision tree drawn as a tree.
pub fn tree(node: &Value) -> String {
    fn line(n: &Value) -> String {
        let mut s = cell(&n["name"]);
        if n["running"] == Value::Bool(false) {
            s.push_str("  (restarting)");
        }
        if let Some(r) = n["restarts"].as_u64().filter(|r| *r > 0) {
            s.push_str(&format!("  restarts={r}"));
        }
        if let Some(id) = n["actor_id"].as_str() {
            s.push_str(&format!("  [{id}]"));
        }
        s
    }
    fn walk(n: &Value, prefix: &str, out: &mut String) {
        let children = n["children"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for (i, c) in children.iter().enumerate() {
            let last = i + 1 == children.len();
            out.push_str(&format!("{prefix}{}{}\n", if last { "└─ " } else { "├─ " }, line(c)));
            walk(c, &format!("{prefix}{}", if last { "   " } else { "│  " }), out);
        }
    }
    let mut out = format!("{}\n", line(node));
    walk(node, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_drawn_with_their_restarts() {
        let t = serde_json::json!({"name": "runtime", "running": true, "restarts": 0, "children": [
            {"name": "tenant:a", "running": true, "restarts": 0, "children": [
                {"name": "integration:x", "running": false, "restarts": 2, "children": []}]},
            {"name": "retry-scheduler", "running": true, "restarts": 0, "children": []}]});
        assert_eq!(
            tree(&t),
            "runtime\n├─ tenant:a\n│  └─ integration:x  (restarting)  restarts=2\n└─ retry-scheduler\n"
        );
    }
}
