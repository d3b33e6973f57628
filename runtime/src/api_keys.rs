//! Tenant API keys: `vrsky_<id>_<secret>`, with a 16-hex-digit id (the key's row) and 64
//! hex digits (256 bits) from the system's CSPRNG. Only the whole key's SHA-256 is
//! stored, so a leaked database does not leak keys; a key is shown once, when created.
//! A fast hash suits: the secret is random, not a password to guess.

use ring::rand::SecureRandom;

/// Prefix of every key.
pub const PREFIX: &str = "vrsky_";

/// A key's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyParts<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its secret.
    pub secret: &'a str,
}

impl<'a> KeyParts<'a> {
    /// Splits a presented token; `None` when it is not shaped like a key.
    pub fn parse(token: &'a str) -> Option<KeyParts<'a>> {
        let rest = token.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(id, 16) && hex(secret, 64)).then_some(KeyParts { id, secret })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a key, hex: what is stored and compared.
pub fn sha256_hex(key: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref())
}

/// A new key and its id.
pub fn generate() -> Result<(String, String), ring::error::Unspecified> {
    let rng = ring::rand::SystemRandom::new();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill(&mut id)?;
    rng.fill(&mut secret)?;
    let id = hex(&id);
    Ok((format!("{PREFIX}{id}_{}", hex(&secret)), id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_parse_and_hash() {
        let (key, id) = generate().unwrap();
        let parts = KeyParts::parse(&key).unwrap();
        assert_eq!(parts.id, id);
        assert_eq!(sha256_hex(&key).len(), 64);
        assert_ne!(generate().unwrap().0, key);
        for bad in [
            "",
            "vrsky_",
            "vrsky_abc_def",
            &key[..key.len() - 1],
            &key.replace("vrsky_", "vrsk_"),
        ] {
            assert_eq!(KeyParts::parse(bad), None, "{bad}");
        }
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
