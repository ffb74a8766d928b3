//! The server's identity: a UUID kept in `<data>/server.id`.
//!
//! Created on first start and read on every later one, so the metadata
//! server recognises a restarted server (same data, same shards) and does not
//! take it for a new one. The identity belongs to the data directory, not to
//! the host or the listen address.
//!
//! Format: the UUID in its hyphenated text form, followed by a newline.
//! Written to a temporary file, fsynced, renamed into place, and the directory
//! fsynced, so a crash leaves either no file or a whole one.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::error::StoreError;

/// File name of the identity inside the data directory.
pub const SERVER_ID_FILE: &str = "server.id";

/// Reads `<data_dir>/server.id`, creating it with a fresh UUID if absent.
///
/// A file that exists but does not hold a UUID is an error, not a reason to
/// mint a new identity: that would orphan every shard in the directory.
pub fn load_or_create(data_dir: &Path) -> Result<String, StoreError> {
    let path = data_dir.join(SERVER_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            uuid::Uuid::parse_str(id).map_err(|e| {
                StoreError::io(
                    format!("{} does not hold a server UUID", path.display()),
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )
            })?;
            Ok(id.to_string())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            write_atomically(data_dir, &path, format!("{id}\n").as_bytes())
                .map_err(|e| StoreError::io(format!("cannot write {}", path.display()), e))?;
            tracing::info!(server_uuid = %id, path = %path.display(), "created server identity");
            Ok(id)
        }
        Err(e) => Err(StoreError::io(format!("cannot read {}", path.display()), e)),
    }
}

/// Replaces `path` (a file in `dir`) with `contents` through a temporary
/// file and a rename, both synced: a crash leaves the old or the new file.
pub(crate) fn write_atomically(dir: &Path, path: &Path, contents: &[u8]) -> io::Result<()> {
    let name = path.file_name().map_or_else(
        || std::ffi::OsString::from("file"),
        std::ffi::OsStr::to_os_string,
    );
    let mut tmp_name = name;
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(dir.path()).expect("create");
        uuid::Uuid::parse_str(&first).expect("a uuid");
        let second = load_or_create(dir.path()).expect("load");
        assert_eq!(first, second);
        assert!(!dir.path().join("server.id.tmp").exists());

        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(first, load_or_create(other.path()).expect("create"));
    }

    #[test]
    fn garbage_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(SERVER_ID_FILE), "not a uuid").expect("write");
        let err = load_or_create(dir.path()).expect_err("must refuse");
        assert!(err.to_string().contains("server.id"), "{err}");
    }
}
