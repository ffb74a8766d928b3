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
    // A punch wider than one commit's piece (32 MiB) goes in pieces.
    let big = m.path.join("big");
    let data = random_bytes(40 << 20, 8);
    fs::write(&big, &data).expect("write 40 MiB");
    sh(&format!(
        "fallocate -p -o 1000000 -l 38000000 {}",
        big.display()
    ));
    let back = fs::read(&big).expect("read");
    assert!(back[..1_000_000] == data[..1_000_000]);
    assert!(back[1_000_000..39_000_000].iter().all(|&b| b == 0));
    assert!(back[39_000_000..] == data[39_000_000..]);
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

#[test]
fn shared_writable_mappings_and_two_appenders() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let f = m.path.join("mapped");
    fs::write(&f, random_bytes(3 << 20, 5)).expect("write");
    // Writes through a shared mapping, msync, then a read through a new
    // open (and after a remount-free cache drop) sees them.
    python(
        r#"import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
for off in range(0, len(m), 300000):
    m[off:off + 11] = b"mapped-data"
m.flush()
m.close()
os.close(fd)
"#,
        &[&f.display().to_string()],
    );
    sh("sync; echo 3 > /proc/sys/vm/drop_caches");
    let back = fs::read(&f).expect("read");
    for off in (0..back.len()).step_by(300_000) {
        assert_eq!(&back[off..off + 11], b"mapped-data", "at {off}");
    }
    // Two processes appending with O_APPEND interleave whole records.
    let log = m.path.join("log");
    sh(&format!(
        "for w in a b; do (for i in $(seq 500); do echo \"$w-$i\" >> {l}; done) & done; wait",
        l = log.display()
    ));
    let text = fs::read_to_string(&log).expect("read log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1000, "appends lost or torn");
    for w in ["a", "b"] {
        let mine: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with(w)).collect();
        let want: Vec<String> = (1..=500).map(|i| format!("{w}-{i}")).collect();
        assert_eq!(mine, want, "writer {w}'s records out of order or torn");
    }
}

#[test]
fn a_directory_of_100000_entries_lists_exactly() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let dir = m.path.join("big");
    fs::create_dir(&dir).expect("mkdir");
    // Created by a small C-speed loop (python), then listed while half of
    // them are removed and others added: no entry twice, none that
    // existed throughout missed.
    let out = python(
        r#"import os, sys, threading
d = sys.argv[1]
for i in range(100000):
    os.close(os.open(os.path.join(d, "f%06d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
names = os.listdir(d)
assert len(names) == 100000 and len(set(names)) == 100000, len(names)
def churn():
    for i in range(0, 100000, 2):
        os.unlink(os.path.join(d, "f%06d" % i))
        if i % 20 == 0:
            os.close(os.open(os.path.join(d, "g%06d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
t = threading.Thread(target=churn)
t.start()
seen = os.listdir(d)
t.join()
assert len(seen) == len(set(seen)), "an entry was listed twice"
stable = {"f%06d" % i for i in range(1, 100000, 2)}
missing = stable - set(seen)
assert not missing, "entries present all along were skipped: %d" % len(missing)
final = os.listdir(d)
assert len(final) == 50000 + 5000, len(final)
print(len(seen))
"#,
        &[&dir.display().to_string()],
    );
    eprintln!("figures: listing during churn saw {} entries", out.trim());
}
