//! A body streamed into the object store: hashed, counted and (for a signed integration)
//! verified as it passes, never held whole. A body that ends within one part is one PUT;
//! a longer one is a multipart upload of [`PART_BYTES`] parts, at most [`PARTS_IN_FLIGHT`]
//! of them uploading at once, so memory stays near `PART_BYTES * (PARTS_IN_FLIGHT + 1)`
//! whatever the body's size.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use vrsky_actors::PayloadRef;
use vrsky_actors::components::signature::{SignatureError, Verifier};
use vrsky_actors::payload::sha256_hex;

/// Size of one multipart part (S3's minimum for all parts but the last is 5 MiB).
pub const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts uploading at once.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Why a body was not stored. Nothing is left behind in any case: an interrupted
/// multipart upload is aborted, and a body whose signature fails is never committed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body crossed the limit.
    #[error("body exceeds the {0}-byte limit")]
    TooLarge(u64),
    /// The body could not be read from the client.
    #[error("cannot read body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// The store refused or did not answer.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The signature does not match the whole body.
    #[error(transparent)]
    Signature(SignatureError),
}

enum Sink {
    /// Nothing sent yet: the body so far.
    Buffered(BytesMut),
    /// A multipart upload under way.
    Parts(WriteMultipart),
}

/// Streams `body` to `key`, after `first` (bytes already read), refusing past `max`
/// (the rest of a refused body is left unread in `body`).
pub async fn upload<S, E>(
    store: &dyn ObjectStore,
    key: &str,
    first: Bytes,
    body: &mut S,
    max: u64,
    mut verifier: Option<Verifier>,
) -> Result<PayloadRef, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let path = Path::from(key);
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    let mut sink = Sink::Buffered(BytesMut::new());
    let mut next = Some(first);
    let mut result = Ok(());
    loop {
        let chunk = match next.take() {
            Some(c) => c,
            None => match body.next().await {
                None => break,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    result = Err(UploadError::Body(Box::new(e)));
                    break;
                }
            },
        };
        size += chunk.len() as u64;
        if size > max {
            result = Err(UploadError::TooLarge(max));
            break;
        }
        hash.update(&chunk);
        if let Some(v) = verifier.as_mut() {
            v.update(&chunk);
        }
        let step = match &mut sink {
            Sink::Buffered(buf) if buf.len() + chunk.len() < PART_BYTES => {
                buf.extend_from_slice(&chunk);
                Ok(())
            }
            Sink::Buffered(buf) => match store.put_multipart(&path).await {
                Ok(up) => {
                    let mut w = WriteMultipart::new_with_chunk_size(up, PART_BYTES);
                    w.put(std::mem::take(buf).freeze());
                    w.put(chunk);
                    sink = Sink::Parts(w);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Sink::Parts(w) => w.wait_for_capacity(PARTS_IN_FLIGHT).await.map(|()| w.put(chunk)),
        };
        if let Err(e) = step {
            result = Err(UploadError::Store(e));
            break;
        }
    }
    // The whole body has been hashed: a bad signature is known before anything is
    // committed, so a forged body is never stored.
    let result = result.and_then(|()| match verifier {
        Some(v) => v.finish().map_err(UploadError::Signature),
        None => Ok(()),
    });
    if let Err(e) = result {
        if let Sink::Parts(w) = sink {
            let _ = w.abort().await;
        }
        return Err(e);
    }
    match sink {
        Sink::Buffered(buf) => {
            store.put(&path, PutPayload::from(buf.freeze())).await?;
        }
        Sink::Parts(w) => {
            w.finish().await?;
        }
    }
    Ok(PayloadRef {
        key: key.to_owned(),
        size,
        sha256: sha256_hex(hash.finish().as_ref()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use object_store::memory::InMemory;

    fn chunks(total: usize, each: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        let mut left = total;
        let mut n = 0u8;
        futures::stream::iter(std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let len = each.min(left);
            left -= len;
            n = n.wrapping_add(1);
            Some(Ok(Bytes::from(vec![n; len])))
        }))
    }

    #[tokio::test]
    async fn small_and_multipart_bodies_are_stored_whole_with_their_hash() {
        let store = InMemory::new();
        for total in [10, PART_BYTES - 1, PART_BYTES, 3 * PART_BYTES + 17] {
            let key = format!("payloads/t/i/m/{total}");
            let r = upload(
                &store,
                &key,
                Bytes::new(),
                &mut chunks(total, 64 * 1024),
                u64::MAX,
                None,
            )
            .await
            .unwrap();
            let stored = store
                .get(&Path::from(key.as_str()))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(stored.len(), total);
            let digest = ring::digest::digest(&ring::digest::SHA256, &stored);
            assert_eq!((r.size, r.sha256), (total as u64, sha256_hex(digest.as_ref())));
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_leaves_nothing() {
        let store = InMemory::new();
        let err = upload(
            &store,
            "payloads/t/i/m/x",
            Bytes::new(),
            &mut chunks(2 * PART_BYTES, 1 << 20),
            PART_BYTES as u64 + 1,
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, UploadError::TooLarge(_)), "{err}");
        assert!(store.list(None).next().await.is_none(), "nothing stored");
    }

    #[tokio::test]
    async fn a_bad_signature_stores_nothing() {
        use vrsky_actors::components::signature::Secret;
        let store = InMemory::new();
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let now = 1_700_000_000;
        let good = {
            // What `chunks(1000, 100)` yields: ten runs of 100 bytes, valued 1 to 10.
            let mut s = secret.signer("id", now);
            for n in 1..=10u8 {
                s.update(&[n; 100]);
            }
            s.finish()
        };
        let v = secret
            .verifier(Some("id"), Some(&now.to_string()), Some(&good), now)
            .unwrap();
        upload(
            &store,
            "payloads/t/i/m/a",
            Bytes::new(),
            &mut chunks(1000, 100),
            u64::MAX,
            Some(v),
        )
        .await
        .unwrap();
        let v = secret
            .verifier(Some("id"), Some(&now.to_string()), Some(&good), now)
            .unwrap();
        let err = upload(
            &store,
            "payloads/t/i/m/b",
            Bytes::new(),
            &mut chunks(1001, 100),
            u64::MAX,
            Some(v),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, UploadError::Signature(SignatureError::Mismatch)), "{err}");
        let keys: Vec<_> = store
            .list(None)
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        assert_eq!(keys, vec!["payloads/t/i/m/a".to_owned()]);
    }
}
