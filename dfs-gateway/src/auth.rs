//! Who signed a request: the access keys dfs-meta keeps
//! (`dfs_meta::access_keys`), fetched on first use and cached for a while
//! (`--key-cache-secs`, a minute by default), so a removed key stops
//! working within that time and a busy gateway asks dfs-meta once a
//! minute per key, not once per request. Keys not in the cache are looked
//! up at most `--key-lookup-rate` times a second in all: a flood of
//! made-up keys gets 503 SlowDown, not a dfs-meta read each, and keys in
//! the cache keep working through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_core::rpc::RpcTransport;
use dfs_proto::access_keys_client::AccessKeysClient;
use dfs_proto::{AccessKeyRecord, AccessKeyRequest};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};

use crate::limits::{slow_down_because, TokenBucket};

/// Keys the cache holds at most.
const KEY_CACHE_ENTRIES: u64 = 100_000;

/// The POSIX user a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl User {
    pub fn root() -> Self {
        Self {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// A key as the gateway uses it (its Debug form leaves the secret out).
#[derive(Clone)]
pub struct Key {
    pub access_key: String,
    pub secret: String,
    pub user: User,
    /// 0: the gateway's default.
    pub request_rate: u32,
    pub byte_rate: u64,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("access_key", &self.access_key)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl From<AccessKeyRecord> for Key {
    fn from(r: AccessKeyRecord) -> Self {
        Self {
            access_key: r.access_key,
            secret: r.secret_key,
            user: User {
                uid: r.uid,
                gid: r.gid,
                groups: r.groups,
            },
            request_rate: r.request_rate,
            byte_rate: r.byte_rate,
        }
    }
}

#[derive(Clone)]
pub struct Keys {
    client: AccessKeysClient<RpcTransport>,
    /// `None`: dfs-meta said there is no such key.
    cache: moka::future::Cache<String, Option<Arc<Key>>>,
    /// Lookups of keys not in the cache, all keys together.
    lookups: Arc<parking_lot::Mutex<TokenBucket>>,
}

impl Keys {
    /// Keys from dfs-meta through `meta`, each believed for `ttl`, at most
    /// `lookups_per_sec` looked up a second.
    pub fn new(meta: RpcTransport, ttl: Duration, lookups_per_sec: u32) -> Self {
        Self {
            client: AccessKeysClient::new(meta),
            cache: moka::future::Cache::builder()
                .max_capacity(KEY_CACHE_ENTRIES)
                .time_to_live(ttl)
                .build(),
            lookups: Arc::new(parking_lot::Mutex::new(TokenBucket::new(
                f64::from(lookups_per_sec.max(1)),
                Instant::now(),
            ))),
        }
    }

    /// Takes one lookup from the budget, or says how long until one is.
    fn admit_lookup(&self) -> S3Result<()> {
        let mut budget = self.lookups.lock();
        let wait = budget.wait_for(1.0, Instant::now());
        if wait.is_zero() {
            budget.take(1.0);
            Ok(())
        } else {
            Err(slow_down_because(
                wait,
                "too many unknown access keys at once; retry later",
            ))
        }
    }

    /// The key, from the cache or dfs-meta. An unknown key is `None`; a
    /// failure to ask is an error (and is not cached).
    pub async fn get(&self, access_key: &str) -> S3Result<Option<Arc<Key>>> {
        if let Some(hit) = self.cache.get(access_key).await {
            return Ok(hit);
        }
        self.admit_lookup()?;
        let mut client = self.client.clone();
        let answer = client
            .get(AccessKeyRequest {
                access_key: access_key.to_string(),
            })
            .await;
        let key = match answer {
            Ok(reply) => Some(Arc::new(Key::from(reply.into_inner()))),
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => {
                let err = dfs_core::error::DfsError::from(status);
                tracing::warn!(error = %err.message, "cannot read an access key from dfs-meta");
                return Err(s3_error!(
                    ServiceUnavailable,
                    "the metadata service cannot be reached; retry"
                ));
            }
        };
        self.cache.insert(access_key.to_string(), key.clone()).await;
        Ok(key)
    }

    /// The key a verified request was signed with.
    pub async fn signed(&self, credentials: Option<&s3s::auth::Credentials>) -> S3Result<Arc<Key>> {
        let Some(credentials) = credentials else {
            return Err(s3_error!(
                AccessDenied,
                "anonymous requests are not allowed"
            ));
        };
        self.get(&credentials.access_key)
            .await?
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))
    }
}

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.get(access_key).await? {
            Some(key) => Ok(SecretKey::from(key.secret.clone())),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}
