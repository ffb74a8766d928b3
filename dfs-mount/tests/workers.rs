//! Named background workers (issue 20): `dfs workers` lists dfs-meta's
//! workers and every chunk server's scrubber; a repair throttled with
//! `--repair-rate` never goes faster than its rate while it rebuilds a
//! dead server's shards, shows itself `throttled`, and still finishes;
//! `dfs status` says in words what needs attention meanwhile.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

fn workers(cluster: &TestCluster) -> Vec<serde_json::Value> {
    let (ok, rows) = cluster.dfs_json(&["workers"]);
    assert!(ok, "dfs workers failed: {rows}");
    rows.as_array().expect("an array").clone()
}

fn field<'a>(row: &'a serde_json::Value, name: &str) -> &'a str {
    row[name].as_str().unwrap_or_default()
}

/// Chunks per second the test's dfs-meta may repair.
const RATE: f64 = 4.0;

#[test]
fn workers_are_listed_and_a_throttled_repair_keeps_its_rate() {
    let server_args = |_| {
        ["--heartbeat-ms", "300", "--scrub-period", "30"]
            .map(String::from)
            .to_vec()
    };
    let meta_args = [
        "--suspect-after",
        "1",
        "--down-after",
        "2",
        "--rebuild-after",
        "3",
        "--repair-interval",
        "1",
        "--repair-rate",
        "4",
    ]
    .map(String::from)
    .to_vec();
    let mut cluster = TestCluster::start_full(3, 3, server_args, meta_args);
    cluster.wait_servers_up(9);

    // Every worker is listed: dfs-meta's, and a scrubber per chunk server
    // (from their heartbeats).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = workers(&cluster);
        let meta: HashSet<&str> = rows
            .iter()
            .filter(|r| field(r, "process") == "dfs-meta")
            .map(|r| field(r, "name"))
            .collect();
        let scrubbers: HashSet<&str> = rows
            .iter()
            .filter(|r| {
                field(r, "process").starts_with("dfs-server") && field(r, "name") == "scrub"
            })
            .map(|r| field(r, "process"))
            .collect();
        if scrubbers.len() == 9 {
            let want: HashSet<&str> = [
                "repair",
                "lease-expiry",
                "gc",
                "purge",
                "fsck",
                "access",
                "tiering",
                "staging",
            ]
            .into();
            assert_eq!(meta, want, "{rows:?}");
            let repair = rows
                .iter()
                .find(|r| field(r, "name") == "repair")
                .expect("repair");
            assert_eq!(field(repair, "throttle"), "4 chunks/s");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every scrubber reported: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let m = TestMount::start(&cluster.meta_addr(), &[]);
    let data = random_bytes(3 << 20, 11);
    std::fs::write(m.path.join("f"), &data).expect("write");
    let chunks = cluster.stats()["chunks"].as_u64().expect("chunks");
    assert!(chunks >= 20, "only {chunks} chunks");

    // Every chunk has a shard on every server (6+3 over nine): killing
    // one leaves each chunk to repair.
    cluster.kill_server(0);
    let started = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut saw_throttled = false;
    let mut saw_attention = false;
    let base = cluster.status()["repair"]["chunks_repaired"]
        .as_u64()
        .unwrap_or(0);
    loop {
        let status = cluster.status();
        let repaired = status["repair"]["chunks_repaired"].as_u64().unwrap_or(0) - base;
        samples.push((started.elapsed().as_secs_f64(), repaired));
        if status["health"] == "warn" {
            saw_attention = true;
        }
        let rows = workers(&cluster);
        saw_throttled |= rows
            .iter()
            .any(|r| field(r, "name") == "repair" && field(r, "state") == "throttled");
        if repaired >= chunks {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "repair never finished: {repaired} of {chunks}; {status}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "repaired {chunks} chunks in {took:.1}s at --repair-rate {RATE} ({} samples)",
        samples.len()
    );
    // No window of time saw more than the rate allows: its length times
    // the rate, the one second's burst a pause banks, one second for the
    // sampling (a count is read a little after it moved) and one for
    // repairs that began in time and ended together (counts move when a
    // repair ends, the throttle acts when it begins).
    for (i, &(t0, r0)) in samples.iter().enumerate() {
        for &(t1, r1) in &samples[i + 1..] {
            let allowed = RATE * (t1 - t0) + 3.0 * RATE;
            assert!(
                (r1 - r0) as f64 <= allowed,
                "{} chunks repaired between {t0:.1}s and {t1:.1}s: more than {allowed:.0} at {RATE}/s",
                r1 - r0
            );
        }
    }
    assert!(saw_throttled, "the repair worker never showed throttled");
    assert!(saw_attention, "dfs status never said what needs attention");
    assert!(std::fs::read(m.path.join("f")).expect("read back") == data);
}
