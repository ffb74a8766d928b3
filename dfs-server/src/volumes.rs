//! Volume files: where a chunk server keeps the payloads of shards of
//! [`MIN_VOLUME_PAYLOAD`] bytes or more, each written once.
//!
//! A shard kept in RocksDB itself was copied four times on its way to disk
//! (the write batch, the write-ahead log, the memtable, then the blob file
//! at flush) and its memtable pages were zeroed first: most of a chunk
//! server's CPU per byte. A payload appended here is copied once, into the
//! page cache, and synced; RocksDB keeps a 29-byte pointer to it (see
//! `store.rs`). Files are `volumes/NNNNNNNN.vol`: an 8-byte magic, then
//! payloads back to back; the checksums live in the pointers.
//!
//! The last volume is the one appended to; a new one starts when it passes
//! its size limit. Space of deleted shards is reclaimed by compaction
//! (`ShardStore::compact_volumes`), which moves the live payloads of a
//! mostly dead volume to the active one and then removes the file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Payloads at least this large go to volume files; smaller ones stay
/// inline in RocksDB, where one read finds them.
pub const MIN_VOLUME_PAYLOAD: usize = 4096;
/// Name of the directory of volume files inside the data directory.
pub const VOLUMES_DIR: &str = "volumes";
/// A volume is closed for appends once it holds this much.
pub const DEFAULT_VOLUME_BYTES: u64 = 1 << 30;
/// The first bytes of every volume file.
const MAGIC: &[u8; 8] = b"DFSVOL01";
/// Offset of the first payload in a volume.
pub const VOLUME_HEADER_LEN: u64 = MAGIC.len() as u64;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values replaced whole: a panic cannot leave them torn.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The volume being appended to.
struct Active {
    id: u32,
    file: File,
    len: u64,
}

pub struct Volumes {
    dir: PathBuf,
    limit: u64,
    active: Mutex<Active>,
    /// Read handles, opened on first use.
    readers: Mutex<HashMap<u32, Arc<File>>>,
}

fn file_name(id: u32) -> String {
    format!("{id:08}.vol")
}

fn parse_name(name: &str) -> Option<u32> {
    name.strip_suffix(".vol")?.parse().ok()
}

/// Makes a new entry of `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `payloads` back to back at `offset` in as few `pwritev` calls as
/// the kernel allows. One call for a put's shards instead of one `pwrite`
/// each: the page cache's per-call work (ext4 block reservation, extent
/// lookups, memory-cgroup charges) cost a chunk server more than the copy
/// itself for shards of ~11 KiB (768 MiB of them: 0.73 s of system time
/// written 11 KiB at a time, 0.32 s in 680 KiB writes, `dd` here).
fn write_all_vectored_at(file: &File, payloads: &[&[u8]], offset: u64) -> io::Result<()> {
    // The kernel takes at most IOV_MAX (1,024 on Linux) buffers a call.
    const MAX_BUFFERS: usize = 1024;
    let mut rest: Vec<&[u8]> = payloads.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut at = offset;
    let mut first = 0;
    while first < rest.len() {
        let end = rest.len().min(first + MAX_BUFFERS);
        let buffers: Vec<io::IoSlice<'_>> = rest[first..end]
            .iter()
            .map(|p| io::IoSlice::new(p))
            .collect();
        let at_signed = libc::off_t::try_from(at)
            .map_err(|_| io::Error::other("volume offset out of range"))?;
        let written = match nix::sys::uio::pwritev(file, &buffers, at_signed) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the volume file took no bytes",
                ))
            }
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        };
        // A short write: skip the buffers it took whole and the taken part
        // of the one it stopped in.
        let mut left = written;
        at += left as u64;
        while left > 0 && first < rest.len() {
            let len = rest[first].len();
            if left >= len {
                left -= len;
                first += 1;
            } else {
                rest[first] = &rest[first][left..];
                left = 0;
            }
        }
    }
    Ok(())
}

impl Volumes {
    /// Opens the volumes under `dir` (creating it and a first volume if
    /// needed); appends go to the last one.
    pub fn open(dir: &Path, limit: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let last = Self::list_dir(dir)?.into_iter().map(|(id, _)| id).max();
        let active = match last {
            Some(id) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(dir.join(file_name(id)))?;
                let len = file.metadata()?.len().max(VOLUME_HEADER_LEN);
                Active { id, file, len }
            }
            None => Self::create(dir, 1)?,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            limit: limit.max(VOLUME_HEADER_LEN + 1),
            active: Mutex::new(active),
            readers: Mutex::new(HashMap::new()),
        })
    }

    fn create(dir: &Path, id: u32) -> io::Result<Active> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(file_name(id)))?;
        file.write_all_at(MAGIC, 0)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Active {
            id,
            file,
            len: VOLUME_HEADER_LEN,
        })
    }

    fn list_dir(dir: &Path) -> io::Result<Vec<(u32, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(id) = entry.file_name().to_str().and_then(parse_name) {
                out.push((id, entry.metadata()?.len()));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Every volume and its size in bytes, in id order.
    pub fn list(&self) -> io::Result<Vec<(u32, u64)>> {
        Self::list_dir(&self.dir)
    }

    /// The volume appends go to.
    pub fn active_id(&self) -> u32 {
        lock(&self.active).id
    }

    /// Appends `payloads` back to back and syncs them; returns where each
    /// one landed (volume, offset). Nothing refers to them until the caller
    /// records the pointers, so a failure or a crash midway leaves only
    /// unreferenced bytes (which count as dead space, see
    /// `ShardStore::open`). The caller serializes appends.
    pub fn append(&self, payloads: &[&[u8]]) -> io::Result<Vec<(u32, u64)>> {
        if payloads.is_empty() {
            // Nothing to sync: a small put must not pay for a volume flush.
            return Ok(Vec::new());
        }
        let mut active = lock(&self.active);
        let total: u64 = payloads.iter().map(|p| p.len() as u64).sum();
        if active.len > VOLUME_HEADER_LEN && active.len + total > self.limit {
            active.file.sync_all()?;
            let next = Self::create(&self.dir, active.id + 1)?;
            tracing::info!(volume = next.id, "new volume file");
            *active = next;
        }
        let start = active.len;
        let mut at = start;
        let mut placed = Vec::with_capacity(payloads.len());
        for payload in payloads {
            placed.push((active.id, at));
            at += payload.len() as u64;
        }
        let result = write_all_vectored_at(&active.file, payloads, start)
            .and_then(|()| active.file.sync_data());
        if let Err(e) = result {
            // Give back what the failed append took (disk full), best effort.
            let _ = active.file.set_len(start);
            return Err(e);
        }
        active.len = at;
        Ok(placed)
    }

    fn reader(&self, id: u32) -> io::Result<Arc<File>> {
        if let Some(file) = lock(&self.readers).get(&id) {
            return Ok(Arc::clone(file));
        }
        let file = Arc::new(File::open(self.dir.join(file_name(id)))?);
        lock(&self.readers).insert(id, Arc::clone(&file));
        Ok(file)
    }

    /// The `len` bytes at `offset` of volume `id`.
    pub fn read(&self, id: u32, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.reader(id)?.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Removes a volume no pointer refers to any more (never the active one).
    pub fn remove(&self, id: u32) -> io::Result<()> {
        if id == self.active_id() {
            return Err(io::Error::other("the active volume cannot be removed"));
        }
        lock(&self.readers).remove(&id);
        std::fs::remove_file(self.dir.join(file_name(id)))?;
        sync_dir(&self.dir)
    }

    /// Overwrites bytes of a volume in place: fault-injection tests only.
    pub fn raw_overwrite(&self, id: u32, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .open(self.dir.join(file_name(id)))?;
        file.write_all_at(bytes, offset)?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_of_more_payloads_than_one_call_takes_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let volumes = Volumes::open(dir.path(), 1 << 30).expect("open");
        let payloads: Vec<Vec<u8>> = (0..2500u32)
            .map(|i| vec![(i % 251) as u8; 1 + (i as usize % 7)])
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let placed = volumes.append(&refs).expect("append");
        assert_eq!(placed.len(), payloads.len());
        for ((id, offset), payload) in placed.iter().zip(&payloads) {
            let back = volumes.read(*id, *offset, payload.len()).expect("read");
            assert_eq!(&back, payload);
        }
    }

    #[test]
    fn appends_read_back_and_roll_over_at_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let volumes = Volumes::open(dir.path(), 100).expect("open");
        assert!(volumes.append(&[]).expect("nothing to append").is_empty());
        let a = vec![1u8; 60];
        let b = vec![2u8; 30];
        let placed = volumes.append(&[&a, &b]).expect("append");
        assert_eq!(placed, vec![(1, 8), (1, 68)]);
        // Past the limit: the next append starts volume 2.
        let c = vec![3u8; 50];
        assert_eq!(volumes.append(&[&c]).expect("append"), vec![(2, 8)]);
        assert_eq!(volumes.read(1, 68, 30).expect("read"), b);
        assert_eq!(volumes.read(2, 8, 50).expect("read"), c);
        assert_eq!(volumes.list().expect("list"), vec![(1, 98), (2, 58)]);
        assert!(volumes.remove(2).is_err(), "the active volume stays");
        volumes.remove(1).expect("remove");
        assert!(volumes.read(1, 8, 60).is_err());

        // Reopened, appends continue at the end of the last volume.
        drop(volumes);
        let volumes = Volumes::open(dir.path(), 100).expect("reopen");
        assert_eq!(volumes.active_id(), 2);
        assert_eq!(
            volumes.append(&[&[9u8; 5][..]]).expect("append"),
            vec![(2, 58)]
        );
    }
}
