//! Leftovers no request will come back for: files in `/.s3/tmp` from PUTs
//! whose gateway died before the rename (or whose client vanished without
//! the gateway noticing), and multipart uploads neither completed nor
//! aborted. Left alone they hold space for ever; S3 users expect the
//! second to go after some days (the `AbortIncompleteMultipartUpload`
//! lifecycle rule every guide sets).
//!
//! Age is judged by modification time, which dfs-meta moves at every
//! commit: a PUT still streaming commits as its write-behind does, and an
//! upload directory changes with each part. Every gateway of a volume may
//! sweep; one that finds an entry already gone goes on.

use std::time::Duration;

use dfs_core::error::DfsError;
use dfs_proto::{DirEntry, FileKind};

use crate::volume::{Volume, MULTIPART_DIR, TMP_DIR};

/// When leftovers are removed.
#[derive(Clone, Copy, Debug)]
pub struct SweepPolicy {
    /// A file in `/.s3/tmp` unchanged this long is removed.
    pub tmp_after: Duration,
    /// A multipart upload unchanged this long is aborted (`None`: never).
    pub uploads_after: Option<Duration>,
    /// Time between sweeps.
    pub every: Duration,
}

/// What one sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub tmp_files: usize,
    pub uploads: usize,
}

/// The entries of a directory last changed before `cutoff_ns`, of `kind`.
fn stale(entries: &[DirEntry], kind: FileKind, cutoff_ns: i64) -> Vec<&DirEntry> {
    entries
        .iter()
        .filter(|e| e.kind == kind as i32)
        .filter(|e| {
            // An entry listed without its attributes is left for a later
            // sweep rather than judged by nothing.
            e.attr
                .as_ref()
                .is_some_and(|a| a.mtime_ns.max(a.ctime_ns) < cutoff_ns)
        })
        .collect()
}

fn cutoff(now_ns: i64, age: Duration) -> i64 {
    now_ns.saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX))
}

/// One sweep, judging ages against `now_ns`.
pub async fn sweep_once(
    volume: &Volume,
    policy: &SweepPolicy,
    now_ns: i64,
) -> Result<Swept, DfsError> {
    let mut swept = Swept::default();
    let dfs = volume.dfs();
    let tmp = volume.private_dir(TMP_DIR).await?;
    let entries = volume.entries(tmp.ino).await?;
    for e in stale(
        &entries,
        FileKind::Regular,
        cutoff(now_ns, policy.tmp_after),
    ) {
        match dfs.unlink(tmp.ino, &e.name).await {
            Ok(()) => swept.tmp_files += 1,
            Err(err) if err.errno == libc::ENOENT => {}
            Err(err) => return Err(err),
        }
    }
    if let Some(age) = policy.uploads_after {
        let uploads = volume.private_dir(MULTIPART_DIR).await?;
        let entries = volume.entries(uploads.ino).await?;
        for e in stale(&entries, FileKind::Directory, cutoff(now_ns, age)) {
            let id = String::from_utf8_lossy(&e.name).to_string();
            match volume.remove_upload_dir(uploads.ino, e.ino, &e.name).await {
                Ok(()) => {
                    tracing::info!(upload = %id, "aborted an upload unchanged past --sweep-uploads-after");
                    swept.uploads += 1;
                }
                Err(err) if err.errno == libc::ENOENT => {}
                // A part added since the listing: no longer stale.
                Err(err) if err.errno == libc::ENOTEMPTY => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(swept)
}

/// Sweeps every `policy.every` until the process ends.
pub async fn run(volume: Volume, policy: SweepPolicy) {
    loop {
        tokio::time::sleep(policy.every).await;
        match sweep_once(&volume, &policy, dfs_core::time::now_ns()).await {
            Ok(Swept {
                tmp_files: 0,
                uploads: 0,
            }) => {}
            Ok(swept) => tracing::info!(
                tmp_files = swept.tmp_files,
                uploads = swept.uploads,
                "removed abandoned uploads"
            ),
            Err(e) => {
                tracing::warn!(error = %e.message, "sweeping /.s3 failed; trying again later")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_proto::InodeRecord;

    fn entry(name: &str, kind: FileKind, mtime_ns: i64, ctime_ns: i64) -> DirEntry {
        DirEntry {
            name: name.as_bytes().to_vec(),
            ino: 7,
            kind: kind as i32,
            attr: Some(InodeRecord {
                mtime_ns,
                ctime_ns,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_entries_of_the_kind_unchanged_before_the_cutoff_are_stale() {
        let entries = vec![
            entry("old", FileKind::Regular, 10, 10),
            entry("new", FileKind::Regular, 100, 100),
            // Written long ago, renamed or chmodded lately: still in use.
            entry("touched", FileKind::Regular, 10, 100),
            entry("old-dir", FileKind::Directory, 10, 10),
            DirEntry {
                name: b"unlisted".to_vec(),
                ino: 8,
                kind: FileKind::Regular as i32,
                attr: None,
            },
        ];
        let names = |v: Vec<&DirEntry>| -> Vec<String> {
            v.iter()
                .map(|e| String::from_utf8_lossy(&e.name).to_string())
                .collect()
        };
        assert_eq!(names(stale(&entries, FileKind::Regular, 50)), ["old"]);
        assert_eq!(names(stale(&entries, FileKind::Directory, 50)), ["old-dir"]);
        assert!(stale(&entries, FileKind::Regular, 5).is_empty());
    }

    #[test]
    fn cutoffs_do_not_overflow() {
        assert_eq!(cutoff(1_000, Duration::from_nanos(400)), 600);
        assert_eq!(cutoff(0, Duration::MAX), -i64::MAX);
    }
}
