//! The dfs namespace as the gateway sees it: a bucket is a directory at
//! the volume's root, an object key is a path below it (`a/b/c` is the file
//! `c` in directories `a/b`, made as needed), and every step is checked
//! against the requesting user's permissions as the kernel would for a
//! process of that user on a mount.
//!
//! New objects are written to a private directory (`/.s3/tmp`) and renamed
//! into place only once committed, so a reader (through the gateway or a
//! mount) sees the old object or the whole new one, never a partial one.

use std::sync::Arc;

use bytes::Bytes;
use dfs_core::error::DfsError;
use dfs_mount::fs::handles::Handles;
use dfs_mount::fs::Dfs;
use dfs_proto::{CreateRequest, DirEntry, FileKind, InodeRecord, RenameRequest};
use futures::{Stream, StreamExt};
use s3s::crypto::{Checksum, Md5};
use s3s::{s3_error, S3Error, S3Result};

use crate::auth::User;
use crate::perm::{self, EXEC, READ, WRITE};

pub const ROOT_INO: u64 = 1;
/// The gateway's own directory at the volume's root (not a valid bucket
/// name, so never listed as one): uploads in progress.
pub const PRIVATE_DIR: &str = ".s3";
/// Objects being written, before the rename that publishes them.
pub const TMP_DIR: &str = "tmp";
/// Multipart uploads: one directory per upload, one file per part.
pub const MULTIPART_DIR: &str = "multipart";
/// Longest key S3 accepts.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest name of one path component dfs accepts.
const MAX_NAME_BYTES: usize = 255;
/// Bytes read from a file per step of a GET.
const READ_STEP: u32 = 1024 * 1024;
/// Pieces read ahead of a GET's client.
const READ_AHEAD_PIECES: usize = 4;
/// Mode of directories made for keys (`a/` of `a/b`), before the umask the
/// parent's default ACL may replace.
// What `mkdir` and `cp` ask for: with the umask 0755 and 0644, under a
// default ACL what the ACL allows.
const DIR_MODE: u32 = 0o777;
const FILE_MODE: u32 = 0o666;
const UMASK: u32 = 0o022;

/// A key split into its path components. `a/b/` (a "directory object")
/// has `dir_marker` set and components `a`, `b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath {
    pub parts: Vec<String>,
    pub dir_marker: bool,
}

/// Splits and checks a key: no empty, `.` or `..` component (they have no
/// path), none longer than a file name may be, no NUL.
pub fn parse_key(key: &str) -> S3Result<KeyPath> {
    if key.is_empty() {
        return Err(s3_error!(InvalidArgument, "empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(s3_error!(KeyTooLongError));
    }
    let (body, dir_marker) = match key.strip_suffix('/') {
        Some(rest) => (rest, true),
        None => (key, false),
    };
    let mut parts = Vec::new();
    for part in body.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.contains('\0') {
            return Err(s3_error!(
                InvalidArgument,
                "key {key:?}: dfs stores keys as paths, so `//`, `.`, `..` and a leading `/` \
                 cannot be used"
            ));
        }
        if part.len() > MAX_NAME_BYTES {
            return Err(s3_error!(
                KeyTooLongError,
                "a key's part between slashes is at most 255 bytes"
            ));
        }
        parts.push(part.to_string());
    }
    Ok(KeyPath { parts, dir_marker })
}

/// What a file-system error means to an S3 client.
pub fn s3_error(e: DfsError) -> S3Error {
    let message = e.message.clone();
    match e.errno {
        libc::ENOENT => s3_error!(NoSuchKey, "{message}"),
        libc::EACCES | libc::EPERM | libc::EROFS => s3_error!(AccessDenied, "{message}"),
        libc::ENOTDIR | libc::EISDIR | libc::EEXIST => s3_error!(
            InvalidArgument,
            "{message}: a key and a key's prefix cannot name the same path (`a` and `a/b`)"
        ),
        libc::ENAMETOOLONG => s3_error!(KeyTooLongError, "{message}"),
        libc::ENOSPC | libc::EDQUOT => {
            s3_error!(ServiceUnavailable, "the volume is full: {message}")
        }
        libc::EAGAIN | libc::EIO | libc::ETIMEDOUT | libc::ECONNREFUSED | libc::EHOSTUNREACH => {
            tracing::warn!(errno = e.errno, error = %message, "request failed in the cluster");
            s3_error!(ServiceUnavailable, "{message}")
        }
        _ => {
            tracing::warn!(errno = e.errno, error = %message, "request failed");
            s3_error!(InternalError, "{message}")
        }
    }
}

/// `?` on a `DfsError` in an S3 handler.
pub trait OrS3<T> {
    fn s3(self) -> S3Result<T>;
}

impl<T> OrS3<T> for Result<T, DfsError> {
    fn s3(self) -> S3Result<T> {
        self.map_err(s3_error)
    }
}

fn is_not_found(e: &DfsError) -> bool {
    e.errno == libc::ENOENT
}

/// A file handle of the gateway's, released when dropped (a GET whose
/// client went away must not leave the file open).
pub struct OpenHandle {
    handles: Arc<Handles>,
    pub fh: u64,
    pub ino: u64,
    released: bool,
}

impl OpenHandle {
    /// Commits what was written and closes the handle, reporting errors.
    pub async fn close(mut self) -> Result<(), DfsError> {
        self.released = true;
        let flushed = self.handles.fsync(self.fh).await;
        let released = self.handles.release(self.fh, self.ino, None).await;
        flushed.and(released)
    }
}

impl Drop for OpenHandle {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (handles, fh, ino) = (self.handles.clone(), self.fh, self.ino);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = handles.release(fh, ino, None).await {
                    tracing::warn!(ino, error = %e.message, "releasing a dropped handle failed");
                }
            });
        }
    }
}

#[derive(Clone)]
pub struct Volume {
    pub handles: Arc<Handles>,
}

impl Volume {
    pub fn new(handles: Arc<Handles>) -> Self {
        Self { handles }
    }

    pub fn dfs(&self) -> &Arc<Dfs> {
        self.handles.dfs()
    }

    /// Makes `/.s3/tmp` and `/.s3/multipart` if missing (root's, 0700:
    /// nothing in them is anyone's object yet).
    pub async fn prepare(&self) -> Result<(), DfsError> {
        let private = self
            .mkdir_as(&User::root(), ROOT_INO, PRIVATE_DIR, 0o700)
            .await?;
        // Made by someone else before the gateway first ran, it could let
        // them read or swap uploads: refuse it.
        if private.kind() != FileKind::Directory || private.uid != 0 || private.mode & 0o077 != 0 {
            return Err(DfsError::new(
                libc::EPERM,
                format!(
                    "/{PRIVATE_DIR} must be a directory owned by root with mode 0700 \
                     (it is uid {} mode {:o}); remove or fix it",
                    private.uid, private.mode
                ),
            ));
        }
        self.mkdir_as(&User::root(), private.ino, TMP_DIR, 0o700)
            .await?;
        self.mkdir_as(&User::root(), private.ino, MULTIPART_DIR, 0o700)
            .await?;
        Ok(())
    }

    /// `name` in `parent`, made as a directory owned by `user` if missing.
    async fn mkdir_as(
        &self,
        user: &User,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> Result<InodeRecord, DfsError> {
        match self.dfs().lookup(parent, name.as_bytes()).await {
            Ok(attr) => Ok(attr),
            Err(e) if is_not_found(&e) => {
                let request = CreateRequest {
                    parent,
                    name: name.as_bytes().to_vec(),
                    kind: FileKind::Directory as i32,
                    mode,
                    uid: user.uid,
                    gid: user.gid,
                    umask: UMASK,
                    ..Default::default()
                };
                match self.dfs().create(request).await {
                    Err(e) if e.errno == libc::EEXIST => {
                        self.dfs().lookup(parent, name.as_bytes()).await
                    }
                    other => other,
                }
            }
            Err(e) => Err(e),
        }
    }

    /// `/.s3/NAME`, made again if someone removed it through a mount.
    pub async fn private_dir(&self, name: &str) -> Result<InodeRecord, DfsError> {
        let found = async {
            let private = self.dfs().lookup(ROOT_INO, PRIVATE_DIR.as_bytes()).await?;
            self.dfs().lookup(private.ino, name.as_bytes()).await
        };
        match found.await {
            Err(e) if is_not_found(&e) => {
                self.prepare().await?;
                let private = self.dfs().lookup(ROOT_INO, PRIVATE_DIR.as_bytes()).await?;
                self.dfs().lookup(private.ino, name.as_bytes()).await
            }
            other => other,
        }
    }

    /// The bucket's directory, searchable by `user`.
    pub async fn bucket(&self, user: &User, bucket: &str) -> S3Result<InodeRecord> {
        let root = self.dfs().getattr(ROOT_INO).await.s3()?;
        perm::check(self.dfs(), user, &root, EXEC).await.s3()?;
        match self.dfs().lookup(ROOT_INO, bucket.as_bytes()).await {
            Ok(attr) if attr.kind() == FileKind::Directory => Ok(attr),
            Ok(_) => Err(s3_error!(NoSuchBucket)),
            Err(e) if is_not_found(&e) => Err(s3_error!(NoSuchBucket)),
            Err(e) => Err(s3_error(e)),
        }
    }

    /// The inode `parts` names under `dir`, each directory on the way
    /// searchable by `user`. `Ok(None)`: no such path.
    pub async fn walk(
        &self,
        user: &User,
        dir: &InodeRecord,
        parts: &[String],
    ) -> S3Result<Option<InodeRecord>> {
        let mut at = dir.clone();
        for part in parts {
            if at.kind() != FileKind::Directory {
                return Ok(None);
            }
            perm::check(self.dfs(), user, &at, EXEC).await.s3()?;
            at = match self.dfs().lookup(at.ino, part.as_bytes()).await {
                Ok(attr) => attr,
                Err(e) if is_not_found(&e) || e.errno == libc::ENOTDIR => return Ok(None),
                Err(e) => return Err(s3_error(e)),
            };
        }
        Ok(Some(at))
    }

    /// The object `key` of `bucket` (a regular file), for `user` to read
    /// (`want` READ) or look at (0).
    pub async fn object(
        &self,
        user: &User,
        bucket: &str,
        key: &str,
        want: u32,
    ) -> S3Result<InodeRecord> {
        let path = parse_key(key)?;
        let dir = self.bucket(user, bucket).await?;
        let attr = self
            .walk(user, &dir, &path.parts)
            .await?
            .ok_or_else(|| s3_error!(NoSuchKey))?;
        let is_file = attr.kind() == FileKind::Regular;
        if is_file == path.dir_marker {
            return Err(s3_error!(NoSuchKey));
        }
        if want != 0 {
            perm::check(self.dfs(), user, &attr, want).await.s3()?;
        }
        Ok(attr)
    }

    /// The directory a new object's parts (`parts` but the last) name,
    /// made as `user` where missing, and writable and searchable by them.
    pub async fn parent_for_write(
        &self,
        user: &User,
        bucket: &InodeRecord,
        dirs: &[String],
    ) -> S3Result<InodeRecord> {
        let mut at = bucket.clone();
        for part in dirs {
            perm::check(self.dfs(), user, &at, EXEC).await.s3()?;
            at = match self.dfs().lookup(at.ino, part.as_bytes()).await {
                Ok(attr) if attr.kind() == FileKind::Directory => attr,
                Ok(_) => {
                    return Err(s3_error!(
                        InvalidArgument,
                        "`{part}` is an object, so it cannot also be a prefix"
                    ))
                }
                Err(e) if is_not_found(&e) => {
                    perm::check(self.dfs(), user, &at, WRITE | EXEC)
                        .await
                        .s3()?;
                    self.mkdir_as(user, at.ino, part, DIR_MODE).await.s3()?
                }
                Err(e) => return Err(s3_error(e)),
            };
        }
        perm::check(self.dfs(), user, &at, WRITE | EXEC)
            .await
            .s3()?;
        Ok(at)
    }

    /// Opens `attr` (a regular file) for reading.
    pub async fn open_read(&self, attr: &InodeRecord) -> Result<OpenHandle, DfsError> {
        let fh = self.handles.open(attr.ino, libc::O_RDONLY).await?;
        Ok(OpenHandle {
            handles: self.handles.clone(),
            fh,
            ino: attr.ino,
            released: false,
        })
    }

    /// A new file in `dir` named `name`, owned by `user`, open for writing,
    /// with the group, ACL and tiering policy a file created in
    /// `inherit_from` gets there (the directory it will be renamed into;
    /// 0: `dir`).
    pub async fn create_file(
        &self,
        user: &User,
        dir: u64,
        name: &str,
        inherit_from: u64,
    ) -> Result<(InodeRecord, OpenHandle), DfsError> {
        let request = CreateRequest {
            parent: dir,
            name: name.as_bytes().to_vec(),
            kind: FileKind::Regular as i32,
            mode: FILE_MODE,
            uid: user.uid,
            gid: user.gid,
            umask: UMASK,
            inherit_from,
            ..Default::default()
        };
        let (attr, fh) = self.handles.create_open(request, libc::O_WRONLY).await?;
        Ok((
            attr.clone(),
            OpenHandle {
                handles: self.handles.clone(),
                fh,
                ino: attr.ino,
                released: false,
            },
        ))
    }

    /// A fresh name in `/.s3/tmp` for an object being written.
    pub fn tmp_name() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    /// Writes `body` into a new file in `/.s3/tmp` as `user`, made as if in
    /// `inherit_from` (see `create_file`), committed before it returns: the
    /// file's name, inode, size and MD5.
    pub async fn write_tmp<S, E>(
        &self,
        user: &User,
        inherit_from: u64,
        body: S,
        limit: u64,
    ) -> S3Result<Written>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp = self.private_dir(TMP_DIR).await.s3()?;
        let name = Self::tmp_name();
        let (attr, handle) = self
            .create_file(user, tmp.ino, &name, inherit_from)
            .await
            .s3()?;
        let written = self.fill(handle, body, limit).await;
        match written {
            Ok((size, md5)) => Ok(Written {
                tmp_dir: tmp.ino,
                name,
                ino: attr.ino,
                size,
                md5,
            }),
            Err(e) => {
                let _ = self.dfs().unlink(tmp.ino, name.as_bytes()).await;
                Err(e)
            }
        }
    }

    async fn fill<S, E>(
        &self,
        handle: OpenHandle,
        mut body: S,
        limit: u64,
    ) -> S3Result<(u64, [u8; 16])>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut md5 = Md5::new();
        let mut offset = 0u64;
        while let Some(piece) = body.next().await {
            let piece =
                piece.map_err(|e| s3_error!(IncompleteBody, "reading the body failed: {e}"))?;
            if offset + piece.len() as u64 > limit {
                return Err(s3_error!(
                    EntityTooLarge,
                    "at most {limit} bytes in one request"
                ));
            }
            md5.update(&piece);
            self.handles.write(handle.fh, offset, &piece).await.s3()?;
            offset += piece.len() as u64;
        }
        handle.close().await.s3()?;
        Ok((offset, md5.finalize()))
    }

    /// Moves a committed file from `/.s3/tmp` to `name` in `dir`,
    /// replacing what was there (a file; a directory refuses).
    /// With `create_only`, an existing object is kept and the new one
    /// refused (If-None-Match: *), in the same atomic rename.
    pub async fn publish(
        &self,
        user: &User,
        written: &Written,
        dir: &InodeRecord,
        name: &str,
        create_only: bool,
    ) -> S3Result<()> {
        // Replacing an object is removing it: the sticky-bit rule applies.
        if dir.mode & 0o1000 != 0 {
            if let Ok(existing) = self.dfs().lookup(dir.ino, name.as_bytes()).await {
                if let Err(e) = perm::check_remove(user, dir, &existing) {
                    let _ = self
                        .dfs()
                        .unlink(written.tmp_dir, written.name.as_bytes())
                        .await;
                    return Err(s3_error(e));
                }
            }
        }
        let request = RenameRequest {
            parent: written.tmp_dir,
            name: written.name.as_bytes().to_vec(),
            new_parent: dir.ino,
            new_name: name.as_bytes().to_vec(),
            flags: if create_only {
                dfs_proto::RENAME_NOREPLACE
            } else {
                0
            },
            keep_ino: 0,
            client_id: 0,
        };
        let renamed = self.dfs().rename(request).await;
        if let Err(e) = renamed {
            let _ = self
                .dfs()
                .unlink(written.tmp_dir, written.name.as_bytes())
                .await;
            if create_only && e.errno == libc::EEXIST {
                return Err(s3_error!(PreconditionFailed, "the object exists"));
            }
            return Err(s3_error(e));
        }
        // The metadata server defers the sync of a rename (as a local file
        // system journals it a little later); S3 answers a PUT only once
        // the object is durable.
        self.dfs().sync().await.map_err(s3_error)
    }

    /// Reads `[start, end)` of an open file as a stream of pieces, read by
    /// a task of its own a few pieces ahead of the client. A client that
    /// goes away ends the task, which releases the file.
    pub fn read_stream(
        &self,
        handle: OpenHandle,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + Unpin + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_PIECES);
        let handles = self.handles.clone();
        tokio::spawn(async move {
            let mut offset = start;
            while offset < end {
                let step =
                    u32::try_from((end - offset).min(u64::from(READ_STEP))).unwrap_or(READ_STEP);
                let piece = match handles.read(handle.fh, offset, step).await {
                    Ok(data) if data.is_empty() => Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the object became shorter while it was read",
                    )),
                    Ok(data) => Ok(Bytes::from(data)),
                    Err(e) => Err(std::io::Error::other(e.message)),
                };
                let failed = piece.is_err();
                if let Ok(data) = &piece {
                    offset += data.len() as u64;
                }
                if tx.send(piece).await.is_err() || failed {
                    break;
                }
            }
            drop(handle);
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// Removes upload directory `name` (inode `dir`) from `uploads`: its
    /// parts, then itself. Chunks stay while a completed object shares
    /// them.
    pub async fn remove_upload_dir(
        &self,
        uploads: u64,
        dir: u64,
        name: &[u8],
    ) -> Result<(), DfsError> {
        for e in self.entries(dir).await? {
            match self.dfs().unlink(dir, &e.name).await {
                Err(err) if err.errno != libc::ENOENT => return Err(err),
                _ => {}
            }
        }
        self.dfs().rmdir(uploads, name).await
    }

    /// A directory's entries with their attributes, sorted by name.
    pub async fn entries(&self, dir: u64) -> Result<Vec<DirEntry>, DfsError> {
        let mut entries = self.dfs().read_dir_all(dir, true).await?;
        entries.retain(|e| e.name != b"." && e.name != b"..");
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Removes `name` from `dir`, then each directory up to (not
    /// including) `stop` that this left empty, as S3 has no empty
    /// prefixes. A directory that is not empty ends it.
    /// A directory goes only where `user` could remove it themselves
    /// (write and search on its parent, the sticky-bit rule).
    pub async fn remove_and_prune(
        &self,
        user: &User,
        chain: &[InodeRecord],
        name: &str,
    ) -> Result<(), DfsError> {
        let Some(dir) = chain.last() else {
            return Ok(());
        };
        self.dfs().unlink(dir.ino, name.as_bytes()).await?;
        // Durable before S3 answers (the metadata server defers the sync
        // of an unlink); emptied prefix directories need not be.
        self.dfs().sync().await?;
        // chain[0] is the bucket; chain[i] is a directory in chain[i-1].
        for i in (1..chain.len()).rev() {
            let parent = &chain[i - 1];
            let names = self.entries(chain[i].ino).await?;
            if !names.is_empty() {
                break;
            }
            if perm::check(self.dfs(), user, parent, WRITE | EXEC)
                .await
                .is_err()
                || !perm::may_remove(user, parent, &chain[i])
            {
                break;
            }
            let dir_name = self.name_in(parent.ino, chain[i].ino).await?;
            match self.dfs().rmdir(parent.ino, &dir_name).await {
                Ok(()) => {}
                Err(e) if e.errno == libc::ENOTEMPTY || is_not_found(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn name_in(&self, parent: u64, ino: u64) -> Result<Vec<u8>, DfsError> {
        self.entries(parent)
            .await?
            .into_iter()
            .find(|e| e.ino == ino)
            .map(|e| e.name)
            .ok_or_else(|| DfsError::new(libc::ENOENT, "directory moved meanwhile"))
    }

    /// The directories from the bucket down to the object's parent, each
    /// searchable by `user` (for a delete: the last must be writable).
    pub async fn chain(
        &self,
        user: &User,
        bucket: &InodeRecord,
        dirs: &[String],
    ) -> S3Result<Option<Vec<InodeRecord>>> {
        let mut chain = vec![bucket.clone()];
        for part in dirs {
            let Some(at) = self
                .walk(
                    user,
                    chain.last().unwrap_or(bucket),
                    std::slice::from_ref(part),
                )
                .await?
            else {
                return Ok(None);
            };
            if at.kind() != FileKind::Directory {
                return Ok(None);
            }
            chain.push(at);
        }
        Ok(Some(chain))
    }

    /// Whether `user` may read `attr`.
    pub async fn may_read(&self, user: &User, attr: &InodeRecord) -> bool {
        perm::check(self.dfs(), user, attr, READ).await.is_ok()
    }
}

/// A file written in `/.s3/tmp`, committed, not yet published.
#[derive(Debug, Clone)]
pub struct Written {
    pub tmp_dir: u64,
    pub name: String,
    pub ino: u64,
    pub size: u64,
    pub md5: [u8; 16],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_paths() {
        let p = parse_key("a/b/c.txt").ok();
        assert_eq!(
            p,
            Some(KeyPath {
                parts: vec!["a".into(), "b".into(), "c.txt".into()],
                dir_marker: false
            })
        );
        let d = parse_key("a/b/").ok();
        assert_eq!(d.map(|d| d.dir_marker), Some(true));
        for bad in ["", "/a", "a//b", "a/./b", "a/../b", "..", "a\0b"] {
            assert!(parse_key(bad).is_err(), "{bad:?}");
        }
        assert!(parse_key(&"x".repeat(300)).is_err());
        assert!(parse_key(&"x/".repeat(600)).is_err());
    }
}
