//! The runtime's own presigned URLs, for a store that cannot presign (the filesystem):
//! `{public_url}/objects/{key}?expires={unix s}&signature={base64url HMAC-SHA256}`. The
//! HMAC covers the key and the expiry, under a key derived from the platform's wire key,
//! so every node signs and checks the same URLs and a URL is good for one object until it
//! expires. S3 URLs are the store's own (SigV4 query signing).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

/// The label the URL key is derived under (see [`vrsky_actors::wire::WireKey::derive`]).
pub const KEY_LABEL: &[u8] = b"vrsky claim-check presigned URL v1";

/// Why a presigned URL is refused (answered 403, with the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    /// `expires` or `signature` is missing or does not parse.
    #[error("the URL is not presigned: expires and signature query parameters are required")]
    Unsigned,
    /// Past its expiry.
    #[error("the presigned URL has expired")]
    Expired,
    /// The signature does not match the key and expiry.
    #[error("the presigned URL's signature does not match")]
    BadSignature,
}

/// Signs and checks the runtime's presigned URLs.
pub struct UrlSigner {
    key: hmac::Key,
    base: String,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner").field("base", &self.base).finish()
    }
}

fn input(key: &str, expires_s: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(key.len() + 21);
    m.extend_from_slice(key.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(expires_s.to_string().as_bytes());
    m
}

impl UrlSigner {
    /// A signer for URLs under `base` (no trailing slash needed).
    pub fn new(key: hmac::Key, base: &str) -> UrlSigner {
        UrlSigner {
            key,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// The URL of `key`, valid until `expires_s` (seconds since the Unix epoch).
    pub fn url(&self, key: &str, expires_s: u64) -> String {
        let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, &input(key, expires_s)).as_ref());
        format!("{}/objects/{key}?expires={expires_s}&signature={sig}", self.base)
    }

    /// Checks a request for `key` with these query parameters at `now_s`.
    pub fn check(
        &self,
        key: &str,
        expires: Option<&str>,
        signature: Option<&str>,
        now_s: u64,
    ) -> Result<(), UrlRefused> {
        let expires_s: u64 = expires.and_then(|e| e.parse().ok()).ok_or(UrlRefused::Unsigned)?;
        let sig = signature
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or(UrlRefused::Unsigned)?;
        // The signature first: an expiry is only trusted once it is known to be ours.
        hmac::verify(&self.key, &input(key, expires_s), &sig).map_err(|_| UrlRefused::BadSignature)?;
        if now_s >= expires_s {
            return Err(UrlRefused::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn query(url: &str) -> (String, String, String) {
        let u = url::Url::parse(url).unwrap();
        let key = u.path().trim_start_matches("/objects/").to_owned();
        let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
        (key, q["expires"].clone(), q["signature"].clone())
    }

    #[test]
    fn signed_urls_are_checked_for_key_expiry_and_signature() {
        let s = UrlSigner::new(hmac::Key::new(hmac::HMAC_SHA256, b"k"), "http://127.0.0.1:8080/");
        let url = s.url("payloads/acme/hook/m/u", 1_000);
        assert!(url.starts_with("http://127.0.0.1:8080/objects/payloads/acme/hook/m/u?expires=1000&signature="));
        let (key, exp, sig) = query(&url);
        assert_eq!(s.check(&key, Some(&exp), Some(&sig), 999), Ok(()));
        assert_eq!(s.check(&key, Some(&exp), Some(&sig), 1_000), Err(UrlRefused::Expired));
        assert_eq!(
            s.check("payloads/acme/hook/m/v", Some(&exp), Some(&sig), 999),
            Err(UrlRefused::BadSignature)
        );
        assert_eq!(
            s.check(&key, Some("2000"), Some(&sig), 999),
            Err(UrlRefused::BadSignature),
            "a longer expiry cannot be written in"
        );
        let mut tampered = sig.clone().into_bytes();
        tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            s.check(&key, Some(&exp), Some(&tampered), 999),
            Err(UrlRefused::BadSignature)
        );
        assert_eq!(s.check(&key, None, Some(&sig), 999), Err(UrlRefused::Unsigned));
        assert_eq!(s.check(&key, Some(&exp), Some("%%"), 999), Err(UrlRefused::Unsigned));
        let other = UrlSigner::new(hmac::Key::new(hmac::HMAC_SHA256, b"other"), "http://x");
        assert_eq!(
            other.check(&key, Some(&exp), Some(&sig), 999),
            Err(UrlRefused::BadSignature)
        );
    }
}
