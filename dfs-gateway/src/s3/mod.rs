//! The S3 operations over the dfs namespace (`crate::volume`): buckets,
//! objects, listings (`list`) and multipart uploads (`multipart`).
//! s3s has checked the signature by the time a handler runs; the handler
//! finds the key's user and checks every step against their permissions.

mod list;
mod multipart;
mod objects;

use std::sync::Arc;

use dfs_proto::{FileKind, InodeRecord};
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

use crate::auth::{Keys, User};
use crate::limits::Limits;
use crate::perm::{self, EXEC, READ, WRITE};
use crate::volume::{s3_error, OrS3, Volume, ROOT_INO};

/// Largest single PUT (S3's own limit); bigger objects go in parts.
pub const MAX_PUT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

#[derive(Clone)]
pub struct Gateway {
    pub volume: Volume,
    pub keys: Keys,
    pub limits: Arc<Limits>,
}

pub fn timestamp(ns: i64) -> Timestamp {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // S3 dates have whole seconds (HTTP dates cannot say more), and
    // conditional requests compare against what was sent.
    let t = t.replace_nanosecond(0).unwrap_or(t);
    Timestamp::from(t)
}

impl Gateway {
    /// The user the request's key acts as.
    pub async fn user<T>(&self, req: &S3Request<T>) -> S3Result<User> {
        Ok(self
            .keys
            .signed(req.credentials.as_ref())
            .await?
            .user
            .clone())
    }
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let user = self.user(&req).await?;
        let root = self.volume.dfs().getattr(ROOT_INO).await.s3()?;
        perm::check(self.volume.dfs(), &user, &root, READ | EXEC)
            .await
            .s3()?;
        let entries = self.volume.entries(ROOT_INO).await.s3()?;
        let mut buckets = Vec::new();
        for e in entries {
            let Some(attr) = e.attr else { continue };
            let name = String::from_utf8_lossy(&e.name).to_string();
            if attr.kind() != FileKind::Directory || !is_bucket_name(&name) {
                continue;
            }
            // Buckets the user can list, as `ls` would show them.
            if perm::check(self.volume.dfs(), &user, &attr, READ | EXEC)
                .await
                .is_err()
            {
                continue;
            }
            buckets.push(Bucket {
                name: Some(name),
                creation_date: Some(timestamp(attr.ctime_ns)),
                ..Default::default()
            });
        }
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(Owner {
                display_name: Some(format!("uid {}", user.uid)),
                id: Some(user.uid.to_string()),
            }),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let user = self.user(&req).await?;
        let name = req.input.bucket;
        let root = self.volume.dfs().getattr(ROOT_INO).await.s3()?;
        match self.volume.dfs().lookup(ROOT_INO, name.as_bytes()).await {
            Ok(attr) if attr.uid == user.uid && attr.kind() == FileKind::Directory => {
                return Err(s3_error!(BucketAlreadyOwnedByYou));
            }
            Ok(_) => return Err(s3_error!(BucketAlreadyExists)),
            Err(e) if e.errno == libc::ENOENT => {}
            Err(e) => return Err(s3_error(e)),
        }
        perm::check(self.volume.dfs(), &user, &root, WRITE | EXEC)
            .await
            .s3()?;
        let request = dfs_proto::CreateRequest {
            parent: ROOT_INO,
            name: name.as_bytes().to_vec(),
            kind: FileKind::Directory as i32,
            mode: 0o755,
            uid: user.uid,
            gid: user.gid,
            umask: 0o022,
            ..Default::default()
        };
        match self.volume.dfs().create(request).await {
            Ok(_) => {}
            Err(e) if e.errno == libc::EEXIST => return Err(s3_error!(BucketAlreadyExists)),
            Err(e) => return Err(s3_error(e)),
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{name}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let user = self.user(&req).await?;
        let bucket = req.input.bucket;
        self.volume.bucket(&user, &bucket).await?;
        let root = self.volume.dfs().getattr(ROOT_INO).await.s3()?;
        perm::check(self.volume.dfs(), &user, &root, WRITE | EXEC)
            .await
            .s3()?;
        match self.volume.dfs().rmdir(ROOT_INO, bucket.as_bytes()).await {
            Ok(()) => Ok(S3Response::new(DeleteBucketOutput::default())),
            Err(e) if e.errno == libc::ENOTEMPTY => Err(s3_error!(BucketNotEmpty)),
            Err(e) if e.errno == libc::ENOENT => Err(s3_error!(NoSuchBucket)),
            Err(e) => Err(s3_error(e)),
        }
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let user = self.user(&req).await?;
        let dir = self.volume.bucket(&user, &req.input.bucket).await?;
        perm::check(self.volume.dfs(), &user, &dir, EXEC)
            .await
            .s3()?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let user = self.user(&req).await?;
        self.volume.bucket(&user, &req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.get_object_impl(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.head_object_impl(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.put_object_impl(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let user = self.user(&req).await?;
        self.delete_one(&user, &req.input.bucket, &req.input.key)
            .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let user = self.user(&req).await?;
        let bucket = req.input.bucket;
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in req.input.delete.objects {
            match self.delete_one(&user, &bucket, &object.key).await {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(object.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(object.key),
                    message: e.message().map(str::to_string),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.copy_object_impl(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.list_objects_v1(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.list_objects_v2_impl(req).await
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        self.list_versions_impl(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.create_multipart(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.upload_part_impl(req).await
    }

    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        self.get_object_attributes_impl(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.upload_part_copy_impl(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.list_parts_impl(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.complete_multipart(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.abort_multipart(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.list_uploads(req).await
    }
}

impl Gateway {
    /// Deletes one object: missing is success (S3's rule); the parent must
    /// be writable; prefixes left empty go with it.
    async fn delete_one(&self, user: &User, bucket: &str, key: &str) -> S3Result<()> {
        let path = crate::volume::parse_key(key)?;
        let dir = self.volume.bucket(user, bucket).await?;
        let Some((name, dirs)) = path.parts.split_last() else {
            return Ok(());
        };
        let Some(chain) = self.volume.chain(user, &dir, dirs).await? else {
            return Ok(());
        };
        let Some(parent) = chain.last() else {
            return Ok(());
        };
        let attr: InodeRecord = match self.volume.dfs().lookup(parent.ino, name.as_bytes()).await {
            Ok(attr) => attr,
            Err(e) if e.errno == libc::ENOENT => return Ok(()),
            Err(e) => return Err(s3_error(e)),
        };
        if (attr.kind() == FileKind::Directory) != path.dir_marker {
            // `a/` names the directory, `a` the file; the other is absent.
            return Ok(());
        }
        perm::check(self.volume.dfs(), user, parent, WRITE | EXEC)
            .await
            .s3()?;
        if path.dir_marker {
            let mut chain = chain.clone();
            chain.push(attr);
            return match self
                .volume
                .entries(chain[chain.len() - 1].ino)
                .await
                .s3()?
                .is_empty()
            {
                true => {
                    let result = self.volume.dfs().rmdir(parent.ino, name.as_bytes()).await;
                    match result {
                        Ok(()) => Ok(()),
                        Err(e) if e.errno == libc::ENOTEMPTY || e.errno == libc::ENOENT => Ok(()),
                        Err(e) => Err(s3_error(e)),
                    }
                }
                // A prefix with objects under it stays: only its marker goes.
                false => Ok(()),
            };
        }
        perm::check_remove(user, parent, &attr).map_err(s3_error)?;
        match self.volume.remove_and_prune(user, &chain, name).await {
            Ok(()) => Ok(()),
            Err(e) if e.errno == libc::ENOENT => Ok(()),
            Err(e) => Err(s3_error(e)),
        }
    }
}

/// S3's rules for bucket names (the part a directory name must meet to be
/// listed as a bucket): 3-63 characters of a-z, 0-9, `.` and `-`,
/// starting and ending with a letter or digit.
pub fn is_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        assert!(is_bucket_name("photos-2026"));
        assert!(!is_bucket_name(".s3"));
        assert!(!is_bucket_name("Up"));
        assert!(!is_bucket_name("ab"));
    }

    #[test]
    fn timestamps_have_whole_seconds() {
        let t: time::OffsetDateTime = timestamp(1_700_000_000_123_456_789).into();
        assert_eq!(t.nanosecond(), 0);
        assert_eq!(t.unix_timestamp(), 1_700_000_000);
    }
}
