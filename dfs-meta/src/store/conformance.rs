//! One test suite for every `MetaStore` backend compiled in. Each test is
//! written once as a function of the store and instantiated per backend.

use std::sync::Arc;

use super::{
    decode_counter, read_only, transact, KvTxn, MemStore, MetaStore, RocksStore, StoreError,
};

type Result<T> = std::result::Result<T, StoreError>;

fn put_all(store: &dyn MetaStore, pairs: &[(&[u8], &[u8])]) {
    transact(store, |t| {
        for (k, v) in pairs {
            t.set(k, v);
        }
        Ok::<_, StoreError>(())
    })
    .expect("put");
}

fn keys(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Vec<u8>> {
    pairs.into_iter().map(|(k, _)| k).collect()
}

fn ordering_and_range_limits(store: &dyn MetaStore) {
    put_all(
        store,
        &[
            (b"b", b"2"),
            (b"a", b"1"),
            (b"d", b"4"),
            (b"c", b"3"),
            (b"e\xff", b"5"),
        ],
    );
    transact(store, |t| {
        assert_eq!(
            keys(t.range(b"a", b"z", 0, false)?),
            vec![
                b"a".to_vec(),
                b"b".to_vec(),
                b"c".to_vec(),
                b"d".to_vec(),
                b"e\xff".to_vec()
            ]
        );
        assert_eq!(
            keys(t.range(b"b", b"d", 0, false)?),
            vec![b"b".to_vec(), b"c".to_vec()],
            "end is exclusive"
        );
        assert_eq!(
            keys(t.range(b"a", b"z", 2, false)?),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            keys(t.range(b"a", b"z", 2, true)?),
            vec![b"e\xff".to_vec(), b"d".to_vec()]
        );
        assert_eq!(
            keys(t.range(b"a", b"d", 0, true)?),
            vec![b"c".to_vec(), b"b".to_vec(), b"a".to_vec()],
            "reverse excludes end"
        );
        assert!(t.range(b"x", b"z", 0, false)?.is_empty());
        assert!(
            t.range(b"d", b"b", 0, false)?.is_empty(),
            "inverted range is empty"
        );
        Ok::<_, StoreError>(())
    })
    .expect("txn");
}

fn reads_see_own_writes(store: &dyn MetaStore) {
    put_all(store, &[(b"k1", b"old"), (b"k3", b"x")]);
    transact(store, |t| {
        t.set(b"k1", b"new");
        t.set(b"k2", b"two");
        t.clear(b"k3");
        assert_eq!(t.get(b"k1")?, Some(b"new".to_vec()));
        assert_eq!(t.get(b"k3")?, None);
        let r = t.range(b"k", b"l", 0, false)?;
        assert_eq!(
            r,
            vec![
                (b"k1".to_vec(), b"new".to_vec()),
                (b"k2".to_vec(), b"two".to_vec())
            ]
        );
        let r = t.range(b"k", b"l", 1, true)?;
        assert_eq!(keys(r), vec![b"k2".to_vec()]);
        Ok::<_, StoreError>(())
    })
    .expect("txn");
    transact(store, |t| {
        assert_eq!(t.get(b"k2")?, Some(b"two".to_vec()), "committed");
        Ok::<_, StoreError>(())
    })
    .expect("txn");
}

fn clear_range_then_write(store: &dyn MetaStore) {
    put_all(
        store,
        &[(b"r1", b"1"), (b"r2", b"2"), (b"r3", b"3"), (b"s", b"s")],
    );
    transact(store, |t| {
        t.set(b"r25", b"pending");
        t.clear_range(b"r1", b"r3");
        t.set(b"r2", b"rewritten");
        assert_eq!(
            keys(t.range(b"r", b"t", 0, false)?),
            vec![b"r2".to_vec(), b"r3".to_vec(), b"s".to_vec()]
        );
        Ok::<_, StoreError>(())
    })
    .expect("txn");
    transact(store, |t| {
        assert_eq!(t.get(b"r1")?, None);
        assert_eq!(t.get(b"r25")?, None, "a write before the clear is cleared");
        assert_eq!(
            t.get(b"r2")?,
            Some(b"rewritten".to_vec()),
            "a write after the clear survives"
        );
        assert_eq!(t.get(b"r3")?, Some(b"3".to_vec()));
        Ok::<_, StoreError>(())
    })
    .expect("txn");
}

fn aborted_transaction_applies_nothing(store: &dyn MetaStore) {
    let result: std::result::Result<(), StoreError> = transact(store, |t| {
        t.set(b"aborted", b"1");
        Err(StoreError::Io("body failed".into()))
    });
    assert!(result.is_err());
    transact(store, |t| {
        assert_eq!(t.get(b"aborted")?, None);
        Ok::<_, StoreError>(())
    })
    .expect("txn");
}

/// A read-only view sees what was committed before it and nothing after,
/// and a body that writes through one fails without writing.
fn read_only_views(store: &dyn MetaStore) {
    put_all(store, &[(b"ro-a", b"1"), (b"ro-b", b"1")]);
    let view = store.snapshot().expect("snapshot");
    transact(store, |t| {
        t.set(b"ro-a", b"2");
        t.set(b"ro-b", b"2");
        Ok::<_, StoreError>(())
    })
    .expect("txn");
    let has_views = view.is_some();
    if let Some(mut view) = view {
        assert_eq!(view.get(b"ro-a").expect("get"), Some(b"1".to_vec()));
        let values: Vec<Vec<u8>> = view
            .range(b"ro-", b"ro.", 0, false)
            .expect("range")
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            values,
            vec![b"1".to_vec(), b"1".to_vec()],
            "a view is one point in time"
        );
        assert!(!view.wrote());
    }
    let now = read_only(store, |t| t.get(b"ro-b")).expect("read");
    assert_eq!(now, Some(b"2".to_vec()), "a new view sees the last commit");
    let writing: std::result::Result<(), StoreError> = read_only(store, |t| {
        t.set(b"ro-c", b"1");
        Ok(())
    });
    assert!(
        writing.is_err(),
        "a write through a read-only view must fail (views: {has_views})"
    );
    let after = read_only(store, |t| t.get(b"ro-c")).expect("read");
    assert_eq!(after, None);
}

/// A conflict that the body itself reports (as a read inside it would) runs
/// the body again on a fresh transaction; what the failed attempt wrote is
/// not applied.
fn conflict_in_body_is_retried(store: &dyn MetaStore) {
    let mut attempts = 0;
    let value = transact(store, |t| {
        attempts += 1;
        t.set(b"retry/attempt", &[attempts]);
        if attempts == 1 {
            t.set(b"retry/only-first", b"x");
            return Err(StoreError::Conflict);
        }
        Ok::<_, StoreError>(attempts)
    })
    .expect("retried transaction");
    assert_eq!(value, 2);
    transact(store, |t| {
        assert_eq!(t.get(b"retry/attempt")?, Some(vec![2]));
        assert_eq!(t.get(b"retry/only-first")?, None);
        Ok::<_, StoreError>(())
    })
    .expect("read back");
}

fn atomic_add_counts(store: &dyn MetaStore) {
    transact(store, |t| {
        t.atomic_add(b"ctr", 5)?;
        t.atomic_add(b"ctr", -2)?;
        assert_eq!(decode_counter(t.get(b"ctr")?.as_deref()), 3);
        Ok::<_, StoreError>(())
    })
    .expect("txn");
}

fn concurrent_increments_are_serializable(store: Arc<dyn MetaStore>) {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..250 {
                    transact(store.as_ref(), |t: &mut dyn KvTxn| -> Result<()> {
                        let n = decode_counter(t.get(b"rmw")?.as_deref());
                        t.set(b"rmw", &(n + 1).to_le_bytes());
                        Ok(())
                    })
                    .expect("increment");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let n = transact(store.as_ref(), |t| {
        Ok::<_, StoreError>(decode_counter(t.get(b"rmw")?.as_deref()))
    })
    .expect("read");
    assert_eq!(n, 1000, "read-modify-write lost updates");
}

fn large_values_and_binary_keys(store: &dyn MetaStore) {
    let big = vec![7u8; 90 * 1024];
    let key = [0u8, 255, 0, 1];
    put_all(store, &[(&key, &big)]);
    transact(store, |t| {
        assert_eq!(t.get(&key)?.map(|v| v.len()), Some(big.len()));
        Ok::<_, StoreError>(())
    })
    .expect("txn");
}

fn transaction_size_limits(store: &dyn MetaStore) {
    let too_large = |r: Result<()>| matches!(r, Err(StoreError::TooLarge(_)));
    let value = vec![3u8; 95_000];
    // 110 values of 95 kB: 10.45 MB, over the limit; nothing is applied.
    let over = transact(store, |t| {
        for i in 0..110u32 {
            t.set(&[b"big".as_slice(), &i.to_be_bytes()].concat(), &value);
        }
        Ok::<_, StoreError>(())
    });
    assert!(too_large(over), "a 10.45 MB transaction was accepted");
    let applied = transact(store, |t| t.get(b"big\0\0\0\0")).expect("read");
    assert!(
        applied.is_none(),
        "a refused transaction left writes behind"
    );
    // 100 of them (9.5 MB) commit.
    transact(store, |t| {
        for i in 0..100u32 {
            t.set(&[b"big".as_slice(), &i.to_be_bytes()].concat(), &value);
        }
        Ok::<_, StoreError>(())
    })
    .expect("9.5 MB fits");
    let big_value = vec![1u8; 100_001];
    assert!(too_large(transact(store, |t| {
        t.set(b"v", &big_value);
        Ok(())
    })));
    let big_key = vec![2u8; 10_001];
    assert!(too_large(transact(store, |t| {
        t.set(&big_key, b"x");
        Ok(())
    })));
}

fn get_many_in_order_with_own_writes(store: &dyn MetaStore) {
    put_all(
        store,
        &[(b"m1", b"one"), (b"m2", b"two"), (b"m3", b"three")],
    );
    transact(store, |t| {
        t.set(b"m2", b"changed");
        t.clear(b"m3");
        t.set(b"m4", b"new");
        let wanted: Vec<Vec<u8>> = [&b"m4"[..], b"m3", b"absent", b"m1", b"m2", b"m1"]
            .iter()
            .map(|k| k.to_vec())
            .collect();
        let got = t.get_many(&wanted)?;
        let expected: Vec<Option<Vec<u8>>> = vec![
            Some(b"new".to_vec()),
            None,
            None,
            Some(b"one".to_vec()),
            Some(b"changed".to_vec()),
            Some(b"one".to_vec()),
        ];
        assert_eq!(got, expected);
        assert!(t.get_many(&[])?.is_empty());
        Ok::<_, StoreError>(())
    })
    .expect("txn");
}

/// The largest key and values dfs-meta itself writes, from the limits it
/// enforces (names, extended attributes, symlink targets, inline chunks),
/// written and read back in one transaction: they must fit every backend,
/// FoundationDB's 10 kB keys and 100 kB values first. Returns the sizes.
fn largest_records_fit(store: &dyn MetaStore) -> (usize, usize) {
    use dfs_proto::{ChunkRecord, InodeRecord, XATTR_NAME_MAX, XATTR_SIZE_MAX};
    use prost::Message;
    let name = vec![b'n'; crate::namespace::NAME_MAX];
    let xattr_name = vec![b'x'; XATTR_NAME_MAX];
    let keys = [
        crate::keys::dirent(u64::MAX, &name),
        crate::keys::xattr(u64::MAX, &xattr_name),
    ];
    let inode = InodeRecord {
        symlink_target: vec![b's'; 4096],
        ..Default::default()
    }
    .encode_to_vec();
    let inline_chunk = ChunkRecord {
        raw_len: u32::MAX,
        stored_len: u32::MAX,
        inline_data: vec![0xa5; dfs_core::inline::MAX_INLINE_BYTES],
        state: 1,
        zero_since_ns: i64::MAX,
        dead_since_ns: i64::MAX,
        ..Default::default()
    }
    .encode_to_vec();
    let values = [vec![0x5a; XATTR_SIZE_MAX], inode, inline_chunk];
    transact(store, |t| {
        for (i, v) in values.iter().enumerate() {
            t.set(&keys[i % keys.len()], v);
            assert_eq!(t.get(&keys[i % keys.len()])?.as_ref(), Some(v));
        }
        for k in &keys {
            t.set(k, b"last");
        }
        Ok::<_, StoreError>(())
    })
    .expect("the largest records dfs-meta writes");
    let key = keys.iter().map(Vec::len).max().unwrap_or(0);
    let value = values.iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        key < 10_000 && value < 100_000,
        "key {key} B, value {value} B"
    );
    (key, value)
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            #[allow(unused)]
            fn make() -> (Arc<dyn MetaStore>, Option<tempfile::TempDir>) {
                $make
            }

            #[test]
            fn ordering_and_range_limits() {
                super::ordering_and_range_limits(make().0.as_ref());
            }
            #[test]
            fn reads_see_own_writes() {
                super::reads_see_own_writes(make().0.as_ref());
            }
            #[test]
            fn clear_range_then_write() {
                super::clear_range_then_write(make().0.as_ref());
            }
            #[test]
            fn aborted_transaction_applies_nothing() {
                super::aborted_transaction_applies_nothing(make().0.as_ref());
            }
            #[test]
            fn conflict_in_body_is_retried() {
                super::conflict_in_body_is_retried(make().0.as_ref());
            }
            #[test]
            fn read_only_views() {
                super::read_only_views(make().0.as_ref());
            }
            #[test]
            fn atomic_add_counts() {
                super::atomic_add_counts(make().0.as_ref());
            }
            #[test]
            fn concurrent_increments_are_serializable() {
                let (store, _dir) = make();
                super::concurrent_increments_are_serializable(store);
            }
            #[test]
            fn transaction_size_limits() {
                super::transaction_size_limits(make().0.as_ref());
            }
            #[test]
            fn large_values_and_binary_keys() {
                super::large_values_and_binary_keys(make().0.as_ref());
            }
            #[test]
            fn get_many_in_order_with_own_writes() {
                super::get_many_in_order_with_own_writes(make().0.as_ref());
            }
            #[test]
            fn largest_records_fit() {
                super::largest_records_fit(make().0.as_ref());
            }
        }
    };
}

conformance!(memory, (Arc::new(MemStore::default()), None));
conformance!(rocksdb, {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn MetaStore> = Arc::new(RocksStore::open(dir.path()).expect("open"));
    (store, Some(dir))
});

#[test]
fn rocksdb_persists_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = RocksStore::open(dir.path()).expect("open");
        put_all(&store, &[(b"persist", b"yes")]);
    }
    let store = RocksStore::open(dir.path()).expect("reopen");
    transact(&store, |t| {
        assert_eq!(t.get(b"persist")?, Some(b"yes".to_vec()));
        Ok::<_, StoreError>(())
    })
    .expect("txn");
}

/// Commits written over recycled write-ahead logs (the store keeps old
/// logs to write over in place) are all there after each reopen: several
/// memtables' worth of staged-size values per round, and RocksDB's own log
/// says each round wrote into recycled logs.
#[test]
fn rocksdb_recycled_logs_keep_every_commit_across_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let value = |round: u8, i: u32| vec![round ^ (i as u8); 96 * 1024];
    for round in 0..3u8 {
        {
            let store = RocksStore::open(dir.path()).expect("open");
            for i in 0..100u32 {
                let key = format!("r{round}-{i:03}");
                put_all(&store, &[(key.as_bytes(), &value(round, i))]);
            }
        }
        let info_log = std::fs::read_to_string(dir.path().join("LOG")).expect("RocksDB's LOG");
        assert!(
            info_log.contains("from recycle list"),
            "round {round} wrote no recycled log"
        );
        let store = RocksStore::open(dir.path()).expect("reopen");
        transact(&store, |t| {
            for earlier in 0..=round {
                for i in 0..100u32 {
                    let key = format!("r{earlier}-{i:03}");
                    assert_eq!(t.get(key.as_bytes())?, Some(value(earlier, i)), "{key}");
                }
            }
            Ok::<_, StoreError>(())
        })
        .expect("txn");
    }
}

/// A commit that deferred its sync is readable at once and waits for a
/// sync; a synced commit after it covers it (RocksDB syncs its log in
/// order), and it is there after a reopen.
#[test]
fn rocksdb_deferred_commits_wait_for_a_sync_and_persist() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = RocksStore::open(dir.path()).expect("open");
        let deferred = |key: &'static [u8]| {
            transact(&store, |t| {
                t.defer_sync();
                t.set(key, b"v");
                Ok::<_, StoreError>(())
            })
            .expect("deferred commit")
        };
        deferred(b"a");
        assert!(store.has_deferred());
        store.sync().expect("sync");
        assert!(!store.has_deferred());
        deferred(b"b");
        put_all(&store, &[(b"c", b"v")]);
        assert!(
            !store.has_deferred(),
            "a synced commit covers the ones before it"
        );
        deferred(b"d");
        assert!(store.has_deferred());
    }
    let store = RocksStore::open(dir.path()).expect("reopen");
    transact(&store, |t| {
        for key in [&b"a"[..], b"b", b"c", b"d"] {
            assert_eq!(t.get(key)?, Some(b"v".to_vec()), "{key:?}");
        }
        Ok::<_, StoreError>(())
    })
    .expect("txn");
}

/// FoundationDB, when `FDB_CLUSTER_FILE` names a running cluster. Each test
/// works under its own random key prefix (the store's own prefix, so that
/// is tested too), cleared before and after, so it never touches anything
/// else in the cluster.
#[cfg(feature = "fdb")]
mod fdb_support {
    use super::super::{BodyOutcome, FdbStore, KvTxn, MetaStore, StoreError, Transaction};
    use std::sync::Arc;

    /// A FoundationDB store under a fresh prefix, wiped when dropped.
    pub struct Scratch(FdbStore);

    impl Drop for Scratch {
        fn drop(&mut self) {
            self.0.wipe().expect("wipe the test prefix");
        }
    }

    impl MetaStore for Scratch {
        fn begin(&self) -> Result<Box<dyn Transaction + '_>, StoreError> {
            self.0.begin()
        }
        fn run(
            &self,
            body: &mut dyn FnMut(&mut dyn KvTxn) -> BodyOutcome,
        ) -> Result<bool, StoreError> {
            self.0.run(body)
        }
        fn name(&self) -> &'static str {
            self.0.name()
        }
    }

    /// The store under test, or `None` (and a note) without a cluster.
    pub fn store() -> Option<Arc<dyn MetaStore>> {
        let Ok(cluster_file) = std::env::var("FDB_CLUSTER_FILE") else {
            eprintln!("FDB_CLUSTER_FILE is not set: FoundationDB conformance test not run");
            return None;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let prefix = format!("dfs-conformance/{nanos}-{}/", std::process::id());
        let fdb = FdbStore::open(&cluster_file, prefix.as_bytes()).expect("open FoundationDB");
        fdb.wipe().expect("wipe the test prefix");
        Some(Arc::new(Scratch(fdb)))
    }
}

#[cfg(feature = "fdb")]
mod foundationdb {
    use super::*;

    macro_rules! fdb_test {
        ($name:ident, $body:expr) => {
            #[test]
            fn $name() {
                let Some(store) = fdb_support::store() else {
                    return;
                };
                #[allow(clippy::redundant_closure_call)]
                ($body)(store);
            }
        };
    }

    fdb_test!(ordering_and_range_limits, |s: Arc<dyn MetaStore>| {
        super::ordering_and_range_limits(s.as_ref())
    });
    fdb_test!(reads_see_own_writes, |s: Arc<dyn MetaStore>| {
        super::reads_see_own_writes(s.as_ref())
    });
    fdb_test!(clear_range_then_write, |s: Arc<dyn MetaStore>| {
        super::clear_range_then_write(s.as_ref())
    });
    fdb_test!(aborted_transaction_applies_nothing, |s: Arc<
        dyn MetaStore,
    >| {
        super::aborted_transaction_applies_nothing(s.as_ref())
    });
    fdb_test!(conflict_in_body_is_retried, |s: Arc<dyn MetaStore>| {
        super::conflict_in_body_is_retried(s.as_ref())
    });
    fdb_test!(atomic_add_counts, |s: Arc<dyn MetaStore>| {
        super::atomic_add_counts(s.as_ref())
    });
    fdb_test!(
        concurrent_increments_are_serializable,
        super::concurrent_increments_are_serializable
    );
    fdb_test!(large_values_and_binary_keys, |s: Arc<dyn MetaStore>| {
        super::large_values_and_binary_keys(s.as_ref())
    });
    fdb_test!(read_only_views, |s: Arc<dyn MetaStore>| {
        super::read_only_views(s.as_ref())
    });
    fdb_test!(transaction_size_limits, |s: Arc<dyn MetaStore>| {
        super::transaction_size_limits(s.as_ref())
    });
    fdb_test!(get_many_in_order_with_own_writes, |s: Arc<
        dyn MetaStore,
    >| {
        super::get_many_in_order_with_own_writes(s.as_ref())
    });

    /// Figures, printed (run with --nocapture): the largest key and value
    /// dfs-meta writes, and what concurrent reads inside one transaction
    /// save against reading one key after another, for the ~2,000 dedup
    /// records a 64 MiB flush commit reads.
    #[test]
    fn figures_key_value_sizes_and_concurrent_reads() {
        let Some(store) = fdb_support::store() else {
            return;
        };
        let (key, value) = super::largest_records_fit(store.as_ref());
        println!(
            "figures: largest key dfs-meta writes {key} B (FoundationDB allows 10,000), largest value {value} B (allows 100,000)"
        );
        const KEYS: usize = 2_000;
        let keys: Vec<Vec<u8>> = (0..KEYS)
            .map(|i| [&b"H"[..], &[0x11; 28], &(i as u32).to_be_bytes()].concat())
            .collect();
        for batch in keys.chunks(500) {
            transact(store.as_ref(), |t| {
                for k in batch {
                    t.set(k, &[0x42; 150]);
                }
                Ok::<_, StoreError>(())
            })
            .expect("write the records");
        }
        let mut one_by_one = Vec::new();
        let mut concurrent = Vec::new();
        for _ in 0..3 {
            let started = std::time::Instant::now();
            transact(store.as_ref(), |t| {
                for k in &keys {
                    assert!(t.get(k)?.is_some());
                }
                Ok::<_, StoreError>(())
            })
            .expect("sequential reads");
            one_by_one.push(started.elapsed().as_secs_f64() * 1e3);
            let started = std::time::Instant::now();
            transact(store.as_ref(), |t| {
                assert!(t.get_many(&keys)?.iter().all(Option::is_some));
                Ok::<_, StoreError>(())
            })
            .expect("concurrent reads");
            concurrent.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "figures: {KEYS} reads of 150 B in one transaction: one after another {:.1} ms, all in flight at once {:.1} ms (median of 3)",
            median(&mut one_by_one),
            median(&mut concurrent)
        );
    }
}
