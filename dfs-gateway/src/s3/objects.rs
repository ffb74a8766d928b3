//! GET, HEAD, PUT and copy of one object.

use dfs_proto::{FileKind, InodeRecord};
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::{timestamp, Gateway, MAX_PUT_BYTES};
use crate::object_meta::{self, ObjectMeta, MAX_USER_METADATA_BYTES};
use crate::perm::READ;
use crate::volume::{parse_key, s3_error, OrS3, Written};

/// What a conditional GET or HEAD decides.
fn check_conditions(
    etag: &str,
    last_modified: &Timestamp,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let ours = ETag::Strong(etag.to_string());
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.weak_cmp(&ours),
    };
    // RFC 9110 13.2.2: If-Match, then If-Unmodified-Since when there is no
    // If-Match, then If-None-Match, then If-Modified-Since when there is no
    // If-None-Match.
    match if_match {
        Some(c) if !matches(c) => return Err(s3_error!(PreconditionFailed)),
        Some(_) => {}
        None => {
            if let Some(since) = if_unmodified_since {
                if last_modified > since {
                    return Err(s3_error!(PreconditionFailed));
                }
            }
        }
    }
    match if_none_match {
        Some(c) if matches(c) => return Err(s3_error!(NotModified)),
        Some(_) => {}
        None => {
            if let Some(since) = if_modified_since {
                if last_modified <= since {
                    return Err(s3_error!(NotModified));
                }
            }
        }
    }
    Ok(())
}

/// A failed condition answers with the object's ETag and date, as S3 does
/// (a client keeping a cache needs them with a 304).
fn with_validators(mut e: s3s::S3Error, etag: &str, last_modified: &Timestamp) -> s3s::S3Error {
    let mut headers = hyper::HeaderMap::new();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("\"{etag}\"")) {
        headers.insert(hyper::header::ETAG, v);
    }
    let t: time::OffsetDateTime = last_modified.clone().into();
    if let Ok(date) = t.format(&time::format_description::well_known::Rfc2822) {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&date.replace("+0000", "GMT")) {
            headers.insert(hyper::header::LAST_MODIFIED, v);
        }
    }
    e.set_headers(headers);
    e
}

/// An `Expires` kept as seconds since the epoch, as S3 returns it.
fn expires_of(meta: &ObjectMeta) -> Option<Timestamp> {
    let t = time::OffsetDateTime::from_unix_timestamp(meta.expires?).ok()?;
    Some(Timestamp::from(t))
}

fn content_range(start: u64, end: u64, size: u64) -> String {
    format!("bytes {start}-{}/{size}", end.saturating_sub(1))
}

/// What a GET or HEAD answers with: `[start, end)` of the object, its
/// Content-Range when not all of it, and the parts count for a
/// `partNumber` request of a multipart object.
struct Span {
    start: u64,
    end: u64,
    content_range: Option<String>,
    parts_count: Option<i32>,
}

/// The span a `Range` header or a `partNumber` asks for (not both).
fn span_of(
    range: Option<&Range>,
    part_number: Option<i32>,
    parts: &[u64],
    size: u64,
) -> S3Result<Span> {
    let whole = Span {
        start: 0,
        end: size,
        content_range: None,
        parts_count: None,
    };
    match (range, part_number) {
        (None, None) => Ok(whole),
        (Some(_), Some(_)) => Err(s3_error!(
            InvalidRequest,
            "a Range header and partNumber cannot be given together"
        )),
        (Some(r), None) => {
            let span = r.check(size).map_err(|_| s3_error!(InvalidRange))?;
            Ok(Span {
                start: span.start,
                end: span.end,
                content_range: Some(content_range(span.start, span.end, size)),
                parts_count: None,
            })
        }
        (None, Some(n)) => {
            if !(1..=10_000).contains(&n) {
                return Err(s3_error!(InvalidArgument, "partNumber must be 1 to 10000"));
            }
            if parts.is_empty() {
                // An object uploaded in one piece is its own part 1.
                return if n == 1 {
                    Ok(whole)
                } else {
                    Err(invalid_part_number(n))
                };
            }
            let index = usize::try_from(n - 1).unwrap_or(usize::MAX);
            let Some(len) = parts.get(index) else {
                return Err(invalid_part_number(n));
            };
            let start: u64 = parts[..index].iter().sum();
            Ok(Span {
                start,
                end: start + len,
                content_range: Some(content_range(start, start + len, size)),
                parts_count: i32::try_from(parts.len()).ok(),
            })
        }
    }
}

/// A copy's `x-amz-copy-source-if-*` headers.
pub(super) struct CopyConditions<'a> {
    pub if_match: Option<&'a ETagCondition>,
    pub if_none_match: Option<&'a ETagCondition>,
    pub if_modified_since: Option<&'a Timestamp>,
    pub if_unmodified_since: Option<&'a Timestamp>,
}

/// The parts after `marker`, at most `max` (1,000 unless asked).
fn parts_page(parts: &[u64], marker: Option<i32>, max: Option<i32>) -> GetObjectAttributesParts {
    let after = usize::try_from(marker.unwrap_or(0).max(0)).unwrap_or(0);
    let max = usize::try_from(max.unwrap_or(1000).clamp(0, 1000)).unwrap_or(1000);
    let page: Vec<ObjectPart> = parts
        .iter()
        .enumerate()
        .skip(after)
        .take(max)
        .map(|(i, size)| ObjectPart {
            part_number: i32::try_from(i + 1).ok(),
            size: i64::try_from(*size).ok(),
            ..Default::default()
        })
        .collect();
    let last = page.last().and_then(|p| p.part_number);
    let truncated = after + page.len() < parts.len();
    GetObjectAttributesParts {
        is_truncated: Some(truncated),
        max_parts: i32::try_from(max).ok(),
        next_part_number_marker: if truncated { last } else { None },
        part_number_marker: marker,
        parts: Some(page),
        total_parts_count: i32::try_from(parts.len()).ok(),
    }
}

fn invalid_part_number(n: i32) -> s3s::S3Error {
    let mut e = s3s::S3Error::with_message(
        s3s::S3ErrorCode::Custom("InvalidPartNumber".into()),
        format!("the object has no part {n}"),
    );
    e.set_status_code(hyper::StatusCode::RANGE_NOT_SATISFIABLE);
    e
}

/// `x-amz-meta-*` of a request, checked against S3's size limit.
fn user_metadata(
    metadata: Option<Metadata>,
) -> S3Result<std::collections::BTreeMap<String, String>> {
    let map: std::collections::BTreeMap<String, String> = metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_USER_METADATA_BYTES {
        return Err(s3_error!(
            MetadataTooLarge,
            "user metadata is at most {MAX_USER_METADATA_BYTES} bytes"
        ));
    }
    Ok(map)
}

fn to_metadata(meta: &ObjectMeta) -> Option<Metadata> {
    (!meta.user.is_empty()).then(|| meta.user.clone().into_iter().collect())
}

/// Base64 of an MD5, as Content-MD5 carries it.
fn base64_md5(md5: &[u8; 16]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(md5)
}

impl Gateway {
    pub(super) async fn get_object_impl(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let user = self.user(&req).await?;
        let key = self.keys.signed(req.credentials.as_ref()).await?;
        let input = req.input;
        let attr = self
            .volume
            .object(&user, &input.bucket, &input.key, READ)
            .await?;
        let meta = object_meta::load(self.volume.dfs(), attr.ino).await.s3()?;
        let etag = meta.etag_for(&attr);
        let last_modified = timestamp(attr.mtime_ns);
        check_conditions(
            &etag,
            &last_modified,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )
        .map_err(|e| with_validators(e, &etag, &last_modified))?;
        let Span {
            start,
            end,
            content_range,
            parts_count,
        } = span_of(
            input.range.as_ref(),
            input.part_number,
            meta.parts_for(&attr),
            attr.size,
        )?;
        let handle = self.volume.open_read(&attr).await.s3()?;
        let stream = self.volume.read_stream(handle, start, end);
        let stream = self.limits.meter(&key, stream);
        let output = GetObjectOutput {
            body: Some(StreamingBlob::wrap(stream)),
            content_length: i64::try_from(end - start).ok(),
            content_range,
            parts_count,
            accept_ranges: Some("bytes".to_string()),
            last_modified: Some(last_modified),
            e_tag: Some(ETag::Strong(etag)),
            metadata: to_metadata(&meta),
            content_type: input.response_content_type.or(meta.content_type.clone()),
            content_encoding: input
                .response_content_encoding
                .or(meta.content_encoding.clone()),
            content_disposition: input
                .response_content_disposition
                .or(meta.content_disposition.clone()),
            content_language: input
                .response_content_language
                .or(meta.content_language.clone()),
            cache_control: input.response_cache_control.or(meta.cache_control.clone()),
            expires: expires_of(&meta),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    pub(super) async fn head_object_impl(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        // READ, not only search: the answer carries the content's MD5.
        let attr = self
            .volume
            .object(&user, &input.bucket, &input.key, READ)
            .await?;
        let meta = object_meta::load(self.volume.dfs(), attr.ino).await.s3()?;
        let etag = meta.etag_for(&attr);
        let last_modified = timestamp(attr.mtime_ns);
        check_conditions(
            &etag,
            &last_modified,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )
        .map_err(|e| with_validators(e, &etag, &last_modified))?;
        let Span {
            start,
            end,
            content_range,
            parts_count,
        } = span_of(
            input.range.as_ref(),
            input.part_number,
            meta.parts_for(&attr),
            attr.size,
        )?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: i64::try_from(end - start).ok(),
            content_range,
            parts_count,
            accept_ranges: Some("bytes".to_string()),
            last_modified: Some(last_modified),
            e_tag: Some(ETag::Strong(etag)),
            metadata: to_metadata(&meta),
            content_type: meta.content_type.clone(),
            content_encoding: meta.content_encoding.clone(),
            content_disposition: meta.content_disposition.clone(),
            content_language: meta.content_language.clone(),
            cache_control: meta.cache_control.clone(),
            expires: expires_of(&meta),
            ..Default::default()
        }))
    }

    /// GetObjectAttributes: the ETag (unquoted, as S3 gives it here),
    /// size, storage class and, for a multipart object, its parts by
    /// number and size, a page at a time.
    pub(super) async fn get_object_attributes_impl(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        let attr = self
            .volume
            .object(&user, &input.bucket, &input.key, READ)
            .await?;
        let meta = object_meta::load(self.volume.dfs(), attr.ino).await.s3()?;
        // One header, `ETag,ObjectSize`, may arrive as one item.
        let wants = |what: &str| {
            input
                .object_attributes
                .iter()
                .flat_map(|a| a.as_str().split(','))
                .any(|a| a.trim() == what)
        };
        let parts = meta.parts_for(&attr);
        let object_parts = (wants(ObjectAttributes::OBJECT_PARTS) && !parts.is_empty())
            .then(|| parts_page(parts, input.part_number_marker, input.max_parts));
        Ok(S3Response::new(GetObjectAttributesOutput {
            e_tag: wants(ObjectAttributes::ETAG).then(|| ETag::Strong(meta.etag_for(&attr))),
            object_size: wants(ObjectAttributes::OBJECT_SIZE)
                .then(|| i64::try_from(attr.size).ok())
                .flatten(),
            storage_class: wants(ObjectAttributes::STORAGE_CLASS)
                .then(|| StorageClass::from_static(StorageClass::STANDARD)),
            object_parts,
            last_modified: Some(timestamp(attr.mtime_ns)),
            ..Default::default()
        }))
    }

    pub(super) async fn put_object_impl(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let user = self.user(&req).await?;
        let key = self.keys.signed(req.credentials.as_ref()).await?;
        let input = req.input;
        let path = parse_key(&input.key)?;
        let bucket = self.volume.bucket(&user, &input.bucket).await?;
        if path.dir_marker {
            if input.content_length.unwrap_or(0) > 0 {
                return Err(s3_error!(
                    InvalidArgument,
                    "a key ending in `/` is a directory here and holds no bytes"
                ));
            }
            self.volume
                .parent_for_write(&user, &bucket, &path.parts)
                .await?;
            return Ok(S3Response::new(PutObjectOutput {
                e_tag: Some(ETag::Strong("d41d8cd98f00b204e9800998ecf8427e".into())),
                ..Default::default()
            }));
        }
        let Some((name, dirs)) = path.parts.split_last() else {
            return Err(s3_error!(InvalidArgument, "empty key"));
        };
        let parent = self.volume.parent_for_write(&user, &bucket, dirs).await?;
        let existing = match self.volume.dfs().lookup(parent.ino, name.as_bytes()).await {
            Ok(attr) => Some(attr),
            Err(e) if e.errno == libc::ENOENT => None,
            Err(e) => return Err(s3_error(e)),
        };
        if existing
            .as_ref()
            .is_some_and(|a| a.kind() == FileKind::Directory)
        {
            return Err(s3_error!(
                InvalidArgument,
                "`{}` is a prefix of other keys, so it cannot also be an object",
                input.key
            ));
        }
        let create_only = input
            .if_none_match
            .as_ref()
            .is_some_and(ETagCondition::is_any);
        if create_only && existing.is_some() {
            return Err(s3_error!(PreconditionFailed, "the object exists"));
        }
        if let Some(condition) = &input.if_match {
            let Some(current) = &existing else {
                return Err(s3_error!(PreconditionFailed, "the object does not exist"));
            };
            let meta = object_meta::load(self.volume.dfs(), current.ino)
                .await
                .s3()?;
            let ours = ETag::Strong(meta.etag_for(current));
            if let ETagCondition::ETag(e) = condition {
                if !e.strong_cmp(&ours) {
                    return Err(s3_error!(PreconditionFailed, "the ETag does not match"));
                }
            }
        }
        if input.content_length.unwrap_or(0) > MAX_PUT_BYTES as i64 {
            return Err(s3_error!(
                EntityTooLarge,
                "at most {MAX_PUT_BYTES} bytes in one PUT"
            ));
        }
        let user_meta = user_metadata(input.metadata)?;
        let body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let body = self.limits.meter(&key, body);
        let written = self
            .volume
            .write_tmp(&user, parent.ino, body, MAX_PUT_BYTES)
            .await?;
        let result = async {
            if let Some(expected) = &input.content_md5 {
                if *expected != base64_md5(&written.md5) {
                    return Err(s3_error!(BadDigest));
                }
            }
            if let Some(length) = input.content_length {
                if u64::try_from(length).ok() != Some(written.size) {
                    return Err(s3_error!(IncompleteBody));
                }
            }
            let etag = hex::encode(written.md5);
            let meta = ObjectMeta {
                etag: etag.clone(),
                content_type: input.content_type.clone(),
                content_encoding: input.content_encoding.clone(),
                content_disposition: input.content_disposition.clone(),
                content_language: input.content_language.clone(),
                cache_control: input.cache_control.clone(),
                expires: input
                    .expires
                    .clone()
                    .map(|t| time::OffsetDateTime::from(t).unix_timestamp()),
                user: user_meta.clone(),
                ..Default::default()
            };
            self.seal(&written, meta).await?;
            Ok(etag)
        }
        .await;
        let etag = match result {
            Ok(etag) => etag,
            Err(e) => {
                self.discard(&written).await;
                return Err(e);
            }
        };
        self.volume
            .publish(&user, &written, &parent, name, create_only)
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            size: i64::try_from(written.size).ok(),
            ..Default::default()
        }))
    }

    /// Stores `meta` on a written file, with the data version it is for.
    pub(super) async fn seal(&self, written: &Written, mut meta: ObjectMeta) -> S3Result<()> {
        let attr: InodeRecord = self.volume.dfs().getattr(written.ino).await.s3()?;
        meta.version = attr.data_version;
        object_meta::store(self.volume.dfs(), written.ino, &meta)
            .await
            .s3()
    }

    pub(super) async fn discard(&self, written: &Written) {
        if let Err(e) = self
            .volume
            .dfs()
            .unlink(written.tmp_dir, written.name.as_bytes())
            .await
        {
            tracing::warn!(error = %e.message, "cannot remove an unfinished upload");
        }
    }

    /// The object a copy reads, which `user` must be able to read, once
    /// its `x-amz-copy-source-if-*` conditions hold: its attributes,
    /// metadata and ETag.
    pub(super) async fn copy_source(
        &self,
        user: &crate::auth::User,
        source: &CopySource,
        conditions: CopyConditions<'_>,
    ) -> S3Result<(InodeRecord, ObjectMeta, String)> {
        let CopySource::Bucket { bucket, key, .. } = source else {
            return Err(s3_error!(NotImplemented, "copy sources are bucket/key"));
        };
        let src = self.volume.object(user, bucket, key, READ).await?;
        let meta = object_meta::load(self.volume.dfs(), src.ino).await.s3()?;
        let etag = meta.etag_for(&src);
        check_conditions(
            &etag,
            &timestamp(src.mtime_ns),
            conditions.if_match,
            conditions.if_none_match,
            conditions.if_modified_since,
            conditions.if_unmodified_since,
        )
        .map_err(|e| {
            // A copy's failed condition is always 412, never 304.
            if *e.code() == s3s::S3ErrorCode::NotModified {
                s3_error!(PreconditionFailed)
            } else {
                e
            }
        })?;
        Ok((src, meta, etag))
    }

    pub(super) async fn copy_object_impl(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let user = self.user(&req).await?;
        let input = req.input;
        let (src, src_meta, src_etag) = self
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
        let path = parse_key(&input.key)?;
        let Some((name, dirs)) = path.parts.split_last().filter(|_| !path.dir_marker) else {
            return Err(s3_error!(
                InvalidArgument,
                "cannot copy onto a key ending in `/`"
            ));
        };
        let bucket = self.volume.bucket(&user, &input.bucket).await?;
        let parent = self.volume.parent_for_write(&user, &bucket, dirs).await?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let mut meta = if replace {
            ObjectMeta {
                content_type: input.content_type.clone(),
                content_encoding: input.content_encoding.clone(),
                content_disposition: input.content_disposition.clone(),
                content_language: input.content_language.clone(),
                cache_control: input.cache_control.clone(),
                user: user_metadata(input.metadata.clone())?,
                ..Default::default()
            }
        } else {
            src_meta.clone()
        };
        // The same bytes, so the same ETag.
        meta.etag = src_etag.clone();
        let written = self
            .share_into_tmp(&user, parent.ino, &[(src.clone(), 0, src.size)])
            .await?;
        if let Err(e) = self.seal(&written, meta).await {
            self.discard(&written).await;
            return Err(e);
        }
        self.volume
            .publish(&user, &written, &parent, name, false)
            .await?;
        let attr = self.volume.dfs().getattr(written.ino).await.s3()?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(src_etag)),
                last_modified: Some(timestamp(attr.mtime_ns)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    /// A new file in `/.s3/tmp` made of `sources` (each a file and the
    /// bytes `[start, start + len)` of it) one after another, their chunks
    /// shared (`copy_file_range`: no bytes move but those of chunks a range
    /// cuts through), committed; made as if in `inherit_from`, where it
    /// goes next.
    pub(super) async fn share_into_tmp(
        &self,
        user: &crate::auth::User,
        inherit_from: u64,
        sources: &[(InodeRecord, u64, u64)],
    ) -> S3Result<Written> {
        let tmp = self.volume.private_dir(crate::volume::TMP_DIR).await.s3()?;
        let name = crate::volume::Volume::tmp_name();
        let (attr, out) = self
            .volume
            .create_file(user, tmp.ino, &name, inherit_from)
            .await
            .s3()?;
        let copied = async {
            let mut at = 0u64;
            for (source, start, size) in sources {
                let input = self.volume.open_read(source).await?;
                let mut done = 0u64;
                while done < *size {
                    let n = self
                        .volume
                        .handles
                        .copy_file_range(input.fh, start + done, out.fh, at + done, size - done)
                        .await?;
                    if n == 0 {
                        return Err(dfs_core::error::DfsError::new(
                            libc::EIO,
                            "a source became shorter while it was copied",
                        ));
                    }
                    done += n;
                }
                input.close().await?;
                at += size;
            }
            out.close().await?;
            Ok(at)
        }
        .await;
        match copied {
            Ok(size) => Ok(Written {
                tmp_dir: tmp.ino,
                name,
                ino: attr.ino,
                size,
                md5: [0; 16],
            }),
            Err(e) => {
                let _ = self.volume.dfs().unlink(tmp.ino, name.as_bytes()).await;
                Err(s3_error(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        timestamp(secs * 1_000_000_000)
    }

    #[test]
    fn attribute_parts_come_a_page_at_a_time() {
        let parts = [5u64, 3, 2];
        let page = parts_page(&parts, None, Some(2));
        let numbers: Vec<_> = page.parts.iter().flatten().map(|p| p.part_number).collect();
        assert_eq!(numbers, [Some(1), Some(2)]);
        assert_eq!(page.is_truncated, Some(true));
        assert_eq!(page.next_part_number_marker, Some(2));
        assert_eq!(page.total_parts_count, Some(3));
        let rest = parts_page(&parts, Some(2), Some(2));
        let sizes: Vec<_> = rest.parts.iter().flatten().map(|p| p.size).collect();
        assert_eq!(sizes, [Some(2)]);
        assert_eq!(
            (rest.is_truncated, rest.next_part_number_marker),
            (Some(false), None)
        );
    }

    #[test]
    fn part_numbers_select_the_parts_bytes() {
        let parts = [5u64, 3, 2];
        let span = span_of(None, Some(2), &parts, 10).expect("part 2");
        assert_eq!((span.start, span.end), (5, 8));
        assert_eq!(span.content_range.as_deref(), Some("bytes 5-7/10"));
        assert_eq!(span.parts_count, Some(3));
        let code = |r: S3Result<Span>| r.err().map(|e| e.code().as_str().to_string());
        assert_eq!(
            code(span_of(None, Some(4), &parts, 10)).as_deref(),
            Some("InvalidPartNumber")
        );
        assert_eq!(
            code(span_of(None, Some(0), &parts, 10)).as_deref(),
            Some("InvalidArgument")
        );
        // One piece: part 1 is all of it.
        let span = span_of(None, Some(1), &[], 10).expect("part 1");
        assert_eq!((span.start, span.end, span.parts_count), (0, 10, None));
        assert!(span_of(None, Some(2), &[], 10).is_err());
        let range = Range::Int {
            first: 2,
            last: Some(4),
        };
        assert!(span_of(Some(&range), Some(1), &parts, 10).is_err());
        let span = span_of(Some(&range), None, &parts, 10).expect("range");
        assert_eq!((span.start, span.end), (2, 5));
    }

    #[test]
    fn conditions_follow_rfc_9110() {
        let etag = "abc";
        let now = ts(1000);
        let same = ETagCondition::ETag(ETag::Strong("abc".into()));
        let other = ETagCondition::ETag(ETag::Strong("xyz".into()));
        assert!(check_conditions(etag, &now, Some(&same), None, None, None).is_ok());
        assert!(check_conditions(etag, &now, Some(&other), None, None, None).is_err());
        let e = check_conditions(etag, &now, None, Some(&same), None, None).err();
        assert_eq!(
            e.map(|e| e.code().clone()),
            Some(s3s::S3ErrorCode::NotModified)
        );
        assert!(check_conditions(etag, &now, None, Some(&other), None, None).is_ok());
        assert!(check_conditions(etag, &now, None, None, Some(&ts(1000)), None).is_err());
        assert!(check_conditions(etag, &now, None, None, Some(&ts(999)), None).is_ok());
        assert!(check_conditions(etag, &now, None, None, None, Some(&ts(999))).is_err());
        // If-None-Match wins over If-Modified-Since.
        assert!(check_conditions(etag, &now, None, Some(&other), Some(&ts(2000)), None).is_ok());
    }

    #[test]
    fn content_md5_is_base64() {
        let md5 = [0u8; 16];
        assert_eq!(base64_md5(&md5), "AAAAAAAAAAAAAAAAAAAAAA==");
    }
}
