//! ListObjects (v1) and ListObjectsV2 over a directory tree, in key order,
//! with prefix, delimiter, marker or continuation token and a page size.
//!
//! Keys are paths, so a walk of the tree in the right order yields them in
//! S3's order: within a directory, a file's key part is its name and a
//! directory's is its name followed by `/`, and sorting entries by that
//! (not by name: `a-b` sorts before `a/`, and `a.txt` after it) makes a
//! depth-first walk visit keys in byte order. Whole directories are skipped
//! when they cannot hold a key of the page: outside the prefix, before the
//! marker, or (with `/` as the delimiter) collapsed into one common prefix.
//! A page costs one directory read per directory it enters, whatever the
//! size of the rest of the bucket.

use dfs_proto::{FileKind, InodeRecord};
use futures::StreamExt;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::{timestamp, Gateway};
use crate::auth::User;
use crate::object_meta;
use crate::perm::{self, EXEC, READ};
use crate::volume::OrS3;

/// Most keys in one page (S3's limit).
const MAX_KEYS: i32 = 1000;
/// Objects whose metadata is read at once for a page.
const META_READS_AT_ONCE: usize = 16;

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub objects: Vec<(String, InodeRecord)>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or prefix of the page: where the next one starts.
    pub last: Option<String>,
}

/// What a listing asks for.
pub struct Query<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    /// Only keys (and prefixes) after this one.
    pub after: &'a str,
    pub max: usize,
}

/// One directory being walked.
struct Frame {
    /// The key of the directory with its `/` ("" for the bucket).
    key: String,
    /// Its entries, in key order, with their key parts.
    entries: Vec<(String, InodeRecord)>,
    next: usize,
}

enum Item {
    Object(String, InodeRecord),
    Prefix(String),
}

/// What a key is to a page.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    /// Listed as itself.
    Key,
    /// Listed as this common prefix.
    Prefix(String),
    /// Not listed: outside the prefix, or its common prefix came before.
    Skip,
}

impl Query<'_> {
    /// What a key adds to the page: itself, a common prefix, or nothing.
    fn classify(&self, key: &str) -> Class {
        if !key.starts_with(self.prefix) {
            return Class::Skip;
        }
        if let Some(d) = self.delimiter.filter(|d| !d.is_empty()) {
            if let Some(i) = key[self.prefix.len()..].find(d) {
                let cp = &key[..self.prefix.len() + i + d.len()];
                return if cp > self.after {
                    Class::Prefix(cp.to_string())
                } else {
                    Class::Skip
                };
            }
        }
        if key > self.after {
            Class::Key
        } else {
            Class::Skip
        }
    }

    /// Whether a directory whose keys all start with `dir_key` (which ends
    /// in `/`) can hold anything for the page.
    fn may_hold(&self, dir_key: &str) -> bool {
        let in_prefix = dir_key.starts_with(self.prefix) || self.prefix.starts_with(dir_key);
        let before_marker = self.after > dir_key && !self.after.starts_with(dir_key);
        in_prefix && !before_marker
    }
}

impl Gateway {
    /// Reads a directory's entries in key order, or `None` when `user`
    /// may not list it (it is then left out, as `find` would go on).
    async fn frame(&self, user: &User, key: String, dir: &InodeRecord) -> S3Result<Option<Frame>> {
        if perm::check(self.volume.dfs(), user, dir, READ | EXEC)
            .await
            .is_err()
        {
            return Ok(None);
        }
        let mut entries: Vec<(String, InodeRecord)> = Vec::new();
        for e in self.volume.entries(dir.ino).await.s3()? {
            let Some(attr) = e.attr else { continue };
            let Ok(name) = String::from_utf8(e.name) else {
                // Not UTF-8: no S3 key can name it.
                continue;
            };
            let part = match attr.kind() {
                FileKind::Directory => format!("{name}/"),
                FileKind::Regular => name,
                _ => continue,
            };
            entries.push((part, attr));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Some(Frame {
            key,
            entries,
            next: 0,
        }))
    }

    /// One page of `bucket`'s keys.
    pub async fn list_page(&self, user: &User, bucket: &str, q: &Query<'_>) -> S3Result<Page> {
        let dir = self.volume.bucket(user, bucket).await?;
        perm::check(self.volume.dfs(), user, &dir, READ | EXEC)
            .await
            .s3()?;
        let mut page = Page::default();
        if q.max == 0 {
            return Ok(page);
        }
        let Some(root) = self.frame(user, String::new(), &dir).await? else {
            return Ok(page);
        };
        let mut stack = vec![root];
        let slash_delimited = q.delimiter == Some("/");
        while let Some(frame) = stack.last_mut() {
            let Some((part, attr)) = frame.entries.get(frame.next).cloned() else {
                stack.pop();
                continue;
            };
            frame.next += 1;
            let key = format!("{}{part}", frame.key);
            let item = if attr.kind() == FileKind::Directory {
                if !q.may_hold(&key) {
                    continue;
                }
                // With `/` as the delimiter, a directory below the prefix is
                // one common prefix: no need to look inside.
                if slash_delimited && key.starts_with(q.prefix) && key.len() > q.prefix.len() {
                    match q.classify(&key) {
                        Class::Prefix(p) => Item::Prefix(p),
                        Class::Key | Class::Skip => continue,
                    }
                } else {
                    if let Some(next) = self.frame(user, key, &attr).await? {
                        stack.push(next);
                    }
                    continue;
                }
            } else {
                match q.classify(&key) {
                    Class::Key => Item::Object(key, attr),
                    Class::Prefix(p) => Item::Prefix(p),
                    Class::Skip => continue,
                }
            };
            let name = match &item {
                Item::Object(k, _) => k.clone(),
                Item::Prefix(p) => p.clone(),
            };
            if page.last.as_deref() == Some(name.as_str()) {
                continue; // the same common prefix again
            }
            if page.objects.len() + page.prefixes.len() >= q.max {
                page.truncated = true;
                break;
            }
            match item {
                Item::Object(k, a) => page.objects.push((k, a)),
                Item::Prefix(p) => page.prefixes.push(p),
            }
            page.last = Some(name);
        }
        Ok(page)
    }

    /// The page's objects as S3 describes them: ETags from their metadata
    /// where `user` may read the object (an MD5 says something of the
    /// content), else made from inode and version.
    async fn describe(&self, user: &User, page: &Page, url: bool) -> Vec<Object> {
        let dfs = self.volume.dfs().clone();
        futures::stream::iter(page.objects.iter().cloned())
            .map(|(key, attr)| {
                let dfs = dfs.clone();
                async move {
                    let etag = if perm::check(&dfs, user, &attr, READ).await.is_ok() {
                        let meta = object_meta::load(&dfs, attr.ino).await.unwrap_or_default();
                        meta.etag_for(&attr)
                    } else {
                        object_meta::synthetic_etag(&attr)
                    };
                    Object {
                        e_tag: Some(ETag::Strong(etag)),
                        key: Some(encode(&key, url)),
                        last_modified: Some(timestamp(attr.mtime_ns)),
                        size: i64::try_from(attr.size).ok(),
                        storage_class: Some(ObjectStorageClass::from_static(
                            ObjectStorageClass::STANDARD,
                        )),
                        ..Default::default()
                    }
                }
            })
            .buffered(META_READS_AT_ONCE)
            .collect()
            .await
    }

    pub(super) async fn list_objects_v2_impl(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let user = self.user(&req).await?;
        let input = req.input;
        let max = page_size(input.max_keys)?;
        let after = match &input.continuation_token {
            Some(token) => decode_token(token)?,
            None => input.start_after.clone().unwrap_or_default(),
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let q = Query {
            prefix: &prefix,
            delimiter: input.delimiter.as_deref(),
            after: &after,
            max,
        };
        let page = self.list_page(&user, &input.bucket, &q).await?;
        let url = wants_url(input.encoding_type.as_ref());
        let contents = self.describe(&user, &page, url).await;
        let prefixes: Vec<CommonPrefix> = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(encode(p, url)),
            })
            .collect();
        let count = contents.len() + prefixes.len();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(encode(&prefix, url)),
            delimiter: input.delimiter.map(|d| encode(&d, url)),
            max_keys: input.max_keys.or(Some(MAX_KEYS)),
            key_count: i32::try_from(count).ok(),
            continuation_token: input.continuation_token,
            start_after: input.start_after.map(|s| encode(&s, url)),
            is_truncated: Some(page.truncated),
            next_continuation_token: page
                .last
                .as_ref()
                .filter(|_| page.truncated)
                .map(|l| encode_token(l)),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    pub(super) async fn list_objects_v1(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        let max = page_size(input.max_keys)?;
        let after = input.marker.clone().unwrap_or_default();
        let prefix = input.prefix.clone().unwrap_or_default();
        let q = Query {
            prefix: &prefix,
            delimiter: input.delimiter.as_deref(),
            after: &after,
            max,
        };
        let page = self.list_page(&user, &input.bucket, &q).await?;
        let url = wants_url(input.encoding_type.as_ref());
        let contents = self.describe(&user, &page, url).await;
        let prefixes: Vec<CommonPrefix> = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(encode(p, url)),
            })
            .collect();
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(encode(&prefix, url)),
            marker: Some(encode(&input.marker.unwrap_or_default(), url)),
            delimiter: input.delimiter.map(|d| encode(&d, url)),
            max_keys: input.max_keys.or(Some(MAX_KEYS)),
            is_truncated: Some(page.truncated),
            next_marker: page
                .last
                .as_ref()
                .filter(|_| page.truncated)
                .map(|l| encode(l, url)),
            contents: Some(contents),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }
}

impl Gateway {
    /// ListObjectVersions on a volume without versioning: each object is
    /// its one, latest version, `null` (what S3 says of objects written
    /// while a bucket's versioning was never enabled). Tools that clean
    /// buckets by versions (s3-tests, `aws s3 rb --force` on some setups)
    /// work unchanged.
    pub(super) async fn list_versions_impl(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        let max = page_size(input.max_keys)?;
        let after = input.key_marker.clone().unwrap_or_default();
        let prefix = input.prefix.clone().unwrap_or_default();
        let q = Query {
            prefix: &prefix,
            delimiter: input.delimiter.as_deref(),
            after: &after,
            max,
        };
        let page = self.list_page(&user, &input.bucket, &q).await?;
        let url = wants_url(input.encoding_type.as_ref());
        let versions: Vec<ObjectVersion> = self
            .describe(&user, &page, url)
            .await
            .into_iter()
            .map(|o| ObjectVersion {
                e_tag: o.e_tag,
                is_latest: Some(true),
                key: o.key,
                last_modified: o.last_modified,
                size: o.size,
                storage_class: Some(ObjectVersionStorageClass::from_static(
                    ObjectVersionStorageClass::STANDARD,
                )),
                version_id: Some("null".to_string()),
                ..Default::default()
            })
            .collect();
        let prefixes: Vec<CommonPrefix> = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(encode(p, url)),
            })
            .collect();
        let next = page.last.as_ref().filter(|_| page.truncated);
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: Some(encode(&prefix, url)),
            delimiter: input.delimiter.map(|d| encode(&d, url)),
            max_keys: input.max_keys.or(Some(MAX_KEYS)),
            key_marker: input.key_marker.map(|m| encode(&m, url)),
            version_id_marker: input.version_id_marker,
            is_truncated: Some(page.truncated),
            next_key_marker: next.map(|l| encode(l, url)),
            next_version_id_marker: next.map(|_| "null".to_string()),
            versions: Some(versions),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }
}

fn page_size(max_keys: Option<i32>) -> S3Result<usize> {
    match max_keys {
        None => Ok(MAX_KEYS as usize),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
        Some(n) => Ok(usize::try_from(n.min(MAX_KEYS)).unwrap_or(0)),
    }
}

fn wants_url(encoding: Option<&EncodingType>) -> bool {
    encoding.is_some_and(|e| e.as_str() == EncodingType::URL)
}

/// A key as `encoding-type=url` asks for it: percent-encoded but for
/// unreserved characters and `/`.
fn encode(s: &str, url: bool) -> String {
    if !url {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Continuation tokens are the last key or prefix of the page, opaque to
/// clients (base64url): the next page starts after it.
fn encode_token(last: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.as_bytes())
}

fn decode_token(token: &str) -> S3Result<String> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "not a continuation token of this gateway"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q<'a>(prefix: &'a str, delimiter: Option<&'a str>, after: &'a str) -> Query<'a> {
        Query {
            prefix,
            delimiter,
            after,
            max: 1000,
        }
    }

    #[test]
    fn directories_are_skipped_when_they_cannot_matter() {
        assert!(q("", None, "").may_hold("a/"));
        assert!(q("a/b", None, "").may_hold("a/"));
        assert!(q("a/b", None, "").may_hold("a/bc/"));
        assert!(!q("a/b", None, "").may_hold("c/"));
        // Everything under b/ sorts before the marker c.
        assert!(!q("", None, "c").may_hold("b/"));
        // The marker is inside d/: part of it is still to come.
        assert!(q("", None, "d/x").may_hold("d/"));
        assert!(q("", None, "d/").may_hold("d/"));
    }

    #[test]
    fn keys_collapse_into_common_prefixes() {
        let query = q("photos/", Some("/"), "");
        assert_eq!(
            query.classify("photos/2026/a.jpg"),
            Class::Prefix("photos/2026/".into())
        );
        assert_eq!(query.classify("photos/a.jpg"), Class::Key);
        assert_eq!(query.classify("videos/a.mp4"), Class::Skip);
        // A prefix at or before the marker is not listed again.
        let resumed = q("photos/", Some("/"), "photos/2026/");
        assert_eq!(resumed.classify("photos/2026/b.jpg"), Class::Skip);
        assert_eq!(
            resumed.classify("photos/2027/b.jpg"),
            Class::Prefix("photos/2027/".into())
        );
    }

    #[test]
    fn tokens_round_trip_and_keys_encode() {
        let t = encode_token("a b/ü");
        assert_eq!(decode_token(&t).ok().as_deref(), Some("a b/ü"));
        assert!(decode_token("!!").is_err());
        assert_eq!(encode("a b/c+d", true), "a%20b/c%2Bd");
        assert_eq!(encode("a b", false), "a b");
    }
}
