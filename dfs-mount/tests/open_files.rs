//! Files that stay open while the world changes around them: unlinked or
//! replaced while open, changed by another client between two opens, and
//! flushes too large to commit at once.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

use common::*;

/// Waits until the metadata server's reference figures drop to zero (the
/// purge worker finishes large removals in the background).
fn wait_for_no_references(cluster: &TestCluster) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = cluster.stats();
        if stats["logical_bytes"].as_u64() == Some(0) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_unlinked_or_replaced_open_file_lives_until_its_last_close() {
    let cluster = TestCluster::start(1, 3);
    // A small write buffer: writes to the unlinked file must be flushed
    // to the cluster, not held in memory until the close.
    let m = TestMount::start(&cluster.meta_addr(), &["write_buffer=4M"]);
    let path = m.path.join("scratch");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create");
    let first = random_bytes(1 << 20, 1);
    f.write_all(&first).expect("write before unlink");
    fs::remove_file(&path).expect("unlink while open");
    assert!(!path.exists(), "the name is gone at once");
    let more = random_bytes(24 << 20, 2);
    f.write_all(&more).expect("write after unlink");
    f.sync_all().expect("fsync an unlinked file");
    let meta = f.metadata().expect("fstat");
    assert_eq!(meta.nlink(), 0, "an unlinked file has no links");
    assert_eq!(meta.len(), (first.len() + more.len()) as u64);
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_end(&mut back)
        .expect("read back through the handle");
    assert!(back[..first.len()] == first[..] && back[first.len()..] == more[..]);
    let stats = cluster.stats();
    assert!(
        stats["logical_bytes"].as_u64() >= Some(more.len() as u64),
        "the kept file's data is in the cluster, not only in memory: {stats}"
    );

    // Replaced by a rename while open: the old content stays readable.
    let target = m.path.join("target");
    let old = random_bytes(300_000, 3);
    fs::write(&target, &old).expect("write target");
    let reader = fs::File::open(&target).expect("open target");
    let new_path = m.path.join("new");
    fs::write(&new_path, b"replacement").expect("write new");
    fs::rename(&new_path, &target).expect("rename over the open file");
    let mut buf = vec![0u8; old.len()];
    reader
        .read_exact_at(&mut buf, 0)
        .expect("read replaced file");
    assert!(
        buf == old,
        "the replaced file's content changed under its reader"
    );
    assert_eq!(fs::read(&target).expect("read new"), b"replacement");

    // The last closes release both inodes and every reference.
    drop(f);
    drop(reader);
    fs::remove_file(&target).expect("rm");
    let stats = wait_for_no_references(&cluster);
    assert_eq!(
        stats["logical_bytes"].as_u64(),
        Some(0),
        "references left after the last close: {stats}"
    );
}

#[test]
fn an_open_on_one_client_sees_what_another_client_closed() {
    let cluster = TestCluster::start(1, 3);
    let a = TestMount::start(&cluster.meta_addr(), &[]);
    let b = TestMount::start(&cluster.meta_addr(), &[]);
    let (on_a, on_b) = (a.path.join("shared"), b.path.join("shared"));
    let v1 = random_bytes(200_000, 10);
    fs::write(&on_a, &v1).expect("write v1");
    // A keeps the file open all along (its state stays loaded).
    let holder = fs::File::open(&on_a).expect("open on a");
    let mut buf = vec![0u8; v1.len()];
    holder.read_exact_at(&mut buf, 0).expect("read v1");
    assert!(buf == v1);
    // B replaces the content (same length: no size change to hide behind).
    let v2 = random_bytes(v1.len(), 11);
    fs::OpenOptions::new()
        .write(true)
        .open(&on_b)
        .expect("open on b")
        .write_all(&v2)
        .expect("write v2");
    // A new open on A must see B's closed writes (close-to-open).
    let again = fs::read(&on_a).expect("read on a");
    assert!(
        again == v2,
        "a later open on another client read stale data"
    );
    drop(holder);
}

/// A client keeps the chunk map of a file it closed and, at the next open,
/// asks dfs-meta only whether the file changed: a file another client
/// rewrote in between must read as rewritten, an unchanged one as it was.
#[test]
fn a_reopened_file_reads_what_another_client_wrote_after_the_close() {
    let cluster = TestCluster::start(1, 3);
    let a = TestMount::start(&cluster.meta_addr(), &[]);
    let b = TestMount::start(&cluster.meta_addr(), &[]);
    // Kept inline (its map carries its bytes), and one on the servers.
    for (name, len) in [("small", 6_000), ("big", 300_000)] {
        let (on_a, on_b) = (a.path.join(name), b.path.join(name));
        let v1 = random_bytes(len, 20);
        fs::write(&on_a, &v1).expect("write v1 on a");
        assert!(fs::read(&on_a).expect("read v1 on a") == v1, "{name}: v1");
        // Same length: no size change to hide behind.
        let v2 = random_bytes(len, 21);
        fs::OpenOptions::new()
            .write(true)
            .open(&on_b)
            .expect("open on b")
            .write_all(&v2)
            .expect("write v2 on b");
        for round in 0..2 {
            assert!(
                fs::read(&on_a).expect("read on a") == v2,
                "{name}: open {round} on a read what it wrote before b's close"
            );
        }
        // And A's own rewrite after that.
        let v3 = random_bytes(len, 22);
        fs::write(&on_a, &v3).expect("write v3 on a");
        assert!(fs::read(&on_a).expect("read v3 on a") == v3, "{name}: v3");
        assert!(
            fs::read(&on_b).expect("read v3 on b") == v3,
            "{name}: v3 on b"
        );
    }
    // Kept maps are hollow: with a chunk cache too small for every file
    // written, the files whose bytes left it are read through their
    // entries, the others from the cache.
    let c = TestMount::start(&cluster.meta_addr(), &["cache_size=1M"]);
    let files: Vec<Vec<u8>> = (0..300).map(|i| random_bytes(6_000, 100 + i)).collect();
    for (i, data) in files.iter().enumerate() {
        fs::write(c.path.join(format!("many{i}")), data).expect("write");
    }
    for round in 0..2 {
        for (i, data) in files.iter().enumerate() {
            let read = fs::read(c.path.join(format!("many{i}"))).expect("read");
            assert!(read == *data, "many{i}, round {round}");
        }
    }
}

#[test]
fn a_name_another_client_creates_is_there_for_the_next_lookup_and_open() {
    let cluster = TestCluster::start(1, 3);
    let a = TestMount::start(&cluster.meta_addr(), &[]);
    let b = TestMount::start(&cluster.meta_addr(), &[]);
    // a looks the names up before they exist.
    assert!(!a.path.join("late").exists());
    assert!(!a.path.join("shared.log").exists());
    fs::write(b.path.join("late"), b"from b").expect("create on b");
    fs::write(b.path.join("shared.log"), b"b\n").expect("create on b");
    assert_eq!(fs::read(a.path.join("late")).expect("read on a"), b"from b");
    // A non-exclusive O_CREAT of a name that exists opens it (never
    // EEXIST), as a log shared by two machines does.
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(a.path.join("shared.log"))
        .expect("O_CREAT|O_APPEND of an existing name")
        .write_all(b"a\n")
        .expect("append on a");
    assert_eq!(
        fs::read(b.path.join("shared.log")).expect("read on b"),
        b"b\na\n"
    );
}

#[test]
fn scattered_writes_flush_in_bounded_groups_without_losing_any() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    // A 1 MiB write buffer makes every flush re-cut in 1 MiB groups.
    let m = TestMount::start(&source, &["write_buffer=1M"]);
    let path = m.path.join("f");
    let mut model = random_bytes(12 << 20, 20);
    fs::write(&path, &model).expect("write base");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    // 4 KiB every 40 KiB: each dirties a chunk, so the flush at close
    // re-cuts nearly the whole file, far more than one group holds.
    let mut offset = 1000u64;
    let mut seed = 30;
    while offset + 4096 < model.len() as u64 {
        let data = random_bytes(4096, seed);
        f.write_all_at(&data, offset).expect("scattered write");
        model[offset as usize..offset as usize + 4096].copy_from_slice(&data);
        offset += 40 * 1024;
        seed += 1;
    }
    // And an append past the end, in the same flush.
    let tail = random_bytes(3 << 20, 99);
    f.write_all_at(&tail, model.len() as u64).expect("append");
    model.extend_from_slice(&tail);
    f.sync_all().expect("fsync");
    drop(f);
    assert!(fs::read(&path).expect("read back") == model);
    // And from a fresh process on the same volume.
    drop(m);
    let m = TestMount::start(&source, &[]);
    assert!(fs::read(m.path.join("f")).expect("read after remount") == model);
}

#[test]
fn an_unlinked_open_file_of_a_killed_client_is_removed_after_its_lease() {
    let meta_args = ["--unlinked-timeout", "3", "--repair-interval", "1"]
        .map(String::from)
        .to_vec();
    let cluster = TestCluster::start_full(1, 3, |_| Vec::new(), meta_args);
    let mut m = TestMount::start(&cluster.meta_addr(), &[]);
    let path = m.path.join("held");
    fs::write(&path, random_bytes(3 << 20, 5)).expect("write");
    let held = fs::File::open(&path).expect("open");
    fs::remove_file(&path).expect("unlink while open");
    // Kept for the open handle.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.stats()["logical_bytes"].as_u64(), Some(3 << 20));
    // The client dies without closing: nobody renews the lease any more.
    m.proc.kill();
    drop(held);
    let stats = wait_for_no_references(&cluster);
    assert_eq!(
        stats["logical_bytes"].as_u64(),
        Some(0),
        "the dead client's unlinked file was never removed: {stats}"
    );
    assert!(
        cluster
            .log("meta")
            .contains("removed unlinked files whose clients stopped renewing them"),
        "{}",
        cluster.log("meta")
    );
}

#[test]
fn attributes_set_while_writing_reach_other_clients_with_the_data() {
    use std::fs::{FileTimes, Permissions};
    use std::os::unix::fs::{fchown, PermissionsExt};
    use std::time::SystemTime;

    let cluster = TestCluster::start(1, 3);
    let writer = TestMount::start(&cluster.meta_addr(), &[]);
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    // As `tar x` does: write, then utimensat, fchown and fchmod on the
    // open descriptor, then close.
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let data = random_bytes(10_000, 7);
    let mut f = fs::File::create(writer.path.join("extracted")).expect("create");
    f.write_all(&data).expect("write");
    f.set_times(FileTimes::new().set_modified(old))
        .expect("futimens");
    fchown(&f, Some(1234), Some(5678)).expect("fchown");
    f.set_permissions(Permissions::from_mode(0o640))
        .expect("fchmod");
    let here = f.metadata().expect("fstat before close");
    assert_eq!(
        (here.mode() & 0o7777, here.uid(), here.gid(), here.mtime()),
        (0o640, 1234, 5678, 1_500_000_000),
        "the writer sees its attributes at once"
    );
    assert_eq!(here.len(), data.len() as u64);
    drop(f);
    // The reader never looked the file up: nothing cached there.
    let there = fs::metadata(reader.path.join("extracted")).expect("stat on the reader");
    assert_eq!(
        (
            there.mode() & 0o7777,
            there.uid(),
            there.gid(),
            there.mtime()
        ),
        (0o640, 1234, 5678, 1_500_000_000),
        "another client sees them after the close"
    );
    assert_eq!(fs::read(reader.path.join("extracted")).expect("read"), data);

    // A write after an explicit time: the write's time wins, as on a
    // local file system. A set-user-ID mode is not held back.
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(writer.path.join("extracted"))
        .expect("reopen");
    f.write_all_at(b"more", 0).expect("write");
    f.set_times(FileTimes::new().set_modified(old))
        .expect("futimens");
    f.write_all_at(b"again", 4).expect("write after futimens");
    f.set_permissions(Permissions::from_mode(0o4750))
        .expect("fchmod with set-user-ID");
    drop(f);
    std::thread::sleep(Duration::from_millis(1_100)); // the reader's TTL
    let there = fs::metadata(reader.path.join("extracted")).expect("stat again");
    assert!(
        there.mtime() >= started,
        "mtime {} is the write's, not the explicit time set before it",
        there.mtime()
    );
    assert_eq!((there.mode() & 0o7777, there.uid()), (0o4750, 1234));
    let mut expected = data;
    expected[..9].copy_from_slice(b"moreagain");
    assert_eq!(
        fs::read(reader.path.join("extracted")).expect("read"),
        expected
    );
}

#[test]
fn a_write_behind_commit_carries_the_attributes_set_before_it() {
    use std::os::unix::fs::PermissionsExt;

    let cluster = TestCluster::start(1, 3);
    // A 4 MiB write buffer: flush groups of 4 MiB, write-behind from 2 MiB.
    let writer = TestMount::start(&cluster.meta_addr(), &["write_buffer=4M"]);
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    let mut f = fs::File::create(writer.path.join("log")).expect("create");
    f.write_all(&random_bytes(4096, 1)).expect("write");
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .expect("fchmod, held back with the buffered bytes");
    f.write_all(&random_bytes(3 << 20, 2))
        .expect("write past the write-behind mark");
    // Before the close: whatever of the data another client sees, it sees
    // with the mode set before it was written.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = fs::metadata(reader.path.join("log")).expect("stat on the reader");
        if seen.len() > 4096 {
            assert_eq!(
                seen.mode() & 0o7777,
                0o600,
                "{} bytes visible without the mode set before them",
                seen.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write-behind commit within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(f);
}
