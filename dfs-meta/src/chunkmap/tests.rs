//! Chunk-map commits, dedup scoping, inline chunks and pages.

use super::*;
use crate::namespace;
use crate::store::{transact, MemStore, MetaStore};
use dfs_core::codec::{compress, CodecPolicy};
use dfs_proto::{ByteRange, CreateRequest, NewChunk};

fn run<T>(store: &dyn MetaStore, f: impl FnMut(&mut dyn KvTxn) -> Result<T>) -> T {
    transact(store, f).unwrap()
}

fn file(store: &dyn MetaStore, name: &[u8], ino: u64) -> u64 {
    let req = CreateRequest {
        parent: 1,
        name: name.to_vec(),
        kind: FileKind::Regular as i32,
        mode: 0o644,
        ..Default::default()
    };
    run(store, |t| namespace::create(t, &req, ino, 1)).ino
}

/// A whole-file commit of `raw` as one inline chunk.
fn inline_commit(ino: u64, raw: &[u8]) -> CommitChunksRequest {
    let (codec, stored) = compress(CodecPolicy::Lz4, raw);
    CommitChunksRequest {
        ino,
        replaced: vec![ByteRange {
            start: 0,
            end: u64::MAX,
        }],
        chunks: vec![NewChunk {
            offset: 0,
            len: raw.len() as u32,
            fingerprint: Fingerprint::of(raw).to_vec(),
            uploaded: Some(inline::record(raw.len() as u32, codec, stored)),
        }],
        new_size: raw.len() as u64,
        mtime_ns: 1,
        truncate: false,
        attrs: None,
        create: None,
    }
}

/// A whole-file commit of one 100 KiB chunk stored as replicas on
/// `servers` (nothing is uploaded: the index alone is under test).
fn sharded_commit(ino: u64, raw: &[u8], servers: Vec<u32>) -> CommitChunksRequest {
    CommitChunksRequest {
        ino,
        replaced: vec![ByteRange {
            start: 0,
            end: u64::MAX,
        }],
        chunks: vec![NewChunk {
            offset: 0,
            len: raw.len() as u32,
            fingerprint: Fingerprint::of(raw).to_vec(),
            uploaded: Some(ChunkRecord {
                raw_len: raw.len() as u32,
                stored_len: raw.len() as u32,
                shard_len: raw.len() as u32,
                layout: Some(dfs_proto::Layout {
                    data_shards: 1,
                    parity_shards: 0,
                    replicas: servers.len() as u32,
                    inline: false,
                    packed: false,
                }),
                shard_servers: servers,
                ..ChunkRecord::default()
            }),
        }],
        new_size: raw.len() as u64,
        mtime_ns: 1,
        truncate: false,
        attrs: None,
        create: None,
    }
}

#[test]
fn only_the_uploader_dedups_against_an_unchecked_entry() {
    let store = MemStore::default();
    run(&store, |t| namespace::init_root(t, 1).map(|_| ()));
    let raw = vec![7u8; 100 << 10];
    let fp = Fingerprint::of(&raw).to_vec();
    let (mallory, victim) = (b"mallory-key-id!!".to_vec(), b"victim-key-id!!!".to_vec());
    let (m, v) = (file(&store, b"m", 2), file(&store, b"v", 3));
    // Mallory commits a record for shards it never stored.
    run(&store, |t| {
        commit(t, &sharded_commit(m, &raw, vec![1, 2]), 1, &mallory)
    });
    let entry = || {
        run(&store, |t| lookup_chunks(t, std::slice::from_ref(&fp)))[0]
            .clone()
            .unwrap()
    };
    assert_eq!(entry().owner, mallory);
    assert_eq!(entry().standing_for(&mallory), Standing::Usable);
    assert_eq!(entry().standing_for(&victim), Standing::Unchecked);
    // The victim may not reference it without uploading...
    let mut skip = sharded_commit(v, &raw, vec![3, 4]);
    skip.chunks[0].uploaded = None;
    assert!(matches!(
        transact(&store, |t| commit(t, &skip, 2, &victim)),
        Err(MetaError::MissingChunks(_))
    ));
    // ...nor, uploading, be bound to it before dfs-meta checks it.
    let upload = sharded_commit(v, &raw, vec![3, 4]);
    assert!(matches!(
        transact(&store, |t| commit(t, &upload, 2, &victim)),
        Err(MetaError::Unchecked(f)) if f == vec![fp.clone()]
    ));
    // Found not to be the chunk, it is replaced by the victim's upload,
    // keeping Mallory's reference.
    run(&store, |t| {
        let mut rec = lookup_chunks(t, std::slice::from_ref(&fp))?[0]
            .clone()
            .unwrap();
        rec.verification_failed = true;
        put_record(t, &keys::hash(&fp), &rec);
        Ok(())
    });
    assert_eq!(entry().standing_for(&mallory), Standing::Failed);
    // Not before dfs-meta has read the upload back (its keys may have
    // held the bad entry's shards, now deleted)...
    assert!(matches!(
        transact(&store, |t| commit(t, &upload, 2, &victim)),
        Err(MetaError::ReplacesFailed(f)) if f == vec![fp.clone()]
    ));
    let checked: HashSet<Vec<u8>> = [fp.clone()].into();
    run(&store, |t| {
        commit_checked(t, &upload, 2, &victim, &checked, 0)
    });
    let now = entry();
    assert_eq!(
        (now.owner.clone(), now.shard_servers.clone()),
        (victim.clone(), vec![3, 4])
    );
    // ...which makes it checked for everyone.
    assert!(now.verified && !now.verification_failed);
    let refs = run(&store, |t| Ok(t.get(&keys::refs(&fp))?));
    assert_eq!(decode_counter(refs.as_deref()), 2);
    // Checked good, anyone dedups against it.
    run(&store, |t| {
        let mut rec = lookup_chunks(t, std::slice::from_ref(&fp))?[0]
            .clone()
            .unwrap();
        rec.verified = true;
        put_record(t, &keys::hash(&fp), &rec);
        Ok(())
    });
    assert_eq!(entry().standing_for(&mallory), Standing::Usable);
    let other = file(&store, b"o", 4);
    let mut dedup = sharded_commit(other, &raw, vec![5, 6]);
    dedup.chunks[0].uploaded = None;
    run(&store, |t| commit(t, &dedup, 3, &mallory));
    assert_eq!(entry().shard_servers, vec![3, 4]);
}

#[test]
fn inline_chunks_are_stored_counted_shared_and_collected() {
    let store = MemStore::default();
    run(&store, |t| namespace::init_root(t, 1).map(|_| ()));
    let raw = b"pub fn answer() -> u32 { 42 }\n".repeat(100);
    let (a, b) = (file(&store, b"a.rs", 2), file(&store, b"b.rs", 3));
    for ino in [a, b] {
        let req = inline_commit(ino, &raw);
        verify_inline(&req).unwrap();
        run(&store, |t| commit(t, &req, 1, &[]));
    }
    // The chunk map carries the bytes; they decode to the file.
    let map = run(&store, |t| chunk_map(t, b, 0, 100));
    let rec = map.chunks[0].chunk.clone().unwrap();
    assert!(rec.is_inline() && rec.shard_servers.is_empty());
    assert_eq!(
        inline::decode(&Fingerprint::of(&raw), &rec, None).unwrap(),
        raw
    );
    // A client that keeps this version's map is told so, and nothing else;
    // one that keeps another's (or none) reads the map.
    let ask = |unless: u64, from: u64| dfs_proto::ChunkMapRequest {
        ino: b,
        from_offset: from,
        limit: 100,
        unless_data_version: unless,
    };
    let same = run(&store, |t| unchanged(t, b, &ask(map.data_version, 0))).unwrap();
    assert!(same.unchanged && same.chunks.is_empty());
    assert_eq!((same.size, same.data_version), (map.size, map.data_version));
    for other in [
        ask(0, 0),
        ask(map.data_version + 1, 0),
        ask(map.data_version, 1),
    ] {
        assert!(run(&store, |t| unchanged(t, b, &other)).is_none());
    }
    // One entry, two references, counted apart from shard bytes.
    let totals = run(&store, stats);
    assert_eq!((totals.chunks, totals.inline_chunks), (1, 1));
    assert_eq!(totals.logical_bytes, 2 * raw.len() as u64);
    assert_eq!(totals.inline_bytes, u64::from(rec.stored_len));
    // Removing both files lets GC collect the entry like any other.
    for name in [&b"a.rs"[..], b"b.rs"] {
        run(&store, |t| namespace::unlink(t, 1, name, 0, 2));
    }
    let mark = run(&store, |t| gc_mark(t, &[], 100, 0, 10));
    assert_eq!(mark.dead.len(), 1);
    let dead: Vec<Vec<u8>> = mark.dead.iter().map(|d| d.fingerprint.clone()).collect();
    assert_eq!(run(&store, |t| gc_finish(t, &dead)), 1);
    let totals = run(&store, stats);
    assert_eq!((totals.chunks, totals.unreferenced_chunks), (0, 0));
}

#[test]
fn inline_bytes_that_are_not_the_chunk_are_refused() {
    // A client naming a popular fingerprint with other bytes (dedup
    // poisoning through an inline entry) is refused before any write.
    let mut req = inline_commit(2, b"what the file really holds");
    req.chunks[0].fingerprint = Fingerprint::of(b"somebody else's chunk").to_vec();
    assert!(matches!(verify_inline(&req), Err(MetaError::Invalid(_))));
    // A raw length that would make decoding allocate gigabytes is
    // refused before decoding.
    let mut huge = inline_commit(2, b"small");
    huge.chunks[0].uploaded.as_mut().unwrap().raw_len = u32::MAX;
    assert!(matches!(verify_inline(&huge), Err(MetaError::Invalid(_))));
    // Malformed records fail validation inside the commit too.
    let store = MemStore::default();
    run(&store, |t| namespace::init_root(t, 1).map(|_| ()));
    let ino = file(&store, b"f", 2);
    let mut too_big = inline_commit(ino, &[9u8; 100]);
    let up = too_big.chunks[0].uploaded.as_mut().unwrap();
    up.inline_data = vec![0u8; inline::MAX_INLINE_BYTES + 1];
    up.stored_len = up.inline_data.len() as u32;
    assert!(matches!(
        transact(&store, |t| commit(t, &too_big, 1, &[])),
        Err(MetaError::Invalid(_))
    ));
    let mut wrong_len = inline_commit(ino, &[9u8; 100]);
    wrong_len.chunks[0].uploaded.as_mut().unwrap().raw_len = 99;
    assert!(matches!(
        transact(&store, |t| commit(t, &wrong_len, 1, &[])),
        Err(MetaError::Invalid(_))
    ));
    assert_eq!(run(&store, stats).chunks, 0, "nothing was written");
}

/// An upload with shards becomes the chunk's index entry for good: one
/// carrying bytes beside its shards, or a layout no reader accepts (with
/// a hundred thousand server ids), is refused.
#[test]
fn a_sharded_record_carrying_more_than_its_shards_is_refused() {
    let store = MemStore::default();
    run(&store, |t| namespace::init_root(t, 1).map(|_| ()));
    let ino = file(&store, b"f", 2);
    let raw = [7u8; 1000];
    let refused = |req: &CommitChunksRequest| {
        matches!(
            transact(&store, |t| commit(t, req, 1, &[])),
            Err(MetaError::Invalid(_))
        )
    };
    let mut stowaway = sharded_commit(ino, &raw, vec![1, 2, 3]);
    stowaway.chunks[0].uploaded.as_mut().unwrap().inline_data = vec![0u8; 60_000];
    assert!(refused(&stowaway));
    let many: Vec<u32> = (0..100_000).collect();
    let mut crowd = sharded_commit(ino, &raw, many.clone());
    assert!(refused(&crowd), "100,000 replicas");
    let up = crowd.chunks[0].uploaded.as_mut().unwrap();
    up.layout = Some(dfs_proto::Layout {
        data_shards: 0,
        parity_shards: 100_000,
        replicas: 0,
        inline: false,
        packed: false,
    });
    assert!(refused(&crowd), "parity without data shards");
    assert_eq!(run(&store, stats).chunks, 0, "nothing was written");
    // The well-formed record goes in.
    run(&store, |t| {
        commit(t, &sharded_commit(ino, &raw, vec![1, 2, 3]), 1, &[])
    });
    assert_eq!(run(&store, stats).chunks, 1);
}

#[test]
fn a_chunk_map_page_stops_after_a_few_mib_of_inline_bytes() {
    let store = MemStore::default();
    run(&store, |t| namespace::init_root(t, 1).map(|_| ()));
    let ino = file(&store, b"f", 2);
    // Incompressible 8 KiB chunks, each its own inline entry: 1,000 of
    // them hold ~8 MiB, two pages' worth.
    let n = 1000u64;
    let len = 8 * 1024u64;
    let chunks: Vec<NewChunk> = (0..n)
        .map(|i| {
            let raw: Vec<u8> = (0..len)
                .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i * 97) >> 7) as u8)
                .collect();
            NewChunk {
                offset: i * len,
                len: len as u32,
                fingerprint: Fingerprint::of(&raw).to_vec(),
                uploaded: Some(inline::record(len as u32, dfs_proto::Codec::None, raw)),
            }
        })
        .collect();
    // Two commits: each may carry at most MAX_INLINE_PER_COMMIT.
    let half = (n / 2) as usize;
    for (k, part) in [&chunks[..half], &chunks[half..]].into_iter().enumerate() {
        let start = part[0].offset;
        let end = start + part.len() as u64 * len;
        let req = CommitChunksRequest {
            ino,
            replaced: vec![ByteRange { start, end }],
            chunks: part.to_vec(),
            new_size: end,
            mtime_ns: 1 + k as i64,
            truncate: false,
            attrs: None,
            create: None,
        };
        run(&store, |t| commit(t, &req, 1, &[]));
    }
    let first = run(&store, |t| chunk_map(t, ino, 0, 10_000));
    assert!(first.more);
    let got: usize = first
        .chunks
        .iter()
        .map(|c| c.chunk.as_ref().unwrap().inline_data.len())
        .sum();
    assert!((CHUNK_MAP_INLINE_PAGE..CHUNK_MAP_INLINE_PAGE + 8192 + 1).contains(&got));
    let next_from = first
        .chunks
        .last()
        .map(|c| c.offset + u64::from(c.len))
        .unwrap();
    let second = run(&store, |t| chunk_map(t, ino, next_from, 10_000));
    assert!(!second.more);
    // The next page starts at the chunk covering its offset, as readers
    // expect (they key chunks by offset).
    let offsets: std::collections::BTreeSet<u64> = first
        .chunks
        .iter()
        .chain(&second.chunks)
        .map(|c| c.offset)
        .collect();
    assert_eq!(offsets.len(), n as usize);
}
