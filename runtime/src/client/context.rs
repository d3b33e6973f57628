//! Named contexts (`vrsky context add/use/ls`): where a node is and the token to call it
//! with, kept in `$XDG_CONFIG_HOME/vrsky/contexts.toml` (or `~/.config/vrsky/...`;
//! `VRSKY_CLIENT_CONFIG` names another file). `VRSKY_URL` and `VRSKY_TOKEN`, and the
//! flags, override the chosen context.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// One context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ctx {
    /// `http(s)://host:port` (REST) or `grpc://host:port` (gRPC).
    pub url: String,
    /// The bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The contexts file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contexts {
    /// The one in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// By name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Ctx>,
}

/// Where the contexts file is.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("VRSKY_CLIENT_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("neither XDG_CONFIG_HOME nor HOME is set")?).join(".config")
        }
    };
    Ok(base.join("vrsky").join("contexts.toml"))
}

impl Contexts {
    /// The file's contexts (none when it does not exist yet).
    pub fn load() -> anyhow::Result<Contexts> {
        let p = path()?;
        match std::fs::read_to_string(&p) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Writes the file (readable by its owner only: it holds tokens).
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let p = path()?;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = toml::to_string(self)?;
        let tmp = p.with_extension("toml.tmp");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
        }
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }
}

/// Checks a URL's scheme: `http`, `https` or `grpc`.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    let ok = ["http://", "https://", "grpc://"].iter().any(|s| url.starts_with(s));
    anyhow::ensure!(
        ok && url.len() > "grpc://".len(),
        "{url:?} is not a node URL: use http://host:port or https://host:port (REST) or grpc://host:port (gRPC)"
    );
    Ok(())
}

/// Where to call and with which token. A context's URL and token go together: its token
/// is never sent to another URL.
/// - `--context NAME`: that context (its token unless `--token`/`VRSKY_TOKEN` gives one);
/// - else `--url`/`VRSKY_URL`, with `--token`/`VRSKY_TOKEN` (or the current context's
///   token when the URL is the current context's);
/// - else the current context, as above;
/// - else `http://127.0.0.1:8080`, where `vrsky dev` listens.
pub fn resolve(
    url: Option<String>,
    token: Option<String>,
    context: Option<&str>,
) -> anyhow::Result<(String, Option<String>)> {
    resolve_in(Contexts::load, url, token, context)
}

fn resolve_in(
    load: impl Fn() -> anyhow::Result<Contexts>,
    url: Option<String>,
    token: Option<String>,
    context: Option<&str>,
) -> anyhow::Result<(String, Option<String>)> {
    let lookup = |file: &Contexts, n: &str| {
        file.contexts.get(n).cloned().with_context(|| {
            format!("context {n:?} does not exist (`vrsky context ls` lists them, `vrsky context add` makes one)")
        })
    };
    let (url, token) = match (context, url) {
        (Some(n), _) => {
            let c = lookup(&load()?, n)?;
            (c.url, token.or(c.token))
        }
        (None, Some(u)) => {
            // The file only lends its token to its own URL; a broken file does not stop
            // a call whose URL is given.
            let current = load()
                .ok()
                .and_then(|f| f.current.clone().and_then(|n| f.contexts.get(&n).cloned()));
            let lent = current.filter(|c| c.url.trim_end_matches('/') == u.trim_end_matches('/'));
            (u, token.or_else(|| lent.and_then(|c| c.token)))
        }
        (None, None) => {
            let file = load()?;
            match file.current.as_deref() {
                Some(n) => {
                    let c = lookup(&file, n)?;
                    (c.url, token.or(c.token))
                }
                None => ("http://127.0.0.1:8080".to_owned(), token),
            }
        }
    };
    check_url(&url)?;
    Ok((url.trim_end_matches('/').to_owned(), token))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        assert!(check_url("grpc://127.0.0.1:50051").is_ok());
        let e = check_url("127.0.0.1:8080").unwrap_err().to_string();
        assert!(e.contains("http://host:port"), "{e}");
        assert!(check_url("grpc://").is_err());
    }

    /// A context's token goes to its own URL only.
    #[test]
    fn tokens_stay_with_their_urls() {
        let file = || {
            let mut c = Contexts::default();
            let ctx = |u: &str, t: &str| Ctx {
                url: u.into(),
                token: Some(t.into()),
            };
            c.contexts.insert("prod".into(), ctx("https://prod:443", "prod-token"));
            c.contexts
                .insert("dev".into(), ctx("http://127.0.0.1:8080", "dev-token"));
            c.current = Some("prod".into());
            Ok(c)
        };
        let r = |url: Option<&str>, token: Option<&str>, ctx: Option<&str>| {
            resolve_in(file, url.map(Into::into), token.map(Into::into), ctx).unwrap()
        };
        let pair = |u: &str, t: Option<&str>| (u.to_owned(), t.map(str::to_owned));
        assert_eq!(r(None, None, None), pair("https://prod:443", Some("prod-token")));
        assert_eq!(
            r(Some("http://other:8080"), None, None),
            pair("http://other:8080", None),
            "not prod's token"
        );
        assert_eq!(
            r(Some("https://prod:443/"), None, None),
            pair("https://prod:443", Some("prod-token"))
        );
        assert_eq!(
            r(Some("http://other:8080"), None, Some("dev")),
            pair("http://127.0.0.1:8080", Some("dev-token")),
            "--context wins over VRSKY_URL"
        );
        assert_eq!(
            r(None, Some("mine"), Some("dev")),
            pair("http://127.0.0.1:8080", Some("mine"))
        );
        let broken = || anyhow::bail!("bad toml");
        assert_eq!(
            resolve_in(broken, Some("http://x:1".into()), Some("t".into()), None).unwrap(),
            pair("http://x:1", Some("t"))
        );
        assert!(
            resolve_in(file, None, None, Some("nope"))
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
    }

    #[test]
    fn the_file_round_trips() {
        let mut c = Contexts::default();
        c.contexts.insert(
            "dev".into(),
            Ctx {
                url: "http://127.0.0.1:8080".into(),
                token: Some("t".into()),
            },
        );
        c.current = Some("dev".into());
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<Contexts>(&text).unwrap(), c);
    }
}
