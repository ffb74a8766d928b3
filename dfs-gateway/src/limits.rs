//! Per-key rate limits: a token bucket of requests and one of bytes (up
//! and down together) for each access key. A request finding either empty
//! is answered 503 SlowDown with a Retry-After saying when it would pass,
//! as S3 does. Bytes are charged as they flow and a transfer that
//! overdraws the bucket waits, piece by piece, until it is back to zero:
//! the key's transfers together move at its byte rate.
//!
//! The check runs in s3s's access hook, after the signature was verified,
//! so unsigned traffic never reaches a key's buckets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use s3s::access::{S3Access, S3AccessContext};
use s3s::{s3_error, S3Error, S3Result};

use crate::auth::{Key, Keys};

/// A bucket refills at `rate` a second up to one second's worth (or one
/// unit, for rates below one): short bursts pass, a sustained excess not.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.last = now;
    }

    /// How long until the bucket holds `n` tokens (zero: it does now).
    pub(crate) fn wait_for(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= n {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n - self.tokens) / self.rate)
        }
    }

    pub(crate) fn take(&mut self, n: f64) {
        self.tokens -= n;
    }
}

#[derive(Debug)]
struct KeyBuckets {
    /// The rates the buckets were made for: a key whose rates changed in
    /// dfs-meta gets new buckets.
    rates: (u32, u64),
    requests: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

pub struct Limits {
    /// Defaults for keys that set none (0: unlimited).
    request_rate: u32,
    byte_rate: u64,
    keys: Mutex<HashMap<String, KeyBuckets>>,
}

pub(crate) fn slow_down(wait: Duration) -> S3Error {
    slow_down_because(wait, "this access key is over its rate; retry later")
}

pub(crate) fn slow_down_because(wait: Duration, why: &str) -> S3Error {
    let mut e = s3_error!(SlowDown, "{why}");
    let secs = wait.as_secs_f64().ceil().max(1.0);
    let mut headers = hyper::HeaderMap::new();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("{secs:.0}")) {
        headers.insert(hyper::header::RETRY_AFTER, v);
    }
    e.set_headers(headers);
    e
}

impl Limits {
    pub fn new(request_rate: u32, byte_rate: u64) -> Self {
        Self {
            request_rate,
            byte_rate,
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn buckets<'a>(
        &self,
        keys: &'a mut HashMap<String, KeyBuckets>,
        key: &Key,
        now: Instant,
    ) -> &'a mut KeyBuckets {
        let request_rate = if key.request_rate > 0 {
            key.request_rate
        } else {
            self.request_rate
        };
        let byte_rate = if key.byte_rate > 0 {
            key.byte_rate
        } else {
            self.byte_rate
        };
        let fresh = || KeyBuckets {
            rates: (request_rate, byte_rate),
            requests: (request_rate > 0).then(|| TokenBucket::new(f64::from(request_rate), now)),
            bytes: (byte_rate > 0).then(|| TokenBucket::new(byte_rate as f64, now)),
        };
        let b = keys.entry(key.access_key.clone()).or_insert_with(fresh);
        if b.rates != (request_rate, byte_rate) {
            *b = fresh();
        }
        b
    }

    /// Lets one request of `key` through, or says when to retry.
    pub fn admit(&self, key: &Key) -> S3Result<()> {
        let now = Instant::now();
        let mut keys = self.keys.lock();
        let b = self.buckets(&mut keys, key, now);
        if let Some(bytes) = &mut b.bytes {
            // Overdrawn by an earlier transfer: wait until back to zero.
            let wait = bytes.wait_for(0.0, now);
            if !wait.is_zero() {
                return Err(slow_down(wait));
            }
        }
        if let Some(requests) = &mut b.requests {
            let wait = requests.wait_for(1.0, now);
            if !wait.is_zero() {
                return Err(slow_down(wait));
            }
            requests.take(1.0);
        }
        Ok(())
    }

    /// Charges `n` bytes to `key`; how long until its balance is back to
    /// zero (what the transfer then waits).
    fn charge(&self, key: &Key, n: usize) -> Duration {
        let now = Instant::now();
        let mut keys = self.keys.lock();
        let b = self.buckets(&mut keys, key, now);
        match &mut b.bytes {
            Some(bytes) => {
                bytes.refill(now);
                bytes.take(n as f64);
                bytes.wait_for(0.0, now)
            }
            None => Duration::ZERO,
        }
    }

    /// `stream`, with its bytes charged to `key` as they pass, held back
    /// while the key is over its byte rate.
    pub fn meter<S, E>(
        self: &Arc<Self>,
        key: &Key,
        stream: S,
    ) -> impl Stream<Item = Result<Bytes, E>> + Send + Sync + Unpin + 'static
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Sync + 'static,
        E: Send + Sync + 'static,
    {
        let limits = self.clone();
        let key = key.clone();
        let throttled = stream.then(move |piece| {
            let wait = match &piece {
                Ok(bytes) => limits.charge(&key, bytes.len()),
                Err(_) => Duration::ZERO,
            };
            async move {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                piece
            }
        });
        // `then` holds a future between items, which is not Sync: a task
        // and a channel hand the pieces over instead.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let mut throttled = std::pin::pin!(throttled);
            while let Some(piece) = throttled.next().await {
                if tx.send(piece).await.is_err() {
                    break;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// The access hook: every request is signed (no anonymous access) by a
/// known key that is within its rates.
pub struct Gate {
    pub keys: Keys,
    pub limits: Arc<Limits>,
}

#[async_trait::async_trait]
impl S3Access for Gate {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let key = self.keys.signed(cx.credentials()).await?;
        self.limits.admit(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;

    fn key(request_rate: u32, byte_rate: u64) -> Key {
        Key {
            access_key: "K".into(),
            secret: "S".into(),
            user: User::root(),
            request_rate,
            byte_rate,
        }
    }

    #[test]
    fn a_key_over_its_request_rate_slows_down() {
        let limits = Limits::new(0, 0);
        let k = key(5, 0);
        for _ in 0..5 {
            assert!(limits.admit(&k).is_ok());
        }
        let refused = limits.admit(&k).err();
        assert_eq!(
            refused.as_ref().map(|e| e.code().clone()),
            Some(s3s::S3ErrorCode::SlowDown)
        );
        let retry = refused
            .as_ref()
            .and_then(|e| e.headers())
            .and_then(|h| h.get(hyper::header::RETRY_AFTER))
            .and_then(|v| v.to_str().ok().map(str::to_string));
        assert_eq!(retry.as_deref(), Some("1"));
    }

    #[test]
    fn bytes_overdraw_then_refuse() {
        let limits = Limits::new(0, 1000);
        let k = key(0, 0);
        assert!(limits.admit(&k).is_ok());
        let wait = limits.charge(&k, 5000);
        assert!(wait >= Duration::from_secs(3), "{wait:?}");
        assert!(limits.admit(&k).is_err());
    }

    #[test]
    fn changed_rates_take_effect() {
        let limits = Limits::new(0, 0);
        assert!(limits.admit(&key(1, 0)).is_ok());
        assert!(limits.admit(&key(1, 0)).is_err());
        // The key was given more in dfs-meta.
        assert!(limits.admit(&key(100, 0)).is_ok());
    }

    #[test]
    fn unlimited_keys_pass() {
        let limits = Limits::new(0, 0);
        let k = key(0, 0);
        for _ in 0..10_000 {
            assert!(limits.admit(&k).is_ok());
        }
    }
}
