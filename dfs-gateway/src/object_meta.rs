//! What S3 keeps about an object beside its bytes (ETag, content type and
//! the like, user metadata), in one extended attribute of the file,
//! `user.s3`, as JSON: one read per HEAD, GET or listed object, and
//! readable on a mount with `getfattr -n user.s3`.
//!
//! The ETag is only good for the data it was computed from: it is stored
//! with the file's data version, and a file changed since (through a
//! mount) gets an ETag made from its inode and data version instead, in
//! the multipart form (`…-1`) that tells clients it is not an MD5.

use std::collections::BTreeMap;

use dfs_core::error::DfsError;
use dfs_mount::fs::Dfs;
use dfs_proto::InodeRecord;
use serde::{Deserialize, Serialize};

pub const XATTR: &[u8] = b"user.s3";
/// S3's limit on user metadata (names and values together).
pub const MAX_USER_METADATA_BYTES: usize = 2048;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Without quotes: an MD5 in hex, or `hex-N` for a multipart upload.
    pub etag: String,
    /// The data version of the file the ETag was computed for.
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `Expires`, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// The multipart upload that made the object: completing it again
    /// answers as the first completion did (S3 allows that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
    /// `x-amz-meta-*`, names in lower case without the prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
    /// The sizes of a multipart object's parts, in order: what GET and
    /// HEAD with `partNumber` answer from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<u64>,
}

/// The ETag of a file with no (or an outdated) stored one.
pub fn synthetic_etag(attr: &InodeRecord) -> String {
    format!("{:016x}{:016x}-1", attr.ino, attr.data_version)
}

impl ObjectMeta {
    /// The ETag of `attr` under this metadata.
    pub fn etag_for(&self, attr: &InodeRecord) -> String {
        if self.version == attr.data_version && !self.etag.is_empty() {
            self.etag.clone()
        } else {
            synthetic_etag(attr)
        }
    }

    /// The part sizes of `attr`'s file: the stored ones while they are
    /// for its data (unchanged since the upload, and adding up to its
    /// size), else none (one part, all of it).
    pub fn parts_for(&self, attr: &InodeRecord) -> &[u64] {
        let current =
            self.version == attr.data_version && self.parts.iter().sum::<u64>() == attr.size;
        if current {
            &self.parts
        } else {
            &[]
        }
    }

    pub fn user_metadata_bytes(&self) -> usize {
        self.user.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// The stored metadata of `attr`'s file; empty when none (a file written
/// through a mount) or unreadable.
pub async fn load(dfs: &Dfs, ino: u64) -> Result<ObjectMeta, DfsError> {
    match dfs.getxattr(ino, XATTR).await {
        Ok(value) => Ok(serde_json::from_slice(&value).unwrap_or_default()),
        Err(e) if e.errno == libc::ENODATA => Ok(ObjectMeta::default()),
        Err(e) => Err(e),
    }
}

pub async fn store(dfs: &Dfs, ino: u64, meta: &ObjectMeta) -> Result<(), DfsError> {
    let value = serde_json::to_vec(meta)
        .map_err(|e| DfsError::new(libc::EINVAL, format!("object metadata: {e}")))?;
    set_xattr(dfs, ino, XATTR, value).await
}

/// Sets an xattr of the gateway's own (no ACL rules apply to `user.*`).
pub async fn set_xattr(dfs: &Dfs, ino: u64, name: &[u8], value: Vec<u8>) -> Result<(), DfsError> {
    let request = dfs_proto::XattrRequest {
        ino,
        name: name.to_vec(),
        value,
        flags: 0,
        kill_sgid: false,
        client_id: 0,
    };
    dfs.cluster.meta.set_xattr(request).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_holds_for_its_data_version_only() {
        let meta = ObjectMeta {
            etag: "abc".into(),
            version: 3,
            ..Default::default()
        };
        let mut attr = InodeRecord {
            ino: 9,
            data_version: 3,
            ..Default::default()
        };
        assert_eq!(meta.etag_for(&attr), "abc");
        attr.data_version = 4;
        assert_eq!(meta.etag_for(&attr), synthetic_etag(&attr));
        assert!(synthetic_etag(&attr).ends_with("-1"));
        let json = serde_json::to_string(&meta).unwrap_or_default();
        assert_eq!(json, r#"{"etag":"abc","version":3}"#);
    }
}
