//! Fault injection: while a writer creates files (each acknowledged by a
//! successful fsync) and reads earlier ones back, chunk servers are killed
//! with SIGKILL (up to m = 3 at once) and restarted, the metadata server is
//! killed and restarted, the client is killed mid-write and the volume
//! remounted, shards are corrupted on disk, and one server dies for good.
//! Then: every acknowledged file reads back bit-identical, every file that
//! was not acknowledged holds a prefix of what was written (never garbage
//! or a hole), the dead server's shards were rebuilt (`dfs status`, `dfs
//! fsck --verify` clean), the dead server comes back with stale shards and
//! garbage collection removes them, leaving no orphans. Small files are
//! staged in the metadata store and moved to the chunk servers by
//! dfs-meta's staging worker every few seconds, so servers and dfs-meta
//! die while it moves them too; at the end nothing is left staged and what
//! the servers hold is back to 6+3's overhead.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dfs_core::xorshift::XorShift;

/// A file the writer tried to write: `seed` and `len` say its content.
#[derive(Clone, Debug)]
struct Written {
    name: String,
    seed: u64,
    len: usize,
}

#[derive(Default)]
struct Counters {
    writes_failed: AtomicU64,
    reads_checked: AtomicU64,
    read_errors: AtomicU64,
    read_mismatches: AtomicU64,
}

struct Writer {
    dir: PathBuf,
    /// Where each file's bytes are staged before `dd` copies them in.
    staging: PathBuf,
    acked: Mutex<Vec<Written>>,
    unacked: Mutex<Vec<Written>>,
    stop: AtomicBool,
    /// Set while a file's bytes are being written (before its fsync).
    writing: AtomicBool,
    counters: Counters,
}

fn content(w: &Written) -> Vec<u8> {
    random_bytes(w.len, w.seed)
}

/// Writes one file through `dd` (in 256 KiB pieces, so a kill has
/// something to interrupt, then fsync): acknowledged when `dd` succeeds.
///
/// Not from this process: a file with unsynced data open here would be
/// inherited by every process the test starts, and the kernel sends FUSE a
/// FLUSH when the child closes it at exec. While the metadata server is
/// down that flush waits for it, so starting the metadata server again
/// would wait on itself until the client's retries gave up.
fn write_one(w: &Writer, file: &Written) -> std::io::Result<()> {
    let staged = w.staging.join(&file.name);
    fs::write(&staged, content(file))?;
    w.writing.store(true, Ordering::SeqCst);
    let status = Command::new("dd")
        .arg(format!("if={}", staged.display()))
        .arg(format!("of={}", w.dir.join(&file.name).display()))
        .args(["bs=256K", "conv=fsync", "status=none"])
        .stderr(Stdio::null())
        .status();
    w.writing.store(false, Ordering::SeqCst);
    let _ = fs::remove_file(&staged);
    match status? {
        s if s.success() => Ok(()),
        s => Err(std::io::Error::other(format!("dd: {s}"))),
    }
}

fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    fs::File::open(path)?.read_to_end(&mut out)?;
    Ok(out)
}

fn writer_loop(w: Arc<Writer>) {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut n = 0u64;
    while !w.stop.load(Ordering::SeqCst) {
        n += 1;
        // One file in five is tiny (kept inline), one small (staged, then
        // moved by the staging worker), the rest up to 1.1 MiB.
        let len = if n.is_multiple_of(5) {
            1 + rng.below(3000) as usize
        } else if n % 5 == 1 {
            9000 + rng.below(240_000) as usize
        } else {
            64 * 1024 + rng.below(1 << 20) as usize
        };
        let file = Written {
            name: format!("f{n:05}"),
            seed: n * 7919,
            len,
        };
        match write_one(&w, &file) {
            Ok(()) => w.acked.lock().expect("lock").push(file),
            Err(_) => {
                w.counters.writes_failed.fetch_add(1, Ordering::SeqCst);
                w.unacked.lock().expect("lock").push(file);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if n.is_multiple_of(3) {
            let pick = {
                let acked = w.acked.lock().expect("lock");
                if acked.is_empty() {
                    None
                } else {
                    Some(acked[rng.below(acked.len() as u64) as usize].clone())
                }
            };
            if let Some(file) = pick {
                match read_file(&w.dir.join(&file.name)) {
                    Ok(bytes) => {
                        w.counters.reads_checked.fetch_add(1, Ordering::SeqCst);
                        if bytes != content(&file) {
                            eprintln!("MISMATCH reading {} during faults", file.name);
                            w.counters.read_mismatches.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(_) => {
                        w.counters.read_errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

fn repair(cluster: &TestCluster) -> serde_json::Value {
    cluster.status()["repair"].clone()
}

/// Waits until a repair scan that started after now found nothing
/// under-protected and no damaged shard waits.
fn wait_repaired(cluster: &TestCluster, timeout: Duration) -> serde_json::Value {
    let since = Instant::now();
    let deadline = since + timeout;
    loop {
        let r = repair(cluster);
        let scanned_since = r["last_scan_age_s"]
            .as_f64()
            .is_some_and(|age| age < since.elapsed().as_secs_f64());
        if scanned_since
            && r["under_protected_chunks"] == 0
            && r["lost_chunks"] == 0
            && r["pending_reports"] == 0
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "repair did not finish: {r}\nmeta log:\n{}",
            tail(&cluster.log("meta"), 40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stops server `i`, flips a byte in `count` of its shards, restarts it.
fn corrupt_shards(cluster: &mut TestCluster, i: usize, count: usize) -> usize {
    cluster.servers[i].stop();
    let store = dfs_server::ShardStore::open(&cluster.specs[i].data).expect("open shard store");
    let (listed, _) = store.list_after(None, 50).expect("list shards");
    let mut done = 0;
    for shard in listed.iter().step_by(7).take(count) {
        if let Some(mut value) = store
            .raw_get_value(&shard.fingerprint, shard.index)
            .expect("raw get")
        {
            let at = value.len() - 1;
            value[at] ^= 0x5a;
            store
                .raw_put_value(&shard.fingerprint, shard.index, &value)
                .expect("raw put");
            done += 1;
        }
    }
    drop(store);
    cluster.restart_server(i);
    done
}

fn fsck(cluster: &TestCluster) -> serde_json::Value {
    let (_, report) = cluster.dfs_json(&["fsck", "--verify", "--orphan-grace", "0"]);
    report
}

#[test]
fn acknowledged_data_survives_injected_faults() {
    let server_args = |_| {
        ["--heartbeat-ms", "500", "--scrub-period", "15"]
            .map(String::from)
            .to_vec()
    };
    let meta_args = [
        "--rebuild-after",
        "8",
        "--repair-interval",
        "2",
        "--stage-delay",
        "3",
    ]
    .map(String::from)
    .to_vec();
    let mut cluster = TestCluster::start_full(3, 3, server_args, meta_args);
    let source = cluster.meta_addr();
    let mount_root = tempfile::Builder::new()
        .prefix("dfs-faults-")
        .tempdir()
        .expect("tempdir");
    let mnt = mount_root.path().join("mnt");
    fs::create_dir(&mnt).expect("mountpoint");
    let mut mount = TestMount::start_at(&source, &mnt, &[]);
    // Under a directory that does not exist on the bare mountpoint, so a
    // write racing the remount fails instead of landing on the local disk.
    fs::create_dir(mnt.join("data")).expect("data dir");

    let staging = mount_root.path().join("staging");
    fs::create_dir(&staging).expect("staging dir");
    let writer = Arc::new(Writer {
        dir: mnt.join("data"),
        staging,
        acked: Mutex::new(Vec::new()),
        unacked: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        writing: AtomicBool::new(false),
        counters: Counters::default(),
    });
    let thread = {
        let w = writer.clone();
        std::thread::spawn(move || writer_loop(w))
    };
    let mut faults = 0u64;
    let mut rng = XorShift(42);
    std::thread::sleep(Duration::from_secs(3));

    // Three servers killed at once (m = 3), in different zones, then
    // restarted; twice, the second time two in one zone.
    for round in 0..2 {
        let victims: Vec<usize> = if round == 0 {
            (0..3).map(|z| z * 3 + rng.below(3) as usize).collect()
        } else {
            vec![3, 4, rng.below(3) as usize + 6]
        };
        for &v in &victims {
            cluster.kill_server(v);
            faults += 1;
        }
        eprintln!("faults: killed servers {victims:?}");
        std::thread::sleep(Duration::from_secs(2));
        for &v in &victims {
            cluster.restart_server(v);
        }
        std::thread::sleep(Duration::from_secs(3));
    }

    // The metadata server, killed and restarted.
    cluster.meta.kill();
    faults += 1;
    eprintln!("faults: killed the metadata server");
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_meta();
    std::thread::sleep(Duration::from_secs(3));

    // The client, killed in the middle of a write, and the volume remounted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !writer.writing.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    mount.proc.kill();
    faults += 1;
    eprintln!("faults: killed the client mid-write");
    drop(mount);
    mount = TestMount::start_at(&source, &mnt, &[]);
    std::thread::sleep(Duration::from_secs(3));

    // Bit rot: shards damaged on disk, found by the scrubber, rebuilt.
    let corrupted = corrupt_shards(&mut cluster, 1, 3);
    assert!(corrupted > 0, "no shard to corrupt on server 1");
    faults += corrupted as u64;
    eprintln!("faults: corrupted {corrupted} shards on server 1");

    // One server gone for good: its shards are rebuilt on the others.
    cluster.kill_server(8);
    faults += 1;
    eprintln!("faults: killed server 8 for good");
    std::thread::sleep(Duration::from_secs(20));

    writer.stop.store(true, Ordering::SeqCst);
    thread.join().expect("writer thread");
    let repaired = wait_repaired(&cluster, Duration::from_secs(180));
    eprintln!("repair after faults: {repaired}");
    assert!(
        repaired["shards_rebuilt"].as_u64().unwrap_or(0) > 0,
        "nothing was rebuilt: {repaired}"
    );

    // Every acknowledged file, bit for bit; every other one a prefix.
    let verify = |mnt: &Path| -> (u64, u64) {
        let acked = writer.acked.lock().expect("lock").clone();
        let mut lost = 0u64;
        for file in &acked {
            let bytes = read_file(&mnt.join("data").join(&file.name))
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.name));
            if bytes != content(file) {
                eprintln!("LOST: {} ({} bytes)", file.name, file.len);
                lost += file.len as u64;
            }
        }
        for file in writer.unacked.lock().expect("lock").iter() {
            if let Ok(bytes) = read_file(&mnt.join("data").join(&file.name)) {
                let want = content(file);
                assert!(
                    bytes.len() <= want.len() && bytes[..] == want[..bytes.len()],
                    "{} was not acknowledged and holds neither old nor written content ({} bytes)",
                    file.name,
                    bytes.len()
                );
            }
        }
        (acked.len() as u64, lost)
    };
    let (verified, lost) = verify(&mnt);

    let report = fsck(&cluster);
    eprintln!("fsck after rebuild: {report}");
    assert_eq!(report["clean"], true, "fsck after rebuild: {report}");
    assert_eq!(report["lost_chunks"], 0);
    assert_eq!(report["under_protected_chunks"], 0);

    // The dead server comes back with shards that were rebuilt elsewhere:
    // they are stale, and garbage collection removes them (and the shards
    // of uploads the faults interrupted).
    cluster.restart_server(8);
    cluster.wait_servers_up(9);
    wait_repaired(&cluster, Duration::from_secs(60));
    // Nobody writes any more: orphans may go at once.
    let (ok, gc) = cluster.dfs_json(&[
        "gc",
        "--grace",
        "0",
        "--clock-skew",
        "0",
        "--orphan-grace",
        "0",
    ]);
    assert!(ok, "dfs gc failed: {gc}");
    eprintln!("gc: {gc}");
    assert!(
        gc["orphan_shards_deleted"].as_u64().unwrap_or(0) > 0,
        "the returning server's stale shards were not collected: {gc}"
    );
    let report = fsck(&cluster);
    eprintln!("fsck after gc: {report}");
    assert_eq!(report["clean"], true, "fsck after gc: {report}");
    assert_eq!(report["orphan_shards"], 0, "orphans left: {report}");
    let (verified_again, lost_again) = verify(&mnt);
    drop(mount);

    // Every staged chunk moved, and the servers hold 9/6 of what is stored
    // on them (the servers' bytes come with their heartbeats).
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let s = cluster.stats();
        let overhead = s["redundancy_overhead"].as_f64().unwrap_or(0.0);
        if s["staged_chunks"] == 0 && (1.49..1.52).contains(&overhead) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "staged chunks left, or raw/stored not 6+3's: {s}\nmeta log:\n{}",
            tail(&cluster.log("meta"), 40)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("stats after faults: {stats}");

    let c = &writer.counters;
    eprintln!(
        "figures: fault injection: files written {verified}, writes failed {}, faults injected \
         {faults}, files verified {} (twice), reads during faults {} ({} errors, {} wrong), \
         chunks repaired {}, shards rebuilt {}, orphan shards deleted {}, bytes lost {}, \
         raw/stored on servers {}",
        c.writes_failed.load(Ordering::SeqCst),
        verified_again,
        c.reads_checked.load(Ordering::SeqCst),
        c.read_errors.load(Ordering::SeqCst),
        c.read_mismatches.load(Ordering::SeqCst),
        repaired["chunks_repaired"],
        repaired["shards_rebuilt"],
        gc["orphan_shards_deleted"],
        lost + lost_again,
        stats["redundancy_overhead"]
    );
    assert!(verified > 20, "too few files were written: {verified}");
    assert_eq!(lost + lost_again, 0, "acknowledged bytes lost");
    assert_eq!(c.read_mismatches.load(Ordering::SeqCst), 0);
}

/// Runs `op` on another thread; fails the test if it takes longer than
/// `limit` (a hang), else returns its result and how long it took.
fn within<T: Send + 'static>(
    limit: Duration,
    op: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(op());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => (v, start.elapsed()),
        Err(_) => panic!("the operation hung for more than {limit:?}"),
    }
}

#[test]
fn a_cluster_that_is_gone_gives_eio_not_a_hang() {
    let mut cluster = TestCluster::start(1, 3);
    // Written through another client, so this one has nothing cached.
    {
        let writer = TestMount::start(&cluster.meta_addr(), &[]);
        fs::write(writer.path.join("kept"), random_bytes(1 << 20, 9)).expect("write");
    }
    let mount = TestMount::start(&cluster.meta_addr(), &["retry_timeout=3"]);
    let file = mount.path.join("kept");

    // Every chunk server gone, the metadata server up: reading data fails
    // with EIO, quickly.
    for i in 0..cluster.servers.len() {
        cluster.kill_server(i);
    }
    let path = file.clone();
    let (read, took) = within(Duration::from_secs(60), move || read_file(&path));
    let err = read.expect_err("read with every chunk server gone");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    eprintln!("figures: read with all chunk servers gone: EIO after {took:?}");

    // Everything gone: metadata calls are retried for retry_timeout (3 s),
    // then fail with EIO.
    cluster.meta.kill();
    let dir = mount.path.clone();
    let (created, took) = within(Duration::from_secs(60), move || {
        fs::File::create(dir.join("new-file"))
    });
    let err = created.expect_err("create with the cluster gone");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took >= Duration::from_secs(2),
        "gave up before retrying: {took:?}"
    );
    eprintln!("figures: create with the whole cluster gone: EIO after {took:?}");

    // The cluster comes back: the same mount works again.
    cluster.start_meta();
    for i in 0..cluster.specs.len() {
        cluster.restart_server(i);
    }
    cluster.wait_servers_up(cluster.specs.len());
    let path = file.clone();
    let (read, _) = within(Duration::from_secs(60), move || read_file(&path));
    assert_eq!(read.expect("read after recovery"), random_bytes(1 << 20, 9));
    fs::write(mount.path.join("after"), b"back").expect("write after recovery");
}
