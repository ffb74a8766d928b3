//! A real cluster on loopback: one dfs-meta, nine dfs-servers in three
//! zones of three racks, Reed-Solomon 6+3, mounted with FUSE.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use dfs_core::chunker;
use dfs_core::fingerprint::Fingerprint;

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats has no {key}: {v}"))
}

fn verify_all(local: &Path, mnt: &Path) {
    sh(&format!(
        "diff -r --no-dereference {}/tree {}/tree",
        local.display(),
        mnt.display()
    ));
    for name in ["a.bin", "b.bin", "big.bin", "victim.bin"] {
        sh(&format!(
            "cmp {}/{name} {}/{name}",
            local.display(),
            mnt.display()
        ));
    }
}

/// Flips one payload byte of a data shard of `fp`'s chunk on the first
/// server holding one; returns (server index, shard index).
fn corrupt_a_data_shard(cluster: &mut TestCluster, fp: &Fingerprint) -> (usize, u8) {
    for i in 0..cluster.specs.len() {
        cluster.servers[i].stop();
        let store = dfs_server::ShardStore::open(&cluster.specs[i].data).expect("open shard store");
        for index in 0u8..6 {
            if let Some(mut value) = store.raw_get_value(fp, index).expect("raw get") {
                let at = dfs_server::store::VALUE_HEADER_LEN
                    + 10.min(value.len() - dfs_server::store::VALUE_HEADER_LEN - 1);
                value[at] ^= 0x40;
                store.raw_put_value(fp, index, &value).expect("raw put");
                drop(store);
                cluster.restart_server(i);
                return (i, index);
            }
        }
        drop(store);
        cluster.restart_server(i);
    }
    panic!("no server holds a data shard of {fp}");
}

#[test]
fn namespace_operations_on_a_cluster() {
    let cluster = TestCluster::start(1, 3);
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    namespace_checks(&m.path);
}

/// A `consistency=eventual` mount answers lookups of names absent from a
/// directory it made by itself (a tree copy's lookup before each create):
/// a name another client adds may stay unseen (up to the 30 s TTL) until
/// this mount's own next change there shows it someone else was there, and
/// then it is found at once. A default (`read-own`, close-to-open) mount
/// never guesses: a file another client closed opens at once.
/// Namespace changes commit without waiting for the disk: fsync of a clean
/// file and of a directory sync them, and a killed dfs-meta keeps them.
#[test]
fn names_other_clients_add_are_found_and_unsynced_changes_survive() {
    let mut cluster = TestCluster::start(1, 3);
    let a = TestMount::start(&cluster.meta_addr(), &["consistency=eventual"]);
    let b = TestMount::start(&cluster.meta_addr(), &[]);
    let (in_a, in_b) = (a.path.join("d"), b.path.join("d"));
    fs::create_dir(&in_a).expect("mkdir");
    fs::write(in_a.join("mine"), b"a").expect("create");
    fs::write(in_b.join("theirs"), b"b").expect("create through b");
    assert!(
        !in_a.join("theirs").exists(),
        "answered from A's view of d, without asking dfs-meta"
    );
    // A's next change sees B's: from then on A asks dfs-meta.
    fs::write(in_a.join("again"), b"a").expect("create");
    assert_eq!(fs::read(in_a.join("theirs")).expect("read at once"), b"b");
    fs::write(in_b.join("later"), b"b").expect("create through b");
    assert_eq!(fs::read(in_a.join("later")).expect("read at once"), b"b");
    // The default mount made a directory too, and still sees A's files.
    fs::create_dir(in_b.join("from-b")).expect("mkdir through b");
    fs::write(in_b.join("from-b/1"), b"1").expect("create through b");
    fs::write(in_a.join("from-b/2"), b"2").expect("create through a");
    assert_eq!(
        fs::read(in_b.join("from-b/2")).expect("close-to-open"),
        b"2"
    );
    // Renames and removals keep A's own view right.
    fs::create_dir(in_a.join("e")).expect("mkdir");
    fs::write(in_a.join("e/x"), b"x").expect("create");
    fs::rename(in_a.join("e/x"), in_a.join("e/y")).expect("rename");
    assert!(!in_a.join("e/x").exists() && in_a.join("e/y").exists());
    fs::remove_file(in_a.join("e/y")).expect("unlink");
    assert!(!in_a.join("e/y").exists());
    fs::write(in_a.join("e/y"), b"y2").expect("create again");
    assert_eq!(fs::read(in_b.join("e/y")).expect("read through b"), b"y2");

    // fsync of a clean file and of a directory (dfs-meta's Sync).
    fs::write(in_a.join("empty"), b"").expect("create");
    fs::File::open(in_a.join("empty"))
        .and_then(|f| f.sync_all())
        .expect("fsync a clean file");
    fs::File::open(&in_a)
        .and_then(|f| f.sync_all())
        .expect("fsync a directory");
    // Unsynced namespace changes are in dfs-meta's log: a crash of the
    // process loses none of them.
    fs::create_dir(in_a.join("made-last")).expect("mkdir");
    cluster.restart_meta();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match fs::metadata(in_b.join("made-last")) {
            Ok(m) if m.is_dir() => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "mkdir lost with dfs-meta killed: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_dead_metadata_server_listed_first_is_skipped() {
    let cluster = TestCluster::start(1, 3);
    let source = format!("127.0.0.1:{},{}", free_port(), cluster.meta_addr());
    let m = TestMount::start(&source, &[]);
    let data = random_bytes(300_000, 5);
    fs::write(m.path.join("f"), &data).expect("write");
    fs::create_dir(m.path.join("d")).expect("mkdir");
    assert!(fs::read(m.path.join("f")).expect("read") == data);
}

/// Small files are kept inline in the metadata store: counted apart by
/// `dfs stats`, and read back with every chunk server stopped. A bigger,
/// incompressible file beside them still goes to the servers.
/// A create whose commit happened but whose outcome the metadata server
/// could not tell (FoundationDB's `commit_unknown_result`, injected here
/// after every third create) is retried by the client and answered with
/// the inode it made: no EEXIST, no duplicate, no lost name. Runs on
/// RocksDB here and on FoundationDB under scripts/fdb-tests.sh.
#[test]
fn a_create_whose_commit_outcome_was_unknown_is_not_lost_or_doubled() {
    let args = vec!["--inject-unknown-commit-every".to_string(), "3".to_string()];
    let cluster = TestCluster::start_full(1, 3, |_| Vec::new(), args);
    let mount = TestMount::start(&cluster.meta_addr(), &[]);
    let dir = mount.path.join("d");
    std::fs::create_dir(&dir).expect("mkdir");
    for i in 0..30 {
        let path = dir.join(format!("f{i}"));
        std::fs::write(&path, format!("file {i}")).expect("create and write");
        std::fs::create_dir(dir.join(format!("sub{i}"))).expect("mkdir");
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..30)
        .flat_map(|i| [format!("f{i}"), format!("sub{i}")])
        .collect();
    want.sort();
    assert_eq!(names, want);
    for i in 0..30 {
        let got = std::fs::read_to_string(dir.join(format!("f{i}"))).expect("read");
        assert_eq!(got, format!("file {i}"));
    }
    let (_, report) = cluster.dfs_json(&["fsck", "--orphan-grace", "0"]);
    assert_eq!(report["clean"], true, "fsck: {report}");
}

#[test]
fn small_files_live_in_the_metadata_store() {
    let local = tempfile::tempdir().expect("tempdir");
    let lp = local.path();
    let mut cluster = TestCluster::start(1, 3);
    let mut m = TestMount::start(&cluster.meta_addr(), &[]);
    fs::create_dir(lp.join("src")).expect("mkdir");
    fs::create_dir(m.path.join("src")).expect("mkdir");
    let files = 60u64;
    for i in 0..files {
        // Source-like text of 1-20 KiB, and a few incompressible files of
        // up to 8 KiB: each stores in 8 KiB or less.
        let data = if i % 10 == 9 {
            random_bytes(1 + (i as usize * 131) % 8192, i)
        } else {
            format!("fn item_{i}() -> u64 {{ {i} * 3 }} // a line of code\n")
                .repeat(20 + i as usize * 7)
                .into_bytes()
        };
        fs::write(lp.join(format!("src/f{i}.rs")), &data).expect("write local");
        fs::write(m.path.join(format!("src/f{i}.rs")), &data).expect("write");
    }
    fs::write(
        m.path.join("f1-copy.rs"),
        fs::read(lp.join("src/f1.rs")).expect("read"),
    )
    .expect("write a copy");
    fs::write(m.path.join("big.bin"), random_bytes(1 << 20, 3)).expect("write big");
    let stats = cluster.stats();
    eprintln!("figures: dfs stats {stats}");
    assert_eq!(u(&stats, "inline_chunks"), files, "{stats}");
    assert!(u(&stats, "inline_bytes") > 0);
    assert!(
        u(&stats, "logical_bytes") > u(&stats, "unique_bytes"),
        "the copy shares its inline chunk"
    );
    assert!(
        u(&stats, "chunks") > files,
        "the big file's chunks went to the chunk servers"
    );
    m.unmount();
    let (ok, fsck) = cluster.dfs_json(&["fsck", "--verify"]);
    assert!(ok, "fsck: {fsck}");
    assert_eq!(u(&fsck, "lost_chunks"), 0, "{fsck}");
    assert!(u(&fsck, "healthy_chunks") > files, "{fsck}");

    for i in 0..cluster.servers.len() {
        cluster.servers[i].stop();
    }
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    sh(&format!(
        "diff -r {}/src {}/src && cmp {}/src/f1.rs {}/f1-copy.rs",
        lp.display(),
        m.path.display(),
        lp.display(),
        m.path.display()
    ));
}

/// A chunk server that was down while garbage collection deleted a dead
/// chunk keeps that chunk's shards. A client may not replace a stored
/// shard with other bytes (issue 19), but these are garbage: when the
/// chunk is written again, coded with another codec, dfs-meta's put
/// tokens let the upload replace them (only shards written before the
/// chunk died), and the write succeeds on all nine servers.
#[test]
fn a_dead_chunks_leftovers_do_not_block_it_coded_anew() {
    let mut cluster = TestCluster::start_full(
        3,
        3,
        |_| Vec::new(),
        vec!["--clock-skew".into(), "0".into()],
    );
    cluster.wait_servers_up(9);
    let meta = cluster.meta_addr();
    // Text both codecs shrink, each to its own bytes: well over the
    // inline size, so it goes to the chunk servers.
    let data: Vec<u8> = (0..3000u32)
        .flat_map(|i| format!("line {i}: {} {}\n", i * 7919 % 1000, i % 13).into_bytes())
        .chain(random_bytes(40 << 10, 11))
        .collect();
    let mut m = TestMount::start(&meta, &["codec=lz4"]);
    fs::write(m.path.join("f"), &data).expect("write");
    fs::remove_file(m.path.join("f")).expect("rm");
    m.unmount();
    // Dead now; server 0 misses the deletion and keeps its shards.
    cluster.kill_server(0);
    let (ok, gc) = cluster.dfs_json(&["gc", "--grace", "0", "--clock-skew", "0"]);
    assert!(ok, "gc: {gc}");
    eprintln!("gc with server 0 down: {gc}");
    assert!(u(&gc, "shards_deleted") > 0, "{gc}");
    assert!(
        u(&gc, "chunks_pending") > 0,
        "the dead entry waits for server 0: {gc}"
    );
    std::thread::sleep(Duration::from_millis(10));
    cluster.restart_server(0);
    cluster.wait_servers_up(9);

    let m = TestMount::start(&meta, &["codec=zstd"]);
    fs::write(m.path.join("again"), &data).expect("the same bytes written again, coded anew");
    drop(m);
    // Stored where it belongs: server 0 took its shards (a refusal would
    // have moved them to a server holding another shard of the chunk).
    let log = cluster.log("server-0");
    assert!(log.contains("shard store opened"), "server 0's log: {log}");
    assert!(
        !log.contains("refused a client's put"),
        "server 0 refused the new upload: {log}"
    );
    let m = TestMount::start(&meta, &[]);
    assert!(fs::read(m.path.join("again")).expect("read") == data);
    drop(m);
    let (ok, fsck) = cluster.dfs_json(&["fsck", "--verify"]);
    assert!(ok, "fsck: {fsck}");
    assert_eq!(u(&fsck, "lost_chunks"), 0, "{fsck}");
    assert_eq!(u(&fsck, "under_protected_chunks"), 0, "{fsck}");
}

#[test]
fn cluster_end_to_end() {
    let local = tempfile::tempdir().expect("tempdir");
    let lp = local.path();
    let mut cluster = TestCluster::start(3, 3);
    let status = cluster.status();
    assert_eq!(
        status["servers"].as_array().map(Vec::len),
        Some(9),
        "{status}"
    );

    let mut m = TestMount::start(&cluster.meta_addr(), &[]);
    let mnt = m.path.clone();

    // 1. A directory tree copied in reads back identical.
    make_tree(&lp.join("tree"), 400);
    sh(&format!(
        "cp -a {}/tree {}/tree",
        lp.display(),
        mnt.display()
    ));
    sh(&format!(
        "diff -r --no-dereference {}/tree {}/tree",
        lp.display(),
        mnt.display()
    ));

    // 2. The same file under two names costs (almost) nothing more.
    let a = random_bytes(16 << 20, 42);
    fs::write(lp.join("a.bin"), &a).expect("write local a");
    fs::write(lp.join("b.bin"), &a).expect("write local b");
    fs::write(mnt.join("a.bin"), &a).expect("write a");
    let before = cluster.stats();
    sh(&format!(
        "cp {}/a.bin {}/b.bin",
        mnt.display(),
        mnt.display()
    ));
    let after = cluster.stats();
    let unique_growth = u(&after, "unique_bytes") - u(&before, "unique_bytes");
    eprintln!(
        "figures: second copy of a {} byte file added {unique_growth} unique bytes",
        a.len()
    );
    assert!(
        unique_growth * 100 < a.len() as u64,
        "second copy added {unique_growth} unique bytes"
    );
    assert_eq!(
        u(&after, "logical_bytes") - u(&before, "logical_bytes"),
        a.len() as u64
    );

    // 3. A 1 KiB overwrite in the middle of a 200 MiB file stores only a few chunks.
    let big = random_bytes(200 << 20, 7);
    fs::write(lp.join("big.bin"), &big).expect("write local big");
    drop(big);
    sh(&format!(
        "cp {}/big.bin {}/big.bin",
        lp.display(),
        mnt.display()
    ));
    let before = cluster.stats();
    let patch = random_bytes(1024, 99);
    fs::write(lp.join("patch"), &patch).expect("patch");
    for target in [lp.join("big.bin"), mnt.join("big.bin")] {
        sh(&format!(
            "dd if={}/patch of={} bs=1 seek=$((100*1024*1024 + 12345)) conv=notrunc status=none",
            lp.display(),
            target.display()
        ));
    }
    let after = cluster.stats();
    // Chunks the overwrite stored: new index entries, live or not (the
    // replaced ones stay in the index, unreferenced, until GC).
    let written = |s: &serde_json::Value| u(s, "chunks") + u(s, "unreferenced_chunks");
    let written_bytes = |s: &serde_json::Value| u(s, "unique_bytes") + u(s, "unreferenced_bytes");
    let new_chunks = written(&after) - written(&before);
    let new_unique = written_bytes(&after) - written_bytes(&before);
    eprintln!("figures: 1 KiB overwrite in a 200 MiB file added {new_chunks} chunks, {new_unique} unique bytes");
    assert!(new_chunks <= 6, "1 KiB overwrite added {new_chunks} chunks");
    assert!(
        new_unique <= 6 * 128 * 1024,
        "1 KiB overwrite added {new_unique} unique bytes"
    );
    sh(&format!(
        "cmp {}/big.bin {}/big.bin",
        lp.display(),
        mnt.display()
    ));

    // A file whose first chunk we can name, for the corruption check below.
    let victim = random_bytes(1 << 20, 1234);
    fs::write(lp.join("victim.bin"), &victim).expect("victim");
    fs::write(mnt.join("victim.bin"), &victim).expect("victim");
    let first_len = chunker::cut_lengths(&victim, true)[0];
    let victim_fp = Fingerprint::of(&victim[..first_len]);

    // Space figures are consistent: erasure coding stores 9/6 of the stored bytes.
    std::thread::sleep(Duration::from_secs(3)); // one heartbeat carries usage
    let stats = cluster.stats();
    // Inline chunks live in the metadata store, not on the servers.
    let (stored, raw) = (
        u(&stats, "stored_bytes") - u(&stats, "inline_bytes"),
        u(&stats, "raw_bytes"),
    );
    eprintln!("figures: dfs stats {stats}");
    assert!(
        raw >= stored * 14 / 10,
        "raw {raw} vs stored {stored}: shards missing?"
    );
    m.unmount();

    // 4. With 3 of 9 servers killed (one per zone), a cold client reads everything.
    for i in [0, 4, 8] {
        cluster.kill_server(i);
    }
    {
        let m = TestMount::start(&cluster.meta_addr(), &[]);
        verify_all(lp, &m.path);
    }

    // 5. After every process restarts, the same holds.
    for i in [0, 4, 8] {
        cluster.restart_server(i);
    }
    cluster.restart_meta();
    cluster.wait_servers_up(9);
    {
        let m = TestMount::start(&cluster.meta_addr(), &[]);
        verify_all(lp, &m.path);
    }

    // 6. A flipped byte in a stored shard is detected, the read is still
    // right, and the shard is rewritten.
    let (server, index) = corrupt_a_data_shard(&mut cluster, &victim_fp);
    cluster.wait_servers_up(9);
    {
        let m = TestMount::start(&cluster.meta_addr(), &[]);
        sh(&format!(
            "cmp {}/victim.bin {}/victim.bin",
            lp.display(),
            m.path.display()
        ));
        std::thread::sleep(Duration::from_secs(2)); // repair runs in the background
    }
    cluster.servers[server].stop();
    let store = dfs_server::ShardStore::open(&cluster.specs[server].data).expect("reopen");
    assert!(
        store.get(&victim_fp, index).is_ok(),
        "corrupt shard {index} on server {server} was not repaired"
    );
    eprintln!("figures: corrupt shard {index} of chunk {victim_fp} on server {server} was detected and rewritten");
}

/// Small files are staged inline by their commit (no chunk server is
/// asked), then the staging worker moves their chunks to the servers in
/// Reed-Solomon shards; nothing changes for readers, and fsck is clean.
#[test]
fn small_files_are_staged_in_the_metadata_store_then_moved_to_the_servers() {
    let cluster = TestCluster::start_full(
        3,
        3,
        |_| Vec::new(),
        vec!["--stage-delay".into(), "12".into()],
    );
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    // And files whose chunks of random bytes store over the 96 KiB a
    // staged chunk may take: staged as halves.
    let files: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| 20_000 + i * 3_000)
        .chain([131_072, 190_000, 250_000])
        .enumerate()
        .map(|(i, len)| (format!("small{i}.bin"), random_bytes(len, i as u64)))
        .collect();
    for (name, data) in &files {
        fs::write(m.path.join(name), data).expect("write");
    }
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    // Long enough for a heartbeat (every 2 s) to report shards any server
    // took, not for the staging worker (12 s) to move any, even
    // on a machine so busy that the writes took seconds.
    std::thread::sleep(Duration::from_millis(2500));
    let staged = cluster.stats();
    // Random bytes do not compress: each file is one or two chunks of
    // 20-128 KB stored, over the 8 KiB inline limit, so all of it is staged
    // (chunks over 96 KiB as two halves).
    assert_eq!(u(&staged, "inline_bytes"), total, "staged: {staged}");
    assert!(
        u(&staged, "staged_bytes") >= total - u(&staged, "inline_chunks") * 8192,
        "staged: {staged}"
    );
    assert_eq!(
        u(&staged, "raw_bytes"),
        0,
        "nothing on the servers yet: {staged}"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let moved = loop {
        let s = cluster.stats();
        // What stays inline is what stores in 8 KiB or less (a file's
        // short last chunk): kept inline for good.
        // The servers' bytes come with their heartbeats.
        let on_servers = total - u(&s, "inline_bytes");
        if u(&s, "inline_bytes") <= u(&s, "inline_chunks") * 8192
            && u(&s, "staged_chunks") == 0
            && u(&s, "raw_bytes") >= on_servers * 3 / 2
        {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "never moved: {s}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(u(&moved, "stored_bytes"), total, "{moved}");
    // On the servers in 6+3 shards: raw is 9/6 of what is stored, give or
    // take each chunk's padding to a multiple of 6.
    let (raw, on_servers) = (u(&moved, "raw_bytes"), total - u(&moved, "inline_bytes"));
    assert!(
        raw >= on_servers * 3 / 2 && raw < on_servers * 3 / 2 + 64 * 9,
        "raw {raw} for {on_servers} stored on servers: {moved}"
    );

    // A mount that never saw the inline records reads the shards.
    let fresh = TestMount::start(&cluster.meta_addr(), &[]);
    for (name, data) in &files {
        assert_eq!(
            &fs::read(fresh.path.join(name)).expect("read"),
            data,
            "{name}"
        );
    }
    let (clean, report) = cluster.dfs_json(&["fsck", "--verify"]);
    assert!(clean, "fsck after staging: {report}");
    // A staged file removed before its turn never reaches the servers.
    fs::write(m.path.join("temporary.bin"), random_bytes(50_000, 99)).expect("write");
    fs::remove_file(m.path.join("temporary.bin")).expect("remove");
    let (ok, rows) = cluster.dfs_json(&["workers"]);
    assert!(ok, "dfs workers: {rows}");
    let runs = |rows: &serde_json::Value| {
        rows.as_array()
            .and_then(|w| w.iter().find(|w| w["name"] == "staging"))
            .and_then(|w| w["runs"].as_u64())
            .unwrap_or(0)
    };
    let before = runs(&rows);
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while runs(&cluster.dfs_json(&["workers"]).1) < before + 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "the staging worker stopped running"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        u(&cluster.stats(), "raw_bytes"),
        raw,
        "a removed staged file was moved"
    );
}
