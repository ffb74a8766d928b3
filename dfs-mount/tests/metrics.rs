//! Prometheus metrics from a running cluster (issue 20): dfs-meta, nine
//! chunk servers and a mount, each with `--metrics` / `-o metrics=`, are
//! scraped over HTTP; writing a file moves the FUSE, RPC, pipeline, store
//! and volume series, a failed lookup is counted by errno, and every
//! series exported is in the catalog (`dfs metrics`, README's list).

mod common;

use std::time::{Duration, Instant};

use common::scrape::{scrape, sum, Scrape};
use common::*;
use dfs_core::telemetry::catalog;

fn names_not_in_catalog(s: &Scrape) -> Vec<String> {
    let mut unknown: Vec<String> = s
        .keys()
        .map(|series| series.split_once('{').map_or(series.as_str(), |(n, _)| n))
        .filter(|name| catalog::find(name).is_none())
        .map(str::to_string)
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
}

#[test]
fn every_process_exports_metrics_that_move_with_the_work() {
    let meta_port = free_port();
    let server_ports: Vec<u16> = (0..9).map(|_| free_port()).collect();
    let server_args = server_ports.clone();
    let cluster = TestCluster::start_full(
        3,
        3,
        move |i| vec!["--metrics".into(), format!("127.0.0.1:{}", server_args[i])],
        vec!["--metrics".into(), format!("127.0.0.1:{meta_port}")],
    );
    cluster.wait_servers_up(9);
    let mount_port = free_port();
    let m = TestMount::start(
        &cluster.meta_addr(),
        &[&format!("metrics=127.0.0.1:{mount_port}")],
    );
    let data = random_bytes(3 << 20, 20);
    std::fs::write(m.path.join("f"), &data).expect("write");
    assert!(std::fs::read(m.path.join("f")).expect("read") == data);
    assert!(std::fs::metadata(m.path.join("missing")).is_err());

    let mount = scrape(mount_port);
    let size = data.len() as f64;
    assert!(sum(&mount, catalog::FUSE_OPERATIONS, &[r#"op="write""#]) > 0.0);
    assert!(sum(&mount, catalog::FUSE_WRITTEN_BYTES, &[]) >= size);
    assert!(sum(&mount, catalog::FUSE_READ_BYTES, &[]) >= size);
    assert!(
        sum(
            &mount,
            &format!("{}_count", catalog::FUSE_DURATION),
            &[r#"op="lookup""#]
        ) > 0.0,
        "lookup latencies recorded"
    );
    assert!(
        sum(
            &mount,
            catalog::FUSE_ERRORS,
            &[r#"op="lookup""#, r#"errno="ENOENT""#]
        ) >= 1.0,
        "the failed lookup counted by errno"
    );
    assert!(sum(&mount, catalog::PIPELINE_BYTES, &[r#"stage="cut""#]) >= size);
    assert!(
        sum(&mount, catalog::CHUNK_CACHE, &[]) > 0.0,
        "the read looked in the chunk cache"
    );
    assert!(sum(&mount, catalog::PIPELINE_BYTES, &[r#"stage="uploaded""#]) > size);
    assert!(
        sum(
            &mount,
            catalog::FUSE_OPERATIONS,
            &[r#"process="dfs-mount""#]
        ) > 0.0,
        "series name their process"
    );

    let meta = scrape(meta_port);
    assert!(
        sum(
            &meta,
            catalog::RPC_REQUESTS,
            &[r#"method="CommitChunks""#, r#"errno="OK""#]
        ) >= 1.0,
        "commits counted"
    );
    assert!(
        sum(
            &meta,
            catalog::RPC_REQUESTS,
            &[r#"method="Lookup""#, r#"errno="ENOENT""#]
        ) >= 1.0,
        "errors counted by errno"
    );
    assert!(sum(&meta, catalog::STORE_TRANSACTIONS, &[]) > 0.0);
    // The volume's gauges follow within a refresh period.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let meta = scrape(meta_port);
        let logical = sum(&meta, catalog::VOLUME_BYTES, &[r#"kind="logical""#]);
        if logical >= size && sum(&meta, catalog::SERVERS, &[r#"state="up""#]) == 9.0 {
            assert!(sum(&meta, catalog::VOLUME_BYTES, &[r#"kind="raw""#]) > size);
            assert!(sum(&meta, catalog::VOLUME_FILES, &[]) >= 2.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "volume gauges never showed the file: {meta:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let mut servers_with_puts = 0;
    for &port in &server_ports {
        let s = scrape(port);
        if sum(&s, catalog::SERVER_SHARDS_PUT, &[]) > 0.0 {
            servers_with_puts += 1;
            assert!(sum(&s, catalog::RPC_REQUESTS, &[r#"method="PutShards""#]) > 0.0);
        }
        assert!(
            names_not_in_catalog(&s).is_empty(),
            "{:?}",
            names_not_in_catalog(&s)
        );
    }
    assert_eq!(servers_with_puts, 9, "every server took shards");
    for (who, s) in [("mount", &mount), ("meta", &meta)] {
        assert!(
            names_not_in_catalog(s).is_empty(),
            "{who} exports series missing from the catalog: {:?}",
            names_not_in_catalog(s)
        );
    }
    // Server gauges are published every few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sum(&scrape(server_ports[0]), catalog::SERVER_SHARDS, &[]) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "server 0 never published its shard count"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        sum(
            &scrape(server_ports[0]),
            catalog::SERVER_DISK_FREE_BYTES,
            &[]
        ) > 0.0
    );
}

/// README's metrics list is the catalog's, so it cannot drift from the code.
#[test]
fn readme_lists_the_catalog() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = catalog::markdown();
    assert!(
        readme.contains(&table),
        "README.md's metrics list is out of date: paste in the output of `dfs metrics`:\n{table}"
    );
}
