//! Full chunk servers: placement leaves a full server out, and when every
//! server is full the writer gets ENOSPC while everything written before
//! stays readable.

mod common;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

fn server_bytes(cluster: &TestCluster) -> Vec<u64> {
    let status = cluster.status();
    let mut servers: Vec<(u64, u64)> = status["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().expect("id"),
                s["shard_bytes"].as_u64().expect("bytes"),
            )
        })
        .collect();
    servers.sort_unstable();
    servers.into_iter().map(|(_, b)| b).collect()
}

/// Waits until a heartbeat reported at least `bytes` on the server.
fn wait_reported(cluster: &TestCluster, i: usize, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while server_bytes(cluster)[i] < bytes && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_full_server_is_left_out_and_a_full_cluster_answers_enospc() {
    // Three servers of 24 MiB and one of 2 MiB. Coding 6+3 over four
    // servers puts two or three shards of every chunk on each of them.
    let cluster = TestCluster::start_with(1, 4, |i| {
        let cap = if i == 3 { "2M" } else { "24M" };
        vec![
            "--capacity".into(),
            cap.into(),
            "--reserve".into(),
            "0".into(),
        ]
    });
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    // Fill the small server: its puts are refused once it is full, and the
    // client places those shards elsewhere without the writer noticing.
    let mut written = Vec::new();
    for i in 0..4 {
        let data = random_bytes(3 << 20, 100 + i);
        let path = m.path.join(format!("f{i}"));
        fs::write(&path, &data).expect("writes succeed while some servers have room");
        written.push((path, data));
    }
    wait_reported(&cluster, 3, 1);
    std::thread::sleep(Duration::from_millis(2500)); // one more heartbeat
    let bytes = server_bytes(&cluster);
    eprintln!("figures: shard bytes per server after 12 MiB: {bytes:?}");
    assert!(
        bytes[3] <= 2 << 20,
        "the small server went past its capacity: {bytes:?}"
    );

    // Now fill everything: a write fails with ENOSPC, not EIO, not a hang.
    let mut failure = None;
    for i in 0..40 {
        let path = m.path.join(format!("g{i}"));
        let data = random_bytes(4 << 20, 200 + i);
        let result = fs::File::create(&path).and_then(|mut f| {
            f.write_all(&data)?;
            f.sync_all()
        });
        match result {
            Ok(()) => written.push((path, data)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("76 MiB of capacity cannot take 160 MiB coded at 1.5x");
    let log = fs::read_to_string(m.path.with_extension("log")).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("capacity") || l.contains("full"))
    {
        eprintln!("client: {line}");
    }
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "wrong error: {err}");
    let raw: usize = written.iter().map(|(_, d)| d.len()).sum();
    std::thread::sleep(Duration::from_millis(2500)); // one more heartbeat
    eprintln!(
        "figures: ENOSPC after {} files ({raw} bytes); shard bytes per server {:?}",
        written.len(),
        server_bytes(&cluster)
    );
    // Shards moved off a full server leave no copies behind: the space went
    // to acknowledged data (coded at 1.5x), not to stray shards.
    let capacity = 3 * (24 << 20) + (2 << 20);
    assert!(
        raw * 3 / 2 >= capacity * 3 / 4,
        "only {raw} bytes fit in {capacity} bytes of capacity"
    );
    // Everything acknowledged before reads back.
    for (path, data) in &written {
        assert!(
            fs::read(path).expect("read back") == *data,
            "{} differs",
            path.display()
        );
    }
    // The file system stays usable for reads and metadata meanwhile.
    fs::create_dir(m.path.join("still-works")).expect("mkdir on a full cluster");

    // Removing files and collecting garbage makes room again.
    let keep = written.pop().expect("files");
    for (path, _) in &written {
        fs::remove_file(path).expect("rm");
    }
    let held_before: u64 = server_bytes(&cluster).iter().sum();
    let gc = |grace: &str| -> serde_json::Value {
        let out = dfs_cmd("dfs")
            .args(["gc", "--meta", &cluster.meta_addr(), "--json"])
            .args(["--grace", grace, "--clock-skew", "0"])
            .output()
            .expect("dfs gc");
        assert!(
            out.status.success(),
            "dfs gc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("gc JSON")
    };
    // Inside the grace period nothing goes.
    let waiting = gc("3600");
    assert_eq!(waiting["bytes_freed"].as_u64(), Some(0), "{waiting}");
    assert!(waiting["waiting"].as_u64() > Some(0), "{waiting}");
    let freed = gc("0");
    eprintln!(
        "figures: dfs gc after removing {} files: {freed}",
        written.len()
    );
    assert!(
        freed["bytes_freed"].as_u64().expect("bytes") as usize
            >= raw * 3 / 2 * 8 / 10 - keep.1.len() * 3 / 2,
        "gc freed too little: {freed}"
    );
    assert_eq!(freed["chunks_pending"].as_u64(), Some(0));
    let again = gc("0");
    assert_eq!(
        again["chunks_freed"].as_u64(),
        Some(0),
        "a second run finds nothing: {again}"
    );
    // The kept file is intact and new writes fit again.
    assert!(fs::read(&keep.0).expect("read kept file") == keep.1);
    std::thread::sleep(Duration::from_millis(2500)); // heartbeats report the room
    let fresh = random_bytes(8 << 20, 999);
    fs::write(m.path.join("after-gc"), &fresh).expect("a write after gc fits");
    assert!(fs::read(m.path.join("after-gc")).expect("read") == fresh);
    let stats = cluster.stats();
    assert_eq!(stats["unreferenced_chunks"].as_u64(), Some(0), "{stats}");
    eprintln!(
        "figures: shard bytes held before gc {held_before}, after gc and an 8 MiB write {:?}",
        server_bytes(&cluster)
    );
}
