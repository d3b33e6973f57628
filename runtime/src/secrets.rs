//! Secrets at rest: producer header values and signing secrets are stored encrypted
//! (AES-256-GCM, ring) with `security.secrets_key`, each bound to its tenant,
//! integration and field (the associated data), so a ciphertext moved to another row or
//! field does not open. A stored value reads `enc:v1:<base64 of nonce and ciphertext>`.
//! Values stored before a key was configured are read as they are and sealed on the
//! next write. Without a key (a warning at start), values are stored in plain text.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use vrsky_actors::components::IntegrationSpec;
use vrsky_actors::{IntegrationId, TenantId};

const SEALED: &str = "enc:v1:";

/// Seals and opens the secrets of stored specs.
pub struct Sealer {
    key: Option<LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("key", &self.key.is_some()).finish()
    }
}

/// A failure to seal or open.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// `security.secrets_key` is not the base64 of 32 bytes.
    #[error("security.secrets_key must be the base64 of 32 random bytes: {0}")]
    BadKey(String),
    /// A sealed value and no key, the wrong key, or a value moved from elsewhere.
    #[error("{0}: cannot be decrypted (is security.secrets_key the key it was stored with?)")]
    Open(String),
    /// The random source failed.
    #[error("the system's random source failed")]
    Random,
}

impl Sealer {
    /// A sealer with `key_b64` (base64 of 32 bytes), or one that stores plain text.
    pub fn new(key_b64: Option<&str>) -> Result<Sealer, SecretsError> {
        let key = match key_b64 {
            None => None,
            Some(b64) => {
                let bytes = STANDARD
                    .decode(b64.trim())
                    .map_err(|e| SecretsError::BadKey(e.to_string()))?;
                if bytes.len() != 32 {
                    return Err(SecretsError::BadKey(format!("{} bytes", bytes.len())));
                }
                let unbound =
                    UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SecretsError::BadKey("rejected".into()))?;
                Some(LessSafeKey::new(unbound))
            }
        };
        Ok(Sealer {
            key,
            rng: SystemRandom::new(),
        })
    }

    /// Whether values are encrypted.
    pub fn encrypts(&self) -> bool {
        self.key.is_some()
    }

    /// A new random key, base64 (what `vrsky dev` keeps in its data dir).
    pub fn generate_key() -> Result<String, SecretsError> {
        let mut k = [0u8; 32];
        SystemRandom::new().fill(&mut k).map_err(|_| SecretsError::Random)?;
        Ok(STANDARD.encode(k))
    }

    fn aad(t: &TenantId, i: &IntegrationId, field: &str) -> String {
        format!("{t}/{i}/{field}")
    }

    /// `value` sealed, bound to `aad` (where it is stored): `enc:v1:...`. Without a key,
    /// or when it is sealed already, `value` as it is.
    pub fn seal(&self, aad: &str, value: &str) -> Result<String, SecretsError> {
        let Some(key) = &self.key else {
            return Ok(value.to_owned());
        };
        if value.starts_with(SEALED) {
            return Ok(value.to_owned());
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SecretsError::Random)?;
        let mut data = value.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut data,
        )
        .map_err(|_| SecretsError::Random)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Ok(format!("{SEALED}{}", STANDARD.encode(sealed)))
    }

    /// A value read back: opened when sealed (with the `aad` it was sealed with), as it
    /// is when stored in plain text before a key was configured.
    pub fn open(&self, aad: &str, value: &str) -> Result<String, SecretsError> {
        let Some(b64) = value.strip_prefix(SEALED) else {
            return Ok(value.to_owned());
        };
        let fail = || SecretsError::Open(aad.to_owned());
        let key = self.key.as_ref().ok_or_else(fail)?;
        let mut bytes = STANDARD.decode(b64).map_err(|_| fail())?;
        if bytes.len() < NONCE_LEN {
            return Err(fail());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let opened = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| fail())?;
        String::from_utf8(opened.to_vec()).map_err(|_| fail())
    }

    /// The spec as stored: its secrets sealed.
    pub fn seal_spec(&self, t: &TenantId, spec: &IntegrationSpec) -> Result<IntegrationSpec, SecretsError> {
        let mut out = spec.clone();
        let id = out.id.clone();
        for (field, value) in out.secrets_mut() {
            *value = self.seal(&Self::aad(t, &id, &field), value)?;
        }
        Ok(out)
    }

    /// The spec as used: its secrets opened (plain-text ones from before are kept).
    pub fn open_spec(&self, t: &TenantId, mut spec: IntegrationSpec) -> Result<IntegrationSpec, SecretsError> {
        let id = spec.id.clone();
        for (field, value) in spec.secrets_mut() {
            *value = self
                .open(&Self::aad(t, &id, &field), value)
                .map_err(|_| SecretsError::Open(format!("{t}/{id} {field}")))?;
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec() -> IntegrationSpec {
        serde_json::from_value(serde_json::json!({
            "id": "hook",
            "consumer": {"signature": {"scheme": "standard-webhooks", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}},
            "producer": {"type": "http", "url": "https://x.example/h", "headers": {"authorization": "Bearer k"},
                         "signing": {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}
        }))
        .unwrap()
    }

    #[test]
    fn sealed_secrets_open_only_where_they_were_sealed() {
        let s = Sealer::new(Some(&Sealer::generate_key().unwrap())).unwrap();
        let t = TenantId::new("acme").unwrap();
        let sealed = s.seal_spec(&t, &spec()).unwrap();
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(!text.contains("Bearer k") && !text.contains("whsec_"), "{text}");
        assert_eq!(text.matches(SEALED).count(), 3, "{text}");
        assert_eq!(s.open_spec(&t, sealed.clone()).unwrap(), spec());
        // Sealing twice does not wrap a sealed value again.
        assert_eq!(s.seal_spec(&t, &sealed).unwrap(), sealed);
        // Another tenant's row, another key, or no key: refused.
        let other = TenantId::new("other").unwrap();
        assert!(s.open_spec(&other, sealed.clone()).is_err());
        let k2 = Sealer::new(Some(&Sealer::generate_key().unwrap())).unwrap();
        assert!(k2.open_spec(&t, sealed.clone()).is_err());
        assert!(Sealer::new(None).unwrap().open_spec(&t, sealed).is_err());
        // Plain text from before a key was set is read as it is.
        assert_eq!(s.open_spec(&t, spec()).unwrap(), spec());
    }

    #[test]
    fn keys_are_checked() {
        assert!(Sealer::new(Some("short")).is_err());
        assert!(Sealer::new(Some(&STANDARD.encode([0u8; 16]))).is_err());
        assert!(!Sealer::new(None).unwrap().encrypts());
    }
}
