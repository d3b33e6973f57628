//! The CLI's calls to a node's REST API: one call, its JSON answer, and errors that say
//! what was wrong and what to do.

use reqwest::Method;
use serde_json::Value;

/// A node's API, as the CLI reaches it.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// The API at `base` (`http(s)://host:port`), called with `token`.
    pub fn new(base: String, token: Option<String>) -> anyhow::Result<Api> {
        crate::app::install_crypto_provider();
        Ok(Api {
            http: reqwest::Client::builder().build()?,
            base,
            token,
        })
    }

    /// The node's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `method base+path` with `body` as JSON; the JSON answer (`{}` for none), or the
    /// API's error message.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        plain_segments(path)?;
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        answer(resp).await
    }

    /// A webhook (no token: webhooks are not API calls).
    pub async fn webhook(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(String, String)],
    ) -> anyhow::Result<(u16, Value)> {
        plain_segments(path)?;
        let mut req = self.http.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach {}: {} (is the node running? set VRSKY_URL, or choose a context with `vrsky context use`)",
            self.base,
            root_cause(&e)
        )
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

async fn answer(resp: reqwest::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await?;
    if status.is_success() {
        if text.trim().is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        return Ok(serde_json::from_str(&text)?);
    }
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    let hint = match status.as_u16() {
        401 => " (set VRSKY_TOKEN, or a context's token with `vrsky context add NAME --url U --token T`)",
        403 => " (this needs the admin token)",
        503 => " (the node is starting or a dependency is down; retry shortly)",
        _ => "",
    };
    anyhow::bail!("{message}{hint}")
}

/// Refuses a path with a `.` or `..` segment: URL parsing removes them (encoded or not),
/// so `dlq retry acme .` would otherwise reach `.../dead-letters/retry`, another route.
fn plain_segments(path: &str) -> anyhow::Result<()> {
    let path = path.split('?').next().unwrap_or(path);
    for s in path.split('/') {
        let decoded = s.replace("%2E", ".").replace("%2e", ".");
        anyhow::ensure!(decoded != "." && decoded != "..", "an id cannot be `.` or `..`");
    }
    Ok(())
}

/// A path segment, percent-encoded.
pub fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_refused() {
        assert!(plain_segments("/api/tenants/acme/dead-letters/./retry").is_err());
        assert!(plain_segments("/api/tenants/acme/messages/%2E%2e").is_err());
        assert!(plain_segments("/api/tenants/acme/messages/a.b?x=..").is_ok());
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
