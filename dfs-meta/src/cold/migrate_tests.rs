//! A pass of `migrate` over an in-memory volume and cold store.

use std::sync::Arc;
use std::time::Duration;

use dfs_core::codec::{compress, CodecPolicy};
use dfs_core::fingerprint::Fingerprint;
use dfs_core::workers::Worker;
use dfs_proto::{
    ChunkRecord, ChunkRefRecord, ChunkState, FileKind, InodeRecord, PackRecord, PackState,
    Tier as TierRecord,
};

use super::migrate::Migration;
use super::pack::object_name;
use super::recall::Recall;
use super::ColdStore;
use crate::access::TierClock;
use crate::error::MetaError;
use crate::inodes::put_inode;
use crate::keys;
use crate::maintenance::{Maintenance, MaintenanceConfig};
use crate::registry::Liveness;
use crate::store::{
    decode_counter, get_record, put_record, read_only, transact, MemStore, MetaStore,
};
use dfs_core::rpc::Connector;

fn source_text(seed: u32) -> Vec<u8> {
    (0..150)
        .map(|i| {
            format!("pub fn item_{seed}_{i}(x: u64) -> u64 {{ x.rotate_left({i}) ^ {seed} }}\n")
        })
        .collect::<String>()
        .into_bytes()
}

/// File `ino`, one inline chunk of `raw`, last read `day`.
fn file(store: &dyn MetaStore, ino: u64, raw: &[u8], day: u32) -> Fingerprint {
    let fp = Fingerprint::of(raw);
    let (codec, stored) = compress(CodecPolicy::Lz4, raw);
    transact(store, |t| {
        let mut inode = InodeRecord {
            ino,
            kind: FileKind::Regular as i32,
            nlink: 1,
            size: raw.len() as u64,
            data_version: 1,
            ..InodeRecord::default()
        };
        crate::access::touch(t, &mut inode, day);
        put_inode(t, &inode);
        put_record(
            t,
            &keys::chunk(ino, 0),
            &ChunkRefRecord {
                len: raw.len() as u32,
                fingerprint: fp.to_vec(),
            },
        );
        put_record(
            t,
            &keys::hash(&fp.0),
            &dfs_core::inline::record(raw.len() as u32, codec, stored.clone()),
        );
        t.atomic_add(&keys::refs(&fp.0), 1)?;
        Ok::<_, MetaError>(())
    })
    .unwrap();
    fp
}

fn setup() -> (Arc<dyn MetaStore>, Arc<Maintenance>, Arc<Recall>) {
    let store: Arc<dyn MetaStore> = Arc::new(MemStore::default());
    let connector: Connector =
        Arc::new(|_: &str| Err(dfs_core::error::DfsError::unavailable("no servers")));
    let maintenance = Maintenance::new(
        store.clone(),
        Liveness {
            suspect_after: Duration::from_secs(6),
            down_after: Duration::from_secs(30),
        },
        MaintenanceConfig::default(),
        connector,
        Arc::new(tokio::sync::Notify::new()),
    );
    let recall = Arc::new(Recall::new(Arc::new(ColdStore::open("memory:").unwrap())));
    maintenance.set_cold_store(recall.clone());
    (store, maintenance, recall)
}

fn record(store: &dyn MetaStore, fp: &Fingerprint) -> ChunkRecord {
    read_only(store, |t| get_record::<ChunkRecord>(t, &keys::hash(&fp.0)))
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn cold_files_go_into_one_pack_and_read_back_the_same() {
    let (store, maintenance, recall) = setup();
    let clock = TierClock::system();
    let today = clock.today();
    let worker = Worker::new("tiering", "files");
    let texts: Vec<Vec<u8>> = (0..20).map(source_text).collect();
    // 100 days idle: cold by the volume default (90 days); one file
    // read yesterday stays.
    let fps: Vec<Fingerprint> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| file(store.as_ref(), i as u64 + 10, t, today - 100))
        .collect();
    let warm = file(store.as_ref(), 99, &source_text(99), today - 1);
    let inline_bytes: u64 = fps
        .iter()
        .map(|fp| u64::from(record(store.as_ref(), fp).stored_len))
        .sum();

    let report = Migration::new(store.clone(), maintenance.clone(), recall.cold().clone())
        .pass(&clock, &worker)
        .await
        .unwrap();
    assert_eq!((report.files, report.files_moved), (20, 20), "{report:?}");
    assert_eq!((report.chunks_packed, report.packs_written), (20, 1));
    // Compressed together, the files share their context.
    assert!(
        report.pack_bytes * 3 < inline_bytes,
        "{report:?}, inline {inline_bytes}"
    );
    for (fp, raw) in fps.iter().zip(&texts) {
        let rec = record(store.as_ref(), fp);
        assert!(rec.is_packed() && rec.inline_data.is_empty());
        assert_eq!(rec.tier(), TierRecord::Cold);
        assert_eq!(&recall.chunk(fp, &rec).await.unwrap(), raw);
    }
    assert!(!record(store.as_ref(), &warm).is_packed());
    let inode = read_only(store.as_ref(), |t| {
        get_record::<InodeRecord>(t, &keys::inode(10))
    })
    .unwrap()
    .unwrap();
    assert_eq!(inode.tier(), TierRecord::Cold);
    let pack = read_only(store.as_ref(), |t| {
        get_record::<PackRecord>(t, &keys::pack(1))
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        (pack.state(), pack.chunks, pack.bytes),
        (PackState::Sealed, 20, report.pack_bytes)
    );
    assert_eq!(
        recall.cold().size(&object_name(1)).await.unwrap(),
        pack.bytes
    );
    let stats = read_only(store.as_ref(), crate::chunkmap::stats).unwrap();
    assert_eq!(stats.packed_chunks, 20);
    assert!(stats.cold_bytes >= stats.packed_bytes && stats.packed_bytes > 0);

    // Nothing left: a second pass writes nothing.
    let again = Migration::new(store.clone(), maintenance.clone(), recall.cold().clone())
        .pass(&clock, &worker)
        .await
        .unwrap();
    assert_eq!((again.files, again.packs_written), (0, 0));

    // The chunks die and are collected: the pack has no live chunk left
    // and the next pass deletes it, object and record.
    let dead: Vec<Vec<u8>> = fps.iter().map(|f| f.to_vec()).collect();
    transact(store.as_ref(), |t| {
        for fp in &dead {
            let mut rec = get_record::<ChunkRecord>(t, &keys::hash(fp))?.unwrap();
            rec.set_state(ChunkState::Dead);
            put_record(t, &keys::hash(fp), &rec);
        }
        crate::chunkmap::gc_finish(t, &dead)
    })
    .unwrap();
    let live = read_only(store.as_ref(), |t| {
        Ok::<_, MetaError>(decode_counter(t.get(&keys::pack_live(1))?.as_deref()))
    })
    .unwrap();
    assert_eq!(live, 0);
    let last = Migration::new(store.clone(), maintenance, recall.cold().clone())
        .pass(&clock, &worker)
        .await
        .unwrap();
    assert_eq!(last.packs_deleted, 1);
    assert!(recall.cold().size(&object_name(1)).await.is_err());
    assert!(read_only(store.as_ref(), |t| get_record::<PackRecord>(
        t,
        &keys::pack(1)
    ))
    .unwrap()
    .is_none());
}

#[tokio::test]
async fn a_pack_left_writing_by_a_crash_is_deleted_and_a_young_one_kept() {
    let (store, maintenance, recall) = setup();
    let cold = recall.cold().clone();
    let now = dfs_core::time::now_ns();
    for (id, created) in [(5u64, now - 2 * 3_600_000_000_000), (6, now)] {
        cold.put(&object_name(id), bytes::Bytes::from_static(b"half a pack"))
            .await
            .unwrap();
        transact(store.as_ref(), |t| {
            put_record(
                t,
                &keys::pack(id),
                &PackRecord {
                    object: object_name(id),
                    state: PackState::Writing as i32,
                    created_ns: created,
                    ..PackRecord::default()
                },
            );
            Ok::<_, MetaError>(())
        })
        .unwrap();
    }
    let mut m = Migration::new(store.clone(), maintenance, cold.clone());
    m.collect_packs().await.unwrap();
    assert_eq!(m.report.packs_deleted, 1);
    assert!(cold.size(&object_name(5)).await.is_err());
    assert!(
        cold.size(&object_name(6)).await.is_ok(),
        "another pass may be writing it"
    );
}

#[tokio::test]
async fn a_record_changed_after_it_was_read_stays_where_it_is() {
    let (store, maintenance, recall) = setup();
    let clock = TierClock::system();
    let fp = file(store.as_ref(), 10, &source_text(1), clock.today() - 100);
    let before = record(store.as_ref(), &fp);
    // A stand-in for a change between read and switch: the record the
    // pass read is not the one there when it switches.
    let mut other = before.clone();
    other.verified = !other.verified;
    let placed = super::pack::Placed {
        fingerprint: fp.to_vec(),
        location: dfs_proto::PackedLocation::default(),
    };
    let done = transact(store.as_ref(), |t| {
        put_record(t, &keys::hash(&fp.0), &other);
        super::migrate::switch_batch(
            t,
            1,
            10,
            &[(placed.clone(), super::migrate::digest(&before))],
        )
    })
    .unwrap();
    assert!(done.is_empty());
    assert!(!record(store.as_ref(), &fp).is_packed());
    // The next pass reads it as it is and moves it.
    let report = Migration::new(store.clone(), maintenance, recall.cold().clone())
        .pass(&clock, &Worker::new("tiering", "files"))
        .await
        .unwrap();
    assert_eq!(report.chunks_packed, 1);
    assert!(record(store.as_ref(), &fp).is_packed());
}
