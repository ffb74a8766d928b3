//! Range operations: fallocate (allocate, punch hole, zero range),
//! SEEK_DATA/SEEK_HOLE, and copy_file_range done by sharing chunks.

mod common;

use std::fs;

use common::*;

fn python(script: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.py");
    fs::write(&path, script).expect("write script");
    sh(&format!("python3 {} {}", path.display(), args.join(" ")))
}

#[test]
fn fallocate_punches_holes_that_seek_hole_finds() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let f = m.path.join("f");
    let data = random_bytes(1 << 20, 7);
    fs::write(&f, &data).expect("write");
    let p = f.display().to_string();
    // Punch 256 KiB at 100,000 (cuts chunks at both edges), keep the size.
    sh(&format!("fallocate -p -o 100000 -l 262144 {p}"));
    let back = fs::read(&f).expect("read");
    assert_eq!(back.len(), data.len(), "punching keeps the size");
    assert!(back[..100_000] == data[..100_000], "bytes before the hole");
    assert!(
        back[100_000..362_144].iter().all(|&b| b == 0),
        "the hole reads zeros"
    );
    assert!(back[362_144..] == data[362_144..], "bytes after the hole");
    // The hole is a hole: SEEK_HOLE finds it, SEEK_DATA skips it.
    let out = python(
        r#"import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
hole = os.lseek(fd, 0, os.SEEK_HOLE)
data = os.lseek(fd, hole, os.SEEK_DATA)
end_hole = os.lseek(fd, data, os.SEEK_HOLE)
try:
    os.lseek(fd, os.fstat(fd).st_size, os.SEEK_DATA)
    print("no ENXIO")
except OSError as e:
    print(hole, data, end_hole, e.errno)
"#,
        &[&p],
    );
    let nums: Vec<u64> = out
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    assert!(
        nums[0] >= 100_000 && nums[0] < 100_000 + 131_072,
        "hole starts near the punch: {out}"
    );
    assert!(
        nums[1] > nums[0] && nums[1] <= 362_144,
        "data resumes by the punch's end: {out}"
    );
    assert_eq!(nums[2], 1 << 20, "the only other hole is at EOF: {out}");
    assert_eq!(nums[3], libc::ENXIO as u64);
    // Zero range without KEEP_SIZE grows the file; plain fallocate too.
    sh(&format!("fallocate -z -o 1000000 -l 100000 {p}"));
    assert_eq!(fs::metadata(&f).expect("stat").len(), 1_100_000);
    let back = fs::read(&f).expect("read");
    assert!(back[1_000_000..].iter().all(|&b| b == 0));
    assert!(back[362_144..1_000_000] == data[362_144..1_000_000]);
    sh(&format!("fallocate -l 5000000 {p}"));
    assert_eq!(fs::metadata(&f).expect("stat").len(), 5_000_000);
    // Modes dfs cannot do fail clearly.
    let out = std::process::Command::new("fallocate")
        .args(["-c", "-o", "0", "-l", "4096"])
        .arg(&f)
        .output()
        .expect("fallocate");
    assert!(!out.status.success(), "collapse range is not supported");
}

#[test]
fn copy_file_range_shares_chunks_and_copies_edges() {
    let cluster = TestCluster::start(1, 3);
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    let src = m.path.join("src");
    let data = random_bytes(24 << 20, 11);
    fs::write(&src, &data).expect("write");
    let before = cluster.stats();
    // Whole file, as cp does, and an unaligned range into an existing file.
    let dst = m.path.join("dst");
    let part = m.path.join("part");
    fs::write(&part, random_bytes(3 << 20, 12)).expect("write part");
    python(
        r#"import os, sys
src, dst, part = sys.argv[1:4]
size = os.stat(src).st_size
with open(src, 'rb') as s, open(dst, 'wb') as d:
    done = 0
    while done < size:
        n = os.copy_file_range(s.fileno(), d.fileno(), size - done, done, done)
        assert n > 0
        done += n
with open(src, 'rb') as s, open(part, 'r+b') as d:
    want = 5 * 1024 * 1024 + 4321
    done = 0
    while done < want:
        n = os.copy_file_range(s.fileno(), d.fileno(), want - done, 12345 + done, 777 + done)
        assert n > 0
        done += n
"#,
        &[
            &src.display().to_string(),
            &dst.display().to_string(),
            &part.display().to_string(),
        ],
    );
    assert!(
        fs::read(&dst).expect("read dst") == data,
        "whole-file copy differs"
    );
    let mut want = random_bytes(3 << 20, 12);
    let n = 5 * 1024 * 1024 + 4321;
    want.resize(777 + n, 0);
    want[777..777 + n].copy_from_slice(&data[12345..12345 + n]);
    assert!(
        fs::read(&part).expect("read part") == want,
        "range copy differs"
    );
    let after = cluster.stats();
    let u = |v: &serde_json::Value, k: &str| v[k].as_u64().expect(k);
    let new_unique = u(&after, "unique_bytes") - u(&before, "unique_bytes");
    eprintln!(
        "figures: copying 24 MiB + 5 MiB added {new_unique} unique bytes; logical {} -> {}",
        u(&before, "logical_bytes"),
        u(&after, "logical_bytes")
    );
    // part's own 3 MiB, plus re-cut edges: far less than the 29 MiB copied.
    assert!(
        new_unique < (3 << 20) + (2 << 20),
        "the copy stored data again: {new_unique} new unique bytes"
    );
    // The bytes were shared, not read and written again (dedup would hide
    // a byte copy in the figures above): the client says what it shared.
    let log = fs::read_to_string(m.path.with_extension("log")).expect("mount log");
    let shared: u64 = log
        .lines()
        .filter(|l| l.contains("copy_file_range shared chunks"))
        .filter_map(|l| l.split("shared_bytes=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    eprintln!("figures: copy_file_range shared {shared} bytes of chunks");
    assert!(shared > 26 << 20, "only {shared} bytes were shared");
    // Changing the copy leaves the source alone.
    fs::write(&dst, b"changed").expect("overwrite copy");
    assert!(fs::read(&src).expect("read src") == data);
}
