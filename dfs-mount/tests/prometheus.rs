//! A real Prometheus (Debian's `prometheus`) scraping a running cluster
//! with the shipped alert rules (issue 20): every process is up, writing a
//! file moves the FUSE, RPC, pipeline and volume series as Prometheus
//! stores them, every query of the shipped Grafana dashboard runs and
//! names only series the processes export, and killing a chunk server
//! fires `DfsChunkServerDown`, evaluated by that Prometheus.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// GET `path` from 127.0.0.1:`port`: the status code and body.
fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut conn =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or("no HTTP reply")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status code")?;
    Ok((code, body.to_string()))
}

/// Percent-encodes a PromQL expression for a query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's result vector: (labels, value) per series.
fn query(port: u16, q: &str) -> Vec<(serde_json::Value, f64)> {
    let (code, body) = get(port, &format!("/api/v1/query?query={}", encode(q))).expect("query");
    assert_eq!(code, 200, "{q}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["data"]["result"]
        .as_array()
        .expect("a vector")
        .iter()
        .map(|r| {
            let value = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("value");
            (r["metric"].clone(), value)
        })
        .collect()
}

/// The sum of an instant query's values (0 for no series).
fn total(port: u16, q: &str) -> f64 {
    query(port, q).iter().map(|(_, v)| v).sum()
}

/// Waits until `check` holds, or fails with `what`.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn prometheus_scrapes_every_process_and_the_rules_fire() {
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("Prometheus is not installed: apt-get install prometheus (scripts/test.sh does)");
    let meta_port = free_port();
    let server_ports: Vec<u16> = (0..9).map(|_| free_port()).collect();
    let ports = server_ports.clone();
    let mut cluster = TestCluster::start_full(
        3,
        3,
        move |i| vec!["--metrics".into(), format!("127.0.0.1:{}", ports[i])],
        vec!["--metrics".into(), format!("127.0.0.1:{meta_port}")],
    );
    cluster.wait_servers_up(9);
    let mount_port = free_port();
    let m = TestMount::start(
        &cluster.meta_addr(),
        &[&format!("metrics=127.0.0.1:{mount_port}")],
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/prometheus/dfs-alerts.yml"
    );
    let targets: Vec<String> = std::iter::once(meta_port)
        .chain(server_ports.iter().copied())
        .chain(std::iter::once(mount_port))
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{rules}\"]\n\
             scrape_configs:\n  - job_name: dfs\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .expect("prometheus.yml");
    let web_port = free_port();
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("prometheus log"))
        .spawn()
        .expect("start prometheus");
    // Killed (by its PID) when the test ends, however it ends.
    let _prometheus = Proc {
        child: Some(child),
        name: "prometheus".into(),
    };
    wait_for("Prometheus to be ready", Duration::from_secs(60), || {
        matches!(get(web_port, "/-/ready"), Ok((200, _)))
    });
    wait_for("every target to be up", Duration::from_secs(60), || {
        let up = query(web_port, "up");
        up.len() == 11 && up.iter().all(|(_, v)| *v == 1.0)
    });

    let data = random_bytes(2 << 20, 21);
    std::fs::write(m.path.join("f"), &data).expect("write");
    assert!(std::fs::read(m.path.join("f")).expect("read") == data);
    assert!(std::fs::metadata(m.path.join("missing")).is_err());
    let size = data.len() as f64;
    wait_for(
        "the work in Prometheus's series",
        Duration::from_secs(60),
        || {
            total(web_port, "dfs_fuse_written_bytes_total") >= size
                && total(web_port, "dfs_fuse_read_bytes_total") >= size
                && total(web_port, r#"dfs_fuse_errors_total{errno="ENOENT"}"#) >= 1.0
                && total(
                    web_port,
                    r#"dfs_rpc_requests_total{method="CommitChunks",errno="OK"}"#,
                ) >= 1.0
                && total(web_port, r#"dfs_pipeline_bytes_total{stage="uploaded"}"#) > size
                && total(web_port, r#"dfs_volume_bytes{kind="logical"}"#) >= size
                && total(web_port, "sum(dfs_server_shards_put_total)") >= 9.0
        },
    );
    dashboard_queries_work(web_port);

    assert!(
        total(web_port, r#"ALERTS{alertname="DfsChunkServerDown"}"#) == 0.0,
        "no alert while every server is up"
    );
    cluster.kill_server(4);
    wait_for(
        "DfsChunkServerDown to fire",
        Duration::from_secs(90),
        || {
            total(
                web_port,
                r#"ALERTS{alertname="DfsChunkServerDown",alertstate="firing"}"#,
            ) == 1.0
        },
    );
    let up = query(web_port, "up == 0");
    assert_eq!(
        up.len(),
        1,
        "only the killed server's target is down: {up:?}"
    );
    assert_eq!(
        up[0].0["instance"],
        format!("127.0.0.1:{}", server_ports[4]),
        "{up:?}"
    );
    drop(m);
}

/// Every expression of `packaging/grafana/dfs-dashboard.json` runs, and
/// every dfs metric it names is in the catalog and among the series
/// Prometheus scraped.
fn dashboard_queries_work(port: u16) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/grafana/dfs-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_string())
        .collect();
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    for expr in &exprs {
        // Runs (a malformed query answers 400).
        query(port, expr);
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("dfs_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            assert!(
                dfs_core::telemetry::catalog::find(&name).is_some(),
                "the dashboard names {name}, which no dfs process exports"
            );
            let stored = query(port, &format!("count({{__name__=\"{name}\"}})"));
            assert!(
                !stored.is_empty(),
                "the dashboard's {name} is not among the scraped series ({expr})"
            );
        }
    }
}
