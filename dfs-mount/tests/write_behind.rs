//! Write-behind: once a file has 32 MiB buffered, its flush runs in the
//! background while the writer goes on. Whatever else touches the file
//! (reads, overwrites, truncation, fsync, another handle) first waits for
//! that flush, and a flush that fails keeps its bytes for the next one.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use common::*;

const MIB: usize = 1 << 20;

/// 1 MiB block `i` of the test files: distinct for every `i`, so a block
/// committed at the wrong place or twice cannot go unnoticed.
fn block(i: usize) -> Vec<u8> {
    random_bytes(MIB, 1_000 + i as u64)
}

#[test]
fn reads_overwrites_and_truncation_during_write_behind_see_every_byte() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let path = m.path.join("big");
    let mut expected: Vec<u8> = Vec::new();
    let mut writer = fs::File::create(&path).expect("create");
    let reader = fs::File::open(&path).expect("open a second handle");
    // 160 MiB in 1 MiB writes: five write-behind flushes at least.
    for i in 0..160 {
        let b = block(i);
        writer.write_all(&b).expect("write");
        expected.extend_from_slice(&b);
        if i % 23 == 11 {
            // Through the other handle, from the client (not the kernel's
            // page cache): must wait for the flush in flight and see
            // buffered and committed bytes alike.
            fs::write("/proc/sys/vm/drop_caches", "1").expect("drop the page cache");
            let at = (i * 7919 * 131) % expected.len();
            let len = (3 * MIB).min(expected.len() - at);
            let mut got = vec![0u8; len];
            reader.read_exact_at(&mut got, at as u64).expect("read");
            assert!(
                got == expected[at..at + len],
                "read at {at} after block {i}"
            );
            let size = fs::metadata(&path).expect("stat").len();
            assert_eq!(size, expected.len() as u64, "size after block {i}");
        }
        if i % 31 == 17 {
            // Overwrite bytes that a write-behind flush may hold right now.
            let back = (20 * MIB).min(expected.len() - 100_000);
            let at = expected.len() - back + 12_345;
            let patch = random_bytes(70_000, i as u64);
            writer.write_all_at(&patch, at as u64).expect("overwrite");
            expected[at..at + patch.len()].copy_from_slice(&patch);
        }
        if i == 100 {
            // Truncate into what was just handed to a flush, then go on
            // writing at the new end.
            let size = expected.len() - 5 * MIB - 4_321;
            writer.set_len(size as u64).expect("truncate");
            expected.truncate(size);
            writer.seek(SeekFrom::End(0)).expect("seek");
        }
    }
    writer.sync_all().expect("fsync");
    drop(writer);
    drop(reader);
    sh("echo 3 > /proc/sys/vm/drop_caches");
    let mut back = Vec::new();
    fs::File::open(&path)
        .expect("reopen")
        .read_to_end(&mut back)
        .expect("read back");
    assert_eq!(back.len(), expected.len(), "size");
    assert!(back == expected, "content after close");

    // And from a fresh client, which knows only what was committed.
    let mut m = m;
    m.unmount();
    let again = TestMount::start(&source, &[]);
    let back = fs::read(again.path.join("big")).expect("read from a new client");
    assert!(back == expected, "content seen by a new client");
}

#[test]
fn a_write_behind_flush_that_fails_keeps_its_bytes() {
    let mut cluster = TestCluster::start(1, 3);
    let mount = TestMount::start(&cluster.meta_addr(), &[]);
    let path = mount.path.join("kept");
    let mut file = fs::File::create(&path).expect("create");
    let mut expected = Vec::new();
    for i in 0..4 {
        let b = block(i);
        file.write_all(&b).expect("write");
        expected.extend_from_slice(&b);
    }
    // With every chunk server gone, the write-behind flush started at
    // 32 MiB cannot store anything; the writes themselves only buffer.
    for i in 0..cluster.servers.len() {
        cluster.kill_server(i);
    }
    for i in 4..40 {
        let b = block(i);
        file.write_all(&b).expect("a buffered write succeeds");
        expected.extend_from_slice(&b);
    }
    // fsync waits for the flush behind the writer, which failed, and
    // retries its bytes with the rest: that fails too, and says so.
    let err = file
        .sync_all()
        .expect_err("fsync with every chunk server gone");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let log = fs::read_to_string(mount.path.with_extension("log")).unwrap_or_default();
    assert!(
        log.contains("write-behind flush failed"),
        "the flush behind the writer did not run or did not fail:\n{log}"
    );
    // The servers come back: fsync stores everything, the failed part too.
    for i in 0..cluster.specs.len() {
        cluster.restart_server(i);
    }
    cluster.wait_servers_up(cluster.specs.len());
    file.sync_all().expect("fsync after the servers are back");
    drop(file);
    let other = TestMount::start(&cluster.meta_addr(), &[]);
    let back = fs::read(other.path.join("kept")).expect("read from another client");
    assert_eq!(back.len(), expected.len(), "size");
    assert!(back == expected, "content");
}
