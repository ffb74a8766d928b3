//! Finishing the removal of large files and the truncation of large tails:
//! their chunk-map entries are released in bounded transactions
//! (`chunkmap::PURGE_BATCH` entries each) after the transaction that
//! removed the name or cut the size. `T ino` records what is left to do, so
//! a restart resumes it; entries at or past a file's size are never
//! visible to readers meanwhile.

use std::sync::Arc;
use std::time::Duration;

use crate::chunkmap::{purge_tail_step, PURGE_BATCH};
use crate::error::{MetaError, Result};
use crate::keys;
use crate::store::{transact, MetaStore};

/// Purges everything pending; returns how many files were finished.
pub fn purge_pending(store: &dyn MetaStore) -> Result<usize> {
    let (begin, end) = keys::tag_range(keys::TRASH);
    let mut finished = 0;
    loop {
        let pending = transact(store, |t| {
            Ok::<_, MetaError>(t.range(&begin, &end, 64, false)?)
        })?;
        if pending.is_empty() {
            return Ok(finished);
        }
        for (key, _) in pending {
            let Some(ino) = keys::trash_ino(&key) else {
                tracing::error!("malformed trash key; dropping it");
                transact(store, |t| {
                    t.clear(&key);
                    Ok::<_, MetaError>(())
                })?;
                continue;
            };
            loop {
                let done = transact(store, |t| purge_tail_step(t, ino, PURGE_BATCH))?;
                if done {
                    tracing::info!(ino, "chunk map of removed file purged");
                    finished += 1;
                    break;
                }
            }
        }
    }
}

/// Runs [`purge_pending`] whenever `wake` is notified, and every few
/// seconds (to resume work left by a restart or an error).
pub async fn purge_worker(
    store: Arc<dyn MetaStore>,
    wake: Arc<tokio::sync::Notify>,
    worker: Arc<dfs_core::workers::Worker>,
) {
    let every = Duration::from_secs(5);
    worker.set_interval(every);
    loop {
        let s = store.clone();
        worker.start(0);
        let outcome = match tokio::task::spawn_blocking(move || purge_pending(s.as_ref())).await {
            Ok(Ok(purged)) => {
                worker.advance(purged as u64);
                Ok(format!("{purged} removed files purged"))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "purging removed files failed; will retry");
                Err(e.to_string())
            }
            Err(e) => {
                tracing::error!(error = %e, "purge task panicked");
                Err(format!("purge task panicked: {e}"))
            }
        };
        worker.finish(outcome, Some(every));
        let _ = tokio::time::timeout(every, wake.notified()).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::{chunkmap, inodes, namespace};
    use dfs_proto::{
        ByteRange, ChunkRecord, CommitChunksRequest, CreateRequest, FileKind, Layout, NewChunk,
    };
    use std::sync::Arc;

    fn run<T>(
        store: &dyn MetaStore,
        f: impl FnMut(&mut dyn crate::store::KvTxn) -> Result<T>,
    ) -> T {
        transact(store, f).unwrap()
    }

    #[test]
    fn a_large_file_is_removed_at_once_and_purged_in_bounded_steps() {
        let store = MemStore::default();
        let n = 2 * PURGE_BATCH + 500;
        let ino = big_file(&store, n);
        let file = run(&store, |t| inodes::get_inode(t, ino));
        assert_eq!(file.data_version, 1, "a commit bumps the data version");
        let page = run(&store, |t| chunkmap::chunk_map(t, ino, 0, 10));
        assert!(page.more && page.data_version == file.data_version);
        assert_eq!(run(&store, chunkmap::stats).logical_bytes, n as u64 * 100);

        let purge_left = run(&store, |t| namespace::unlink(t, 1, b"big", 0, 2));
        assert!(purge_left, "the unlink says the purge worker has work");
        // The name is gone at once; only the first batch was released.
        assert!(matches!(
            transact(&store, |t| namespace::lookup(t, 1, b"big")),
            Err(MetaError::NotFound)
        ));
        let left = run(&store, chunkmap::stats).logical_bytes;
        assert_eq!(left, (n - PURGE_BATCH) as u64 * 100);

        assert_eq!(purge_pending(&store).unwrap(), 1);
        let stats = run(&store, chunkmap::stats);
        assert_eq!((stats.logical_bytes, stats.chunks), (0, 0));
        let (b, e) = keys::tag_range(keys::TRASH);
        assert!(run(&store, |t| Ok(t.range(&b, &e, 0, false)?)).is_empty());
        let prefix = keys::chunk_prefix(ino);
        assert!(run(&store, |t| Ok(t.range(
            &prefix,
            &keys::prefix_end(&prefix),
            0,
            false
        )?))
        .is_empty());
        assert_eq!(purge_pending(&store).unwrap(), 0, "nothing left to do");
    }

    #[test]
    fn removing_a_small_file_leaves_the_purge_worker_nothing() {
        let store = MemStore::default();
        run(&store, |t| namespace::init_root(t, 1).map(|_| ()));
        big_file_named(&store, b"small", 2, 3);
        big_file_named(&store, b"other", 3, 3);
        let rename = dfs_proto::RenameRequest {
            parent: 1,
            name: b"other".to_vec(),
            new_parent: 1,
            new_name: b"small".to_vec(),
            ..Default::default()
        };
        assert!(!run(&store, |t| namespace::rename(t, &rename, 2)));
        assert!(!run(&store, |t| namespace::unlink(t, 1, b"small", 0, 3)));
        let (b, e) = keys::tag_range(keys::TRASH);
        assert!(run(&store, |t| Ok(t.range(&b, &e, 0, false)?)).is_empty());
        assert_eq!(run(&store, chunkmap::stats).chunks, 0);
    }

    fn big_file(store: &MemStore, n: usize) -> u64 {
        run(store, |t| namespace::init_root(t, 1).map(|_| ()));
        big_file_named(store, b"big", 2, n)
    }

    fn big_file_named(store: &MemStore, name: &[u8], ino: u64, n: usize) -> u64 {
        let req = CreateRequest {
            parent: 1,
            name: name.to_vec(),
            kind: FileKind::Regular as i32,
            mode: 0o644,
            ..Default::default()
        };
        let file = run(store, |t| namespace::create(t, &req, ino, 1));
        let chunks = (0..n as u64).map(|i| chunk(i * 100, 100, i)).collect();
        let request = CommitChunksRequest {
            ino: file.ino,
            replaced: vec![ByteRange {
                start: 0,
                end: u64::MAX,
            }],
            chunks,
            new_size: n as u64 * 100,
            mtime_ns: 1,
            truncate: false,
            attrs: None,
            create: None,
        };
        run(store, |t| chunkmap::commit(t, &request, 1, &[]).map(|_| ()));
        file.ino
    }

    fn chunk(offset: u64, len: u32, id: u64) -> NewChunk {
        let mut fp = vec![1u8; 32];
        fp[..8].copy_from_slice(&id.to_be_bytes());
        NewChunk {
            offset,
            len,
            fingerprint: fp,
            uploaded: Some(ChunkRecord {
                raw_len: len,
                stored_len: len,
                layout: Some(Layout {
                    data_shards: 1,
                    parity_shards: 0,
                    replicas: 1,
                    inline: false,
                    packed: false,
                }),
                shard_servers: vec![1],
                shard_len: len,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_huge_truncation_is_bounded_invisible_and_only_large_growth_waits() {
        let store = MemStore::default();
        let n = 3 * PURGE_BATCH;
        let ino = big_file(&store, n);
        // Truncate to 150 bytes: chunk 1 is cut to 50 bytes by the client.
        let cut = CommitChunksRequest {
            ino,
            replaced: vec![ByteRange {
                start: 100,
                end: u64::MAX,
            }],
            chunks: vec![chunk(100, 50, 1_000_000)],
            new_size: 150,
            mtime_ns: 2,
            truncate: true,
            attrs: None,
            create: None,
        };
        let inode = run(&store, |t| chunkmap::commit(t, &cut, 2, &[]));
        assert_eq!(inode.size, 150);
        // Readers see exactly the two live chunks, never the dead tail.
        let map = run(&store, |t| chunkmap::chunk_map(t, ino, 0, 10_000));
        assert_eq!(
            map.chunks
                .iter()
                .map(|c| (c.offset, c.len))
                .collect::<Vec<_>>(),
            vec![(0, 100), (100, 50)]
        );
        assert!(!map.more);
        // Growing a little clears only the dead entries it grows over, at
        // once; the rest stay dead past the new size.
        let grow_a_little = CommitChunksRequest {
            ino,
            replaced: vec![],
            chunks: vec![],
            new_size: 1_150,
            mtime_ns: 3,
            truncate: false,
            attrs: None,
            create: None,
        };
        assert_eq!(
            run(&store, |t| chunkmap::commit(t, &grow_a_little, 3, &[])).size,
            1_150
        );
        let map = run(&store, |t| chunkmap::chunk_map(t, ino, 0, 10_000));
        assert_eq!(map.chunks.len(), 2, "the grown part is a hole");
        // Growing over much of the dead tail must wait for the worker.
        let grow = CommitChunksRequest {
            ino,
            replaced: vec![],
            chunks: vec![],
            new_size: 1_000_000,
            mtime_ns: 3,
            truncate: false,
            attrs: None,
            create: None,
        };
        assert!(matches!(
            transact(&store, |t| chunkmap::commit(t, &grow, 3, &[])),
            Err(MetaError::Busy(_))
        ));
        assert_eq!(purge_pending(&store).unwrap(), 1);
        // Now it grows, and the hole has no stale entries in it.
        assert_eq!(
            run(&store, |t| chunkmap::commit(t, &grow, 3, &[])).size,
            1_000_000
        );
        let map = run(&store, |t| chunkmap::chunk_map(t, ino, 0, 10_000));
        assert_eq!(map.chunks.len(), 2);
        let stats = run(&store, chunkmap::stats);
        assert_eq!(
            stats.logical_bytes, 150,
            "only the live chunks are referenced"
        );
    }

    #[test]
    fn an_unlinked_file_kept_open_lives_until_forgotten() {
        let store = MemStore::default();
        let ino = big_file(&store, 10);
        // Unlinked while the client has it open: no name, no links, but the
        // inode and its data stay, and commits to it still work.
        run(&store, |t| namespace::unlink(t, 1, b"big", ino, 2));
        assert!(matches!(
            transact(&store, |t| namespace::lookup(t, 1, b"big")),
            Err(MetaError::NotFound)
        ));
        let kept = run(&store, |t| inodes::get_inode(t, ino));
        assert_eq!((kept.nlink, kept.size), (0, 1_000));
        let append = CommitChunksRequest {
            ino,
            replaced: vec![ByteRange {
                start: 1_000,
                end: 1_100,
            }],
            chunks: vec![chunk(1_000, 100, 77)],
            new_size: 1_100,
            mtime_ns: 3,
            truncate: false,
            attrs: None,
            create: None,
        };
        assert_eq!(
            run(&store, |t| chunkmap::commit(t, &append, 3, &[])).size,
            1_100
        );
        assert_eq!(run(&store, chunkmap::stats).logical_bytes, 1_100);
        // The last close forgets it: everything goes, and again is a no-op.
        run(&store, |t| namespace::forget_unlinked(t, ino));
        run(&store, |t| namespace::forget_unlinked(t, ino));
        assert!(matches!(
            transact(&store, |t| inodes::get_inode(t, ino)),
            Err(MetaError::NotFound)
        ));
        assert_eq!(run(&store, chunkmap::stats).logical_bytes, 0);
        // Forgetting a linked inode (never kept) leaves it alone.
        let other = big_file_named(&store, b"other", 3, 1);
        run(&store, |t| namespace::forget_unlinked(t, other));
        assert_eq!(run(&store, |t| inodes::get_inode(t, other)).nlink, 1);
    }

    #[test]
    fn unlinked_files_of_a_dead_client_expire_and_renewed_ones_stay() {
        let store = MemStore::default();
        run(&store, |t| namespace::init_root(t, 1).map(|_| ()));
        // Thirteen kept files (more than one page of ten markers), unlinked
        // at time 100; eleven are renewed at 500 by their live client.
        let mut inos = Vec::new();
        for i in 0..13u64 {
            let name = format!("f{i}");
            let ino = big_file_named(&store, name.as_bytes(), 10 + i, 2);
            run(&store, |t| {
                namespace::unlink(t, 1, name.as_bytes(), ino, 100)
            });
            inos.push(ino);
        }
        let (dead, live) = (vec![inos[0], inos[12]], inos[1..12].to_vec());
        run(&store, |t| namespace::keep_unlinked(t, &live, 500));
        // A renewal of an inode without a marker changes nothing.
        run(&store, |t| namespace::keep_unlinked(t, &[999], 500));
        // Expire what was renewed before 300, in pages of ten.
        let mut from = Vec::new();
        let mut removed = 0;
        loop {
            let start = from.clone();
            let (n, next) = run(&store, |t| namespace::expire_unlinked(t, &start, 300, 10));
            removed += n;
            match next {
                Some(k) => from = k,
                None => break,
            }
        }
        assert_eq!(removed, 2);
        for ino in dead {
            assert!(matches!(
                transact(&store, |t| inodes::get_inode(t, ino)),
                Err(MetaError::NotFound)
            ));
        }
        for &ino in &live {
            assert_eq!(run(&store, |t| inodes::get_inode(t, ino)).nlink, 0);
        }
        assert_eq!(run(&store, chunkmap::stats).logical_bytes, 11 * 200);
    }

    #[test]
    fn gc_marks_after_the_grace_period_and_never_removes_a_revived_chunk() {
        let store = MemStore::default();
        let ino = big_file(&store, 10); // chunks 0..10, fingerprints id 0..10
        let keep = big_file_named(&store, b"keep", 3, 1); // shares chunk 0
        run(&store, |t| namespace::unlink(t, 1, b"big", 0, 2));
        let _ = ino;
        // First sight of the nine unreferenced chunks: stamped, waiting.
        let first = run(&store, |t| chunkmap::gc_mark(t, &[], 1000, 100, 1_000));
        assert_eq!((first.scanned, first.waiting, first.dead.len()), (10, 9, 0));
        assert!(
            first.next_fingerprint.is_empty(),
            "one pass covers the index"
        );
        // Inside the grace period: still waiting.
        let early = run(&store, |t| chunkmap::gc_mark(t, &[], 1000, 100, 1_050));
        assert_eq!((early.waiting, early.dead.len()), (9, 0));
        // Past it: dead, in pages (limit 4 gives 3 passes).
        let mut dead = Vec::new();
        let mut cursor = Vec::new();
        loop {
            let page = run(&store, |t| chunkmap::gc_mark(t, &cursor, 4, 100, 1_200));
            dead.extend(page.dead.into_iter().map(|d| d.fingerprint));
            if page.next_fingerprint.is_empty() {
                break;
            }
            cursor = page.next_fingerprint;
        }
        assert_eq!(dead.len(), 9, "every unreferenced chunk, and only those");
        assert!(
            !dead.contains(&chunk(0, 100, 0).fingerprint),
            "chunk 0 is referenced"
        );
        // A dead chunk is unknown to dedup; committing it without its bytes
        // fails, with them it is alive again.
        let lookup = run(&store, |t| {
            chunkmap::lookup_chunks(t, &[chunk(100, 100, 1).fingerprint])
        });
        assert!(lookup[0].is_none());
        let reuse = |uploaded: bool| CommitChunksRequest {
            ino: keep,
            replaced: vec![ByteRange {
                start: 100,
                end: 200,
            }],
            chunks: vec![{
                let mut c = chunk(100, 100, 1);
                if !uploaded {
                    c.uploaded = None;
                }
                c
            }],
            new_size: 200,
            mtime_ns: 5,
            truncate: false,
            attrs: None,
            create: None,
        };
        assert!(matches!(
            transact(&store, |t| chunkmap::commit(t, &reuse(false), 5, &[])),
            Err(MetaError::MissingChunks(_))
        ));
        run(&store, |t| {
            chunkmap::commit(t, &reuse(true), 5, &[]).map(|_| ())
        });
        // Finishing removes the eight still dead, not the revived one.
        let removed = run(&store, |t| chunkmap::gc_finish(t, &dead));
        assert_eq!(removed, 8);
        let stats = run(&store, chunkmap::stats);
        assert_eq!((stats.chunks, stats.unreferenced_chunks), (2, 0));
        assert_eq!(
            run(&store, |t| chunkmap::gc_finish(t, &dead)),
            0,
            "idempotent"
        );
    }

    /// FoundationDB refuses transactions that write more than 10 MB: the
    /// largest ones the shared code makes must stay far below.
    #[test]
    fn largest_transactions_stay_far_under_foundationdbs_limit() {
        const FDB_LIMIT: usize = 10_000_000;
        let store = crate::store::measure::Measured::new(Arc::new(MemStore::default()));
        run(&store, |t| namespace::init_root(t, 1).map(|_| ()));
        let req = CreateRequest {
            parent: 1,
            name: b"f".to_vec(),
            kind: FileKind::Regular as i32,
            mode: 0o644,
            ..Default::default()
        };
        let file = run(&store, |t| namespace::create(t, &req, 2, 1));
        // The biggest flush: a 64 MiB write buffer cut into minimum-size
        // (32 KiB) chunks, all new, each on 9 servers, replacing as many.
        let n: u64 = 64 * 1024 / 32;
        let wide = |i: u64, id: u64| {
            let mut c = chunk(i * 32 * 1024, 32 * 1024, id);
            if let Some(up) = c.uploaded.as_mut() {
                up.layout = Some(Layout {
                    data_shards: 6,
                    parity_shards: 3,
                    replicas: 0,
                    inline: false,
                    packed: false,
                });
                up.shard_servers = (1..=9).collect();
            }
            c
        };
        for round in 0..2u64 {
            let request = CommitChunksRequest {
                ino: file.ino,
                replaced: vec![ByteRange {
                    start: 0,
                    end: n * 32 * 1024,
                }],
                chunks: (0..n).map(|i| wide(i, round * n + i)).collect(),
                new_size: n * 32 * 1024,
                mtime_ns: 2,
                truncate: false,
                attrs: None,
                create: None,
            };
            run(&store, |t| {
                chunkmap::commit(t, &request, 2, &[]).map(|_| ())
            });
        }
        let commit_bytes = store.largest();
        // Removing it (one purge batch inline, the rest by the worker).
        run(&store, |t| namespace::unlink(t, 1, b"f", 0, 3));
        purge_pending(&store).unwrap();
        let largest = store.largest();
        eprintln!("figures: largest flush commit writes {commit_bytes} bytes; largest transaction overall {largest} bytes");
        assert!(
            largest * 10 < FDB_LIMIT,
            "a transaction wrote {largest} bytes"
        );
    }
}
