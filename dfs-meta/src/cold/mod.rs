//! The cold store (issue 21): chunks of files that aged into the cold tier
//! leave the chunk servers for large pack objects on an S3-compatible
//! object store (`dfs-meta --cold-store s3://BUCKET/PREFIX`).
//!
//! A pack is one object of up to [`pack::PACK_BYTES`], written with one
//! PUT: a run of frames, each a few MiB of chunks compressed together with
//! xz, so a chunk is compressed with what surrounds it (the files of a
//! source tree, the members of a tarball) instead of alone. The index from
//! fingerprint to pack, frame and offset is the chunk's own record
//! (`ChunkRecord.packed`); reading a cold chunk fetches its frame with a
//! ranged GET through dfs-meta (`Meta/ReadColdChunk`, [`recall`]), which
//! checks the fingerprint and keeps recent frames in memory. Clients never
//! hold object-store credentials.
//!
//! Crash safety ([`migrate`]): a pack is named in the metadata store
//! (`P id`, writing) before its object is written; chunk records switch to
//! it, only if unchanged since read, in transactions that also seal it,
//! after the PUT returned; the shards they leave on chunk servers are
//! orphans the garbage collector deletes after its grace period. A pack
//! left writing by a crash is deleted, object and record, by a later pass;
//! a sealed pack whose chunks all died is deleted likewise.

mod archive;
pub mod migrate;
pub mod pack;
pub mod recall;
pub mod reheat;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dfs_proto::ChunkRecord;
use object_store::aws::AmazonS3ConfigKey;
use object_store::path::Path;
use object_store::{Attribute, ObjectStore, PutOptions, PutPayload};

use crate::keys;
use crate::store::KvTxn;

/// What went wrong talking to the cold store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ColdError {
    #[error("cold store configuration: {0}")]
    Config(String),
    /// Unreachable, refusing, or failing: reads of cold chunks fail with
    /// EIO until it is back; nothing is lost.
    #[error("cold store {url} unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("cold store {url}: object {object} not found")]
    NotFound { url: String, object: String },
    /// The bytes came back but are not what the index says.
    #[error("cold chunk damaged: {0}")]
    Corrupt(String),
    #[error("no cold store is configured (dfs-meta --cold-store)")]
    NotConfigured,
    /// In an archive storage class, not restored: the GET was refused.
    #[error("{object} is in an archive storage class")]
    Archived { object: String },
    /// A restore of the object was asked for and runs: retry later.
    #[error("{object} is being restored from archive storage; retry later")]
    Restoring { object: String },
}

/// Object-store requests give up after this long, so a read of a cold
/// chunk while the store is down fails instead of hanging.
const REQUEST_RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// A 64 MiB PUT on a slow link still fits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An S3-compatible bucket (or, for one machine and tests, a directory or
/// memory) holding pack objects under a prefix.
pub struct ColdStore {
    objects: Arc<dyn ObjectStore>,
    prefix: Path,
    /// As given, for messages.
    url: String,
    /// The storage class packs are written with (`None`: the store's
    /// default).
    storage_class: Option<String>,
    /// S3 only: asks for archived objects to be restored.
    archive: Option<archive::Restorer>,
}

impl ColdStore {
    /// Opens `url`: `s3://BUCKET[/PREFIX]` (endpoint, region and keys from
    /// the usual `AWS_*` variables: `AWS_ENDPOINT_URL`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint), `file:///DIR`, or
    /// `memory:` (tests).
    pub fn open(url: &str) -> Result<Self, ColdError> {
        let config = |e: object_store::Error| ColdError::Config(format!("{url}: {e}"));
        let mut archive = None;
        let (objects, prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) =
            url.strip_prefix("s3://")
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ColdError::Config(format!("{url}: no bucket named")));
            }
            let retry = object_store::RetryConfig {
                retry_timeout: REQUEST_RETRY_TIMEOUT,
                max_retries: 3,
                ..Default::default()
            };
            let client = object_store::ClientOptions::new()
                .with_timeout(REQUEST_TIMEOUT)
                .with_connect_timeout(CONNECT_TIMEOUT);
            // The `AWS_*` variables over these defaults (what
            // `from_env` reads, without it replacing the timeouts).
            let mut s3 = object_store::aws::AmazonS3Builder::new()
                .with_retry(retry)
                .with_client_options(client);
            for (name, value) in std::env::vars() {
                if name.starts_with("AWS_") {
                    if let Ok(key) = name.to_ascii_lowercase().parse() {
                        s3 = s3.with_config(key, value);
                    }
                }
            }
            let s3 = s3.with_bucket_name(bucket);
            let endpoint = s3.get_config_value(&AmazonS3ConfigKey::Endpoint);
            let region = s3
                .get_config_value(&AmazonS3ConfigKey::Region)
                .unwrap_or_else(|| "us-east-1".into());
            let s3 = Arc::new(s3.build().map_err(config)?);
            archive = Some(archive::Restorer::new(
                s3.clone(),
                endpoint,
                bucket.to_string(),
                region,
            ));
            (s3, prefix.to_string())
        } else if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).map_err(|e| ColdError::Config(format!("{url}: {e}")))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(config)?;
            (Arc::new(fs), String::new())
        } else if url == "memory:" {
            (
                Arc::new(object_store::memory::InMemory::new()),
                String::new(),
            )
        } else {
            return Err(ColdError::Config(format!(
                "{url}: expected s3://BUCKET[/PREFIX], file:///DIR or memory:"
            )));
        };
        Ok(Self {
            objects,
            prefix: Path::from(prefix),
            url: url.to_string(),
            storage_class: None,
            archive,
        })
    }

    /// Packs are written in storage class `class` (S3's `GLACIER`,
    /// `DEEP_ARCHIVE`, `STANDARD_IA`...). Reading a chunk of an archived
    /// pack asks the store to restore it and answers EAGAIN until it has.
    pub fn with_storage_class(mut self, class: Option<String>) -> Self {
        self.storage_class = class.filter(|c| !c.is_empty());
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, object: &str) -> Path {
        self.prefix
            .parts()
            .chain(Path::from(object).parts())
            .collect()
    }

    fn error(&self, object: &str, e: object_store::Error) -> ColdError {
        match e {
            object_store::Error::NotFound { .. } => ColdError::NotFound {
                url: self.url.clone(),
                object: object.to_string(),
            },
            // S3 refuses to read an object of an archive class that was
            // not restored.
            other if other.to_string().contains("InvalidObjectState") => ColdError::Archived {
                object: object.to_string(),
            },
            other => ColdError::Unavailable {
                url: self.url.clone(),
                reason: other.to_string(),
            },
        }
    }

    /// Writes `object` whole; when this returns, the store has it durably.
    pub async fn put(&self, object: &str, body: Bytes) -> Result<(), ColdError> {
        let mut options = PutOptions::default();
        if let Some(class) = &self.storage_class {
            options
                .attributes
                .insert(Attribute::StorageClass, class.clone().into());
        }
        self.objects
            .put_opts(&self.path(object), PutPayload::from_bytes(body), options)
            .await
            .map(|_| ())
            .map_err(|e| self.error(object, e))
    }

    /// Bytes `range` of `object`.
    pub async fn get_range(&self, object: &str, range: Range<u64>) -> Result<Bytes, ColdError> {
        let want = range.end - range.start;
        let got = self
            .objects
            .get_range(&self.path(object), range)
            .await
            .map_err(|e| self.error(object, e))?;
        if got.len() as u64 != want {
            return Err(ColdError::Corrupt(format!(
                "{object}: asked for {want} bytes, got {}",
                got.len()
            )));
        }
        Ok(got)
    }

    /// Asks the store to restore archived `object` for a while; fine when
    /// a restore is already under way.
    pub async fn restore(&self, object: &str) -> Result<(), ColdError> {
        let Some(archive) = &self.archive else {
            return Err(ColdError::Unavailable {
                url: self.url.clone(),
                reason: format!("{object} is archived and this store cannot restore it"),
            });
        };
        archive
            .restore(&self.path(object))
            .await
            .map_err(|reason| ColdError::Unavailable {
                url: self.url.clone(),
                reason: format!("restoring {object}: {reason}"),
            })
    }

    /// Deletes `object`; one already gone is not an error.
    pub async fn delete(&self, object: &str) -> Result<(), ColdError> {
        match self.objects.delete(&self.path(object)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(object, e)),
        }
    }

    /// The size of `object`.
    pub async fn size(&self, object: &str) -> Result<u64, ColdError> {
        self.objects
            .head(&self.path(object))
            .await
            .map(|m| m.size)
            .map_err(|e| self.error(object, e))
    }
}

/// Runs `body` on the metadata store off the async runtime (the cold
/// workers are async: they talk to the object store and chunk servers).
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<dyn crate::store::MetaStore>,
    body: impl FnOnce(&dyn crate::store::MetaStore) -> crate::error::Result<T> + Send + 'static,
) -> crate::error::Result<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || body(store.as_ref()))
        .await
        .map_err(|e| crate::error::MetaError::Invalid(format!("cold-tier task panicked: {e}")))?
}

/// An index entry that pointed into a pack is going (collected, or
/// replaced by a new upload): the pack has one live chunk less, and goes
/// once it has none (`migrate::collect_packs`).
pub fn release_packed(txn: &mut dyn KvTxn, rec: &ChunkRecord) -> crate::error::Result<()> {
    if let Some(location) = rec.packed.as_ref().filter(|_| rec.is_packed()) {
        txn.atomic_add(&keys::pack_live(location.pack), -1)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_go_in_and_come_back_by_range() {
        let dir = tempfile::tempdir().unwrap();
        for url in [
            "memory:".to_string(),
            format!("file://{}", dir.path().display()),
        ] {
            let cold = ColdStore::open(&url).unwrap();
            cold.put("packs/1", Bytes::from_static(b"0123456789"))
                .await
                .unwrap();
            assert_eq!(cold.size("packs/1").await.unwrap(), 10);
            assert_eq!(&cold.get_range("packs/1", 3..7).await.unwrap()[..], b"3456");
            assert!(matches!(
                cold.get_range("packs/2", 0..1).await,
                Err(ColdError::NotFound { .. })
            ));
            cold.delete("packs/1").await.unwrap();
            cold.delete("packs/1").await.unwrap();
        }
        assert!(matches!(
            ColdStore::open("ftp://x"),
            Err(ColdError::Config(_))
        ));
        assert!(matches!(
            ColdStore::open("s3://"),
            Err(ColdError::Config(_))
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod migrate_tests;
