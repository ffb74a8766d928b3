//! Multipart uploads. Each upload is a directory `/.s3/multipart/ID`
//! (its record in the xattr `user.s3.upload`) holding one file per part,
//! written as any object is. Completion builds the object from the parts
//! with `copy_file_range`, which shares their chunks: no byte is read or
//! written again, whatever the object's size.

use futures::StreamExt;
use s3s::crypto::{Checksum, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};
use serde::{Deserialize, Serialize};

use super::objects::CopyConditions;
use super::{timestamp, Gateway, MAX_PUT_BYTES};
use crate::auth::User;
use crate::object_meta::{self, ObjectMeta};
use crate::perm::EXEC;
use crate::volume::{parse_key, s3_error, OrS3, Written, MULTIPART_DIR};

const UPLOAD_XATTR: &[u8] = b"user.s3.upload";
/// S3's bounds: parts 1 to 10,000, each but the last at least 5 MiB.
const MAX_PART_NUMBER: i32 = 10_000;
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
const MAX_PARTS_LISTED: i32 = 1000;

/// What an upload is for, kept on its directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Upload {
    bucket: String,
    key: String,
    uid: u32,
    initiated_ns: i64,
    /// Content type and user metadata for the object.
    meta: ObjectMeta,
}

fn part_name(number: i32) -> String {
    format!("{number:05}")
}

fn check_part_number(number: i32) -> S3Result<()> {
    if (1..=MAX_PART_NUMBER).contains(&number) {
        Ok(())
    } else {
        Err(s3_error!(
            InvalidArgument,
            "part numbers are 1 to {MAX_PART_NUMBER}"
        ))
    }
}

/// The ETag of a multipart object: the MD5 of its parts' MD5s, and how
/// many parts there were.
fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut md5 = Md5::new();
    for p in part_md5s {
        md5.update(p);
    }
    format!("{}-{}", hex::encode(md5.finalize()), part_md5s.len())
}

fn md5_of_etag(etag: &str) -> Option<[u8; 16]> {
    hex::decode(etag).ok()?.try_into().ok()
}

/// The bytes `x-amz-copy-source-range: bytes=FIRST-LAST` names of a source
/// of `size` bytes, as (start, length); all of it when absent.
fn copy_range(range: Option<&str>, size: u64) -> S3Result<(u64, u64)> {
    let Some(range) = range else {
        return Ok((0, size));
    };
    let parsed = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)));
    let Some((first, last)) = parsed.filter(|(first, last)| first <= last) else {
        return Err(s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=FIRST-LAST"
        ));
    };
    if last >= size {
        return Err(s3_error!(
            InvalidRange,
            "the range ends past the source's {size} bytes"
        ));
    }
    Ok((first, last - first + 1))
}

impl Gateway {
    /// The upload's directory and record, for `user` (its initiator or
    /// root) and the bucket and key it was started for.
    async fn upload(
        &self,
        user: &User,
        bucket: &str,
        key: &str,
        id: &str,
    ) -> S3Result<(u64, Upload)> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(s3_error!(NoSuchUpload));
        }
        let uploads = self.volume.private_dir(MULTIPART_DIR).await.s3()?;
        let dir = match self.volume.dfs().lookup(uploads.ino, id.as_bytes()).await {
            Ok(attr) => attr,
            Err(e) if e.errno == libc::ENOENT => return Err(s3_error!(NoSuchUpload)),
            Err(e) => return Err(s3_error(e)),
        };
        let raw = self
            .volume
            .dfs()
            .getxattr(dir.ino, UPLOAD_XATTR)
            .await
            .map_err(|_| s3_error!(NoSuchUpload))?;
        let upload: Upload = serde_json::from_slice(&raw).map_err(|_| s3_error!(NoSuchUpload))?;
        if upload.bucket != bucket || upload.key != key {
            return Err(s3_error!(NoSuchUpload));
        }
        if upload.uid != user.uid && !user.is_root() {
            return Err(s3_error!(AccessDenied, "another user's upload"));
        }
        Ok((dir.ino, upload))
    }

    pub(super) async fn create_multipart(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        let path = parse_key(&input.key)?;
        if path.dir_marker {
            return Err(s3_error!(
                InvalidArgument,
                "a key ending in `/` holds no bytes"
            ));
        }
        let bucket = self.volume.bucket(&user, &input.bucket).await?;
        crate::perm::check(self.volume.dfs(), &user, &bucket, EXEC)
            .await
            .s3()?;
        let meta = ObjectMeta {
            content_type: input.content_type,
            expires: input
                .expires
                .map(|t| time::OffsetDateTime::from(t).unix_timestamp()),
            content_encoding: input.content_encoding,
            content_disposition: input.content_disposition,
            content_language: input.content_language,
            cache_control: input.cache_control,
            user: input
                .metadata
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            ..Default::default()
        };
        if meta.user_metadata_bytes() > object_meta::MAX_USER_METADATA_BYTES {
            return Err(s3_error!(MetadataTooLarge));
        }
        let upload = Upload {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            uid: user.uid,
            initiated_ns: dfs_core::time::now_ns(),
            meta,
        };
        let id = format!("{:032x}", rand::random::<u128>());
        let uploads = self.volume.private_dir(MULTIPART_DIR).await.s3()?;
        let request = dfs_proto::CreateRequest {
            parent: uploads.ino,
            name: id.as_bytes().to_vec(),
            kind: dfs_proto::FileKind::Directory as i32,
            mode: 0o700,
            ..Default::default()
        };
        let dir = self.volume.dfs().create(request).await.s3()?;
        let record = serde_json::to_vec(&upload)
            .map_err(|e| s3_error!(InternalError, "upload record: {e}"))?;
        object_meta::set_xattr(self.volume.dfs(), dir.ino, UPLOAD_XATTR, record)
            .await
            .s3()?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    pub(super) async fn upload_part_impl(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let user = self.user(&req).await?;
        let key = self.keys.signed(req.credentials.as_ref()).await?;
        let input = req.input;
        check_part_number(input.part_number)?;
        let (dir, _) = self
            .upload(&user, &input.bucket, &input.key, &input.upload_id)
            .await?;
        let body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let body = self.limits.meter(&key, body);
        // A part is no object yet: nothing to inherit (0).
        let written = self.volume.write_tmp(&user, 0, body, MAX_PUT_BYTES).await?;
        if let Some(length) = input.content_length {
            if u64::try_from(length).ok() != Some(written.size) {
                self.discard(&written).await;
                return Err(s3_error!(IncompleteBody));
            }
        }
        let etag = hex::encode(written.md5);
        self.store_part(dir, input.part_number, &written, &etag)
            .await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    /// Seals a written part with its ETag and moves it into the upload's
    /// directory as part `number` (replacing one sent before).
    async fn store_part(
        &self,
        dir: u64,
        number: i32,
        written: &Written,
        etag: &str,
    ) -> S3Result<()> {
        let meta = ObjectMeta {
            etag: etag.to_string(),
            ..Default::default()
        };
        if let Err(e) = self.seal(written, meta).await {
            self.discard(written).await;
            return Err(e);
        }
        // The upload's own directory (root's, 0700): no sticky-bit rule.
        let upload_dir = dfs_proto::InodeRecord {
            ino: dir,
            ..Default::default()
        };
        self.volume
            .publish(
                &User::root(),
                written,
                &upload_dir,
                &part_name(number),
                false,
            )
            .await
    }

    /// UploadPartCopy: a part made of a range of an object, its chunks
    /// shared. The part's ETag is the MD5 of its bytes: the source's own
    /// when the part is all of a singly-uploaded object, else read once.
    pub(super) async fn upload_part_copy_impl(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        check_part_number(input.part_number)?;
        let (dir, _) = self
            .upload(&user, &input.bucket, &input.key, &input.upload_id)
            .await?;
        let (src, _, src_etag) = self
            .copy_source(
                &user,
                &input.copy_source,
                CopyConditions {
                    if_match: input.copy_source_if_match.as_ref(),
                    if_none_match: input.copy_source_if_none_match.as_ref(),
                    if_modified_since: input.copy_source_if_modified_since.as_ref(),
                    if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
                },
            )
            .await?;
        let (start, len) = copy_range(input.copy_source_range.as_deref(), src.size)?;
        if len > MAX_PUT_BYTES {
            return Err(s3_error!(
                EntityTooLarge,
                "at most {MAX_PUT_BYTES} bytes in one part"
            ));
        }
        let written = self
            .share_into_tmp(&user, 0, &[(src.clone(), start, len)])
            .await?;
        let whole = start == 0 && len == src.size;
        let etag = match md5_of_etag(&src_etag).filter(|_| whole) {
            Some(_) => src_etag,
            None => match self.md5_of(&written).await {
                Ok(md5) => hex::encode(md5),
                Err(e) => {
                    self.discard(&written).await;
                    return Err(e);
                }
            },
        };
        self.store_part(dir, input.part_number, &written, &etag)
            .await?;
        let attr = self.volume.dfs().getattr(written.ino).await.s3()?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(timestamp(attr.mtime_ns)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    /// The MD5 of a written file's bytes, read through the chunk cache.
    async fn md5_of(&self, written: &Written) -> S3Result<[u8; 16]> {
        let attr = self.volume.dfs().getattr(written.ino).await.s3()?;
        let handle = self.volume.open_read(&attr).await.s3()?;
        let mut stream = self.volume.read_stream(handle, 0, attr.size);
        let mut md5 = Md5::new();
        while let Some(piece) = stream.next().await {
            let piece =
                piece.map_err(|e| s3_error!(InternalError, "reading the part back: {e}"))?;
            md5.update(&piece);
        }
        Ok(md5.finalize())
    }

    /// The parts uploaded so far, by number.
    async fn parts(&self, dir: u64) -> S3Result<Vec<(i32, dfs_proto::InodeRecord, ObjectMeta)>> {
        let mut parts = Vec::new();
        for e in self.volume.entries(dir).await.s3()? {
            let Some(attr) = e.attr else { continue };
            let Some(number) = std::str::from_utf8(&e.name)
                .ok()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let meta = object_meta::load(self.volume.dfs(), attr.ino).await.s3()?;
            parts.push((number, attr, meta));
        }
        parts.sort_by_key(|p| p.0);
        Ok(parts)
    }

    pub(super) async fn list_parts_impl(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        let (dir, _) = self
            .upload(&user, &input.bucket, &input.key, &input.upload_id)
            .await?;
        let marker = input.part_number_marker.unwrap_or(0);
        let max = input
            .max_parts
            .unwrap_or(MAX_PARTS_LISTED)
            .clamp(0, MAX_PARTS_LISTED);
        let all: Vec<_> = self
            .parts(dir)
            .await?
            .into_iter()
            .filter(|p| p.0 > marker)
            .collect();
        let truncated = max > 0 && all.len() > usize::try_from(max).unwrap_or(0);
        let shown: Vec<Part> = all
            .iter()
            .take(usize::try_from(max).unwrap_or(0))
            .map(|(n, attr, meta)| Part {
                e_tag: Some(ETag::Strong(meta.etag_for(attr))),
                last_modified: Some(timestamp(attr.mtime_ns)),
                part_number: Some(*n),
                size: i64::try_from(attr.size).ok(),
                ..Default::default()
            })
            .collect();
        let next = shown.last().and_then(|p| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max),
            is_truncated: Some(truncated),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next.filter(|_| truncated),
            parts: Some(shown),
            ..Default::default()
        }))
    }

    pub(super) async fn complete_multipart(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        let (dir, upload) = match self
            .upload(&user, &input.bucket, &input.key, &input.upload_id)
            .await
        {
            Ok(found) => found,
            Err(e) if *e.code() == s3s::S3ErrorCode::NoSuchUpload => {
                return self.completed_before(&user, &input).await.ok_or(e);
            }
            Err(e) => return Err(e),
        };
        let asked = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if asked.is_empty() {
            return Err(s3_error!(MalformedXML, "no parts named"));
        }
        let have = self.parts(dir).await?;
        let mut sources = Vec::with_capacity(asked.len());
        let mut md5s = Vec::with_capacity(asked.len());
        let mut previous = 0;
        for (i, part) in asked.iter().enumerate() {
            let number = part.part_number.unwrap_or(0);
            if number <= previous {
                return Err(s3_error!(InvalidPartOrder));
            }
            previous = number;
            let Some((_, attr, meta)) = have.iter().find(|p| p.0 == number) else {
                return Err(s3_error!(InvalidPart, "part {number} was not uploaded"));
            };
            let etag = meta.etag_for(attr);
            if let Some(named) = &part.e_tag {
                if !named.weak_cmp(&ETag::Strong(etag.clone())) {
                    return Err(s3_error!(
                        InvalidPart,
                        "part {number}'s ETag does not match"
                    ));
                }
            }
            if i + 1 < asked.len() && attr.size < MIN_PART_BYTES {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {number} is {} bytes; each part but the last must be at least 5 MiB",
                    attr.size
                ));
            }
            md5s.push(md5_of_etag(&etag).unwrap_or_default());
            sources.push((attr.clone(), 0, attr.size));
        }
        let path = parse_key(&input.key)?;
        let Some((name, dirs)) = path.parts.split_last() else {
            return Err(s3_error!(InvalidArgument, "empty key"));
        };
        let bucket = self.volume.bucket(&user, &input.bucket).await?;
        let parent = self.volume.parent_for_write(&user, &bucket, dirs).await?;
        let written: Written = self.share_into_tmp(&user, parent.ino, &sources).await?;
        let etag = multipart_etag(&md5s);
        let mut meta = upload.meta.clone();
        meta.etag = etag.clone();
        meta.upload = Some(input.upload_id.clone());
        meta.parts = sources.iter().map(|(_, _, size)| *size).collect();
        if let Err(e) = self.seal(&written, meta).await {
            self.discard(&written).await;
            return Err(e);
        }
        self.volume
            .publish(&user, &written, &parent, name, false)
            .await?;
        self.remove_upload(dir, &input.upload_id).await;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(ETag::Strong(etag)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        }))
    }

    /// The answer to a completion of an upload that was completed before:
    /// the object it made, if it is still there (else `None`).
    async fn completed_before(
        &self,
        user: &User,
        input: &CompleteMultipartUploadInput,
    ) -> Option<S3Response<CompleteMultipartUploadOutput>> {
        let attr = self
            .volume
            .object(user, &input.bucket, &input.key, 0)
            .await
            .ok()?;
        let meta = object_meta::load(self.volume.dfs(), attr.ino).await.ok()?;
        (meta.upload.as_deref() == Some(input.upload_id.as_str())).then(|| {
            S3Response::new(CompleteMultipartUploadOutput {
                bucket: Some(input.bucket.clone()),
                key: Some(input.key.clone()),
                e_tag: Some(ETag::Strong(meta.etag_for(&attr))),
                location: Some(format!("/{}/{}", input.bucket, input.key)),
                ..Default::default()
            })
        })
    }

    /// Deletes an upload's parts and directory (their chunks stay while
    /// the completed object shares them).
    async fn remove_upload(&self, dir: u64, id: &str) {
        let result = async {
            let uploads = self.volume.private_dir(MULTIPART_DIR).await?;
            self.volume
                .remove_upload_dir(uploads.ino, dir, id.as_bytes())
                .await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(upload = id, error = %e.message, "cannot remove a finished upload");
        }
    }

    pub(super) async fn abort_multipart(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        let (dir, _) = self
            .upload(&user, &input.bucket, &input.key, &input.upload_id)
            .await?;
        self.remove_upload(dir, &input.upload_id).await;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    pub(super) async fn list_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        self.volume.bucket(&user, &input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads_dir = self.volume.private_dir(MULTIPART_DIR).await.s3()?;
        let mut uploads = Vec::new();
        for e in self.volume.entries(uploads_dir.ino).await.s3()? {
            let Ok(raw) = self.volume.dfs().getxattr(e.ino, UPLOAD_XATTR).await else {
                continue;
            };
            let Ok(upload) = serde_json::from_slice::<Upload>(&raw) else {
                continue;
            };
            if upload.bucket != input.bucket
                || !upload.key.starts_with(&prefix)
                || (upload.uid != user.uid && !user.is_root())
            {
                continue;
            }
            uploads.push(MultipartUpload {
                initiated: Some(timestamp(upload.initiated_ns)),
                key: Some(upload.key),
                upload_id: Some(String::from_utf8_lossy(&e.name).to_string()),
                ..Default::default()
            });
        }
        uploads.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etags_are_the_md5_of_the_parts_md5s() {
        // Two parts whose MD5s are all zeros and all ones.
        let etag = multipart_etag(&[[0; 16], [0xff; 16]]);
        assert!(etag.ends_with("-2"));
        assert_eq!(etag.len(), 32 + 2);
        assert_eq!(
            md5_of_etag("00000000000000000000000000000000"),
            Some([0; 16])
        );
        assert_eq!(md5_of_etag("abc-2"), None);
        assert!(check_part_number(0).is_err());
        assert!(check_part_number(10_001).is_err());
        assert_eq!(part_name(7), "00007");
    }

    #[test]
    fn copy_ranges_are_inclusive_and_within_the_source() {
        assert_eq!(copy_range(None, 100).ok(), Some((0, 100)));
        assert_eq!(copy_range(Some("bytes=0-99"), 100).ok(), Some((0, 100)));
        assert_eq!(copy_range(Some("bytes=10-10"), 100).ok(), Some((10, 1)));
        for bad in ["bytes=5-4", "bytes=-5", "bytes=5-", "items=0-1", "0-1"] {
            let code = copy_range(Some(bad), 100).err().map(|e| e.code().clone());
            assert_eq!(code, Some(s3s::S3ErrorCode::InvalidArgument), "{bad}");
        }
        let code = copy_range(Some("bytes=0-100"), 100)
            .err()
            .map(|e| e.code().clone());
        assert_eq!(code, Some(s3s::S3ErrorCode::InvalidRange));
    }
}
