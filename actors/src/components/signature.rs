//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}` with a `whsec_<base64>` secret, sent as
//! `webhook-signature: v1,<base64>` (several space-separated signatures may be sent, for
//! example while a secret is rotated). Incoming webhooks are verified with it; deliveries
//! are signed with it. Pure: no I/O, the clock is an argument.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// The secret's prefix.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a `webhook-timestamp` may be from now, either way.
pub const TOLERANCE_S: u64 = 5 * 60;
/// Shortest and longest secret, in bytes after base64 decoding.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=64;
/// Most signatures looked at in one header.
const SIGNATURES_MAX: usize = 8;

/// A signing secret, decoded.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>` (16 to 64 bytes).
    pub fn parse(s: &str) -> Result<Secret, String> {
        let b64 = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("must start with {SECRET_PREFIX:?} followed by base64"))?;
        let bytes = STANDARD
            .decode(b64)
            .map_err(|e| format!("the part after {SECRET_PREFIX:?} is not base64: {e}"))?;
        if !SECRET_BYTES.contains(&bytes.len()) {
            return Err(format!(
                "must decode to {} to {} bytes, not {}",
                SECRET_BYTES.start(),
                SECRET_BYTES.end(),
                bytes.len()
            ));
        }
        Ok(Secret(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    fn context(&self, id: &str, timestamp: &str) -> hmac::Context {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.as_bytes());
        ctx.update(b".");
        ctx
    }

    /// The `webhook-signature` value for a message: `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp_s: u64, body: &[u8]) -> String {
        let mut s = self.signer(id, timestamp_s);
        s.update(body);
        s.finish()
    }

    /// Signs a body that arrives in pieces (a claim-checked payload read from the store).
    pub fn signer(&self, id: &str, timestamp_s: u64) -> Signer {
        Signer(self.context(id, &timestamp_s.to_string()))
    }

    /// Checks an incoming webhook's three headers against its body at `now_s`.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now_s: u64,
    ) -> Result<(), SignatureError> {
        let mut v = self.verifier(id, timestamp, signatures, now_s)?;
        v.update(body);
        v.finish()
    }

    /// Checks the three headers at `now_s` and returns what checks the body as it streams
    /// in (a body too large to hold is verified while it goes to the object store).
    pub fn verifier(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        now_s: u64,
    ) -> Result<Verifier, SignatureError> {
        let id = id
            .filter(|v| !v.is_empty())
            .ok_or(SignatureError::Missing("webhook-id"))?;
        let ts = timestamp
            .filter(|v| !v.is_empty())
            .ok_or(SignatureError::Missing("webhook-timestamp"))?;
        let signatures = signatures
            .filter(|v| !v.trim().is_empty())
            .ok_or(SignatureError::Missing("webhook-signature"))?;
        let at: u64 = ts.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
        if at.abs_diff(now_s) > TOLERANCE_S {
            return Err(SignatureError::Stale);
        }
        let given = signatures
            .split(' ')
            .filter(|s| !s.is_empty())
            .take(SIGNATURES_MAX)
            .filter_map(|sig| sig.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .collect();
        Ok(Verifier {
            ctx: self.context(id, ts),
            given,
        })
    }
}

/// A signature being computed over a body that arrives in pieces.
pub struct Signer(hmac::Context);

impl Signer {
    /// Adds the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    /// The `webhook-signature` value: `v1,<base64>`.
    pub fn finish(self) -> String {
        format!("v1,{}", STANDARD.encode(self.0.sign().as_ref()))
    }
}

/// An incoming signature being checked against a body that arrives in pieces.
pub struct Verifier {
    ctx: hmac::Context,
    given: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// Adds the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        self.ctx.update(piece);
    }

    /// Whether one of the given `v1` signatures matches the whole body.
    pub fn finish(self) -> Result<(), SignatureError> {
        let expected = self.ctx.sign();
        if self.given.iter().any(|g| constant_time_eq(expected.as_ref(), g)) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// Compares without an early exit on the first differing byte (secrets, tokens, tags).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why an incoming webhook's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing.
    #[error("missing {0} header (this integration requires Standard Webhooks signatures)")]
    Missing(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    #[error("webhook-timestamp must be seconds since the Unix epoch")]
    BadTimestamp,
    /// The timestamp is too far from now.
    #[error("webhook-timestamp is more than 5 minutes from the current time")]
    Stale,
    /// No `v1` signature matches.
    #[error("no webhook-signature matches the body (expected v1,<base64 of HMAC-SHA256>)")]
    Mismatch,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_like_the_reference_implementation() {
        let s = Secret::parse(SECRET).unwrap();
        assert_eq!(s.sign(ID, TS, BODY), SIGNATURE);
        assert_eq!(
            s.verify(Some(ID), Some(&TS.to_string()), Some(SIGNATURE), BODY, TS),
            Ok(())
        );
    }

    #[test]
    fn bad_missing_and_stale_are_refused() {
        let s = Secret::parse(SECRET).unwrap();
        let ts = TS.to_string();
        let v = |id, t: Option<&str>, sig, body: &[u8], now| s.verify(id, t, sig, body, now);
        assert_eq!(
            v(None, Some(&ts), Some(SIGNATURE), BODY, TS),
            Err(SignatureError::Missing("webhook-id"))
        );
        assert_eq!(
            v(Some(ID), None, Some(SIGNATURE), BODY, TS),
            Err(SignatureError::Missing("webhook-timestamp"))
        );
        assert_eq!(
            v(Some(ID), Some(&ts), None, BODY, TS),
            Err(SignatureError::Missing("webhook-signature"))
        );
        assert_eq!(
            v(Some(ID), Some(&ts), Some(SIGNATURE), b"{}", TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v(Some("other"), Some(&ts), Some(SIGNATURE), BODY, TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v(Some(ID), Some(&ts), Some("v2,abc"), BODY, TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v(Some(ID), Some("soon"), Some(SIGNATURE), BODY, TS),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            v(Some(ID), Some(&ts), Some(SIGNATURE), BODY, TS + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            v(Some(ID), Some(&ts), Some(SIGNATURE), BODY, TS - 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(v(Some(ID), Some(&ts), Some(SIGNATURE), BODY, TS + 300), Ok(()));
        // One good signature among several is enough (a secret being rotated).
        let several = format!("v1,bm90IGl0 {SIGNATURE}");
        assert_eq!(v(Some(ID), Some(&ts), Some(&several), BODY, TS), Ok(()));
    }

    #[test]
    fn secrets_are_checked() {
        assert!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap_err()
                .contains("whsec_")
        );
        assert!(Secret::parse("whsec_***").unwrap_err().contains("not base64"));
        assert!(Secret::parse("whsec_c2hvcnQ=").unwrap_err().contains("16 to 64 bytes"));
    }

    proptest! {
        #![proptest_config(crate::testkit::proptest_config("../proptest-regressions/actors-signature.txt"))]

        /// Arbitrary headers and bodies never panic, and only the signed body verifies.
        #[test]
        fn verification_never_panics_and_only_the_signed_body_passes(
            id in "\\PC{0,40}",
            ts in "\\PC{0,20}",
            sig in "\\PC{0,120}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let s = Secret::parse(SECRET).unwrap();
            let _ = s.verify(Some(&id), Some(&ts), Some(&sig), &body, TS);
            let good = s.sign(&id, TS, &body);
            prop_assert_eq!(s.verify(Some(&id), Some(&TS.to_string()), Some(&good), &body, TS).is_ok(), !id.is_empty());
            let mut other = body.clone();
            other.push(0);
            prop_assert!(s.verify(Some(&id), Some(&TS.to_string()), Some(&good), &other, TS).is_err());
        }
    }
}
