//! Test rig: starts real dfs processes on loopback and mounts them with
//! FUSE. Every process is owned by a guard that kills it by PID, and every
//! mount by a guard that unmounts it, whatever the test's outcome.

#![allow(dead_code)]

pub mod raw;
pub mod scrape;

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Directory holding the workspace's binaries (next to the test's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if name == "mount.dfs" && !path.exists() {
        // `mount.dfs` is `dfs-mount` under another name (cargo cannot build
        // a binary with a dot in its name); installs make the same link.
        let _ = std::os::unix::fs::symlink("dfs-mount", &path);
    }
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --workspace` first",
        path.display()
    );
    path
}

/// What dfs programs read their TLS directory from.
pub const TLS_DIR_ENV: &str = "DFS_TLS_DIR";

/// The cluster CA and the certificates of every role that test processes
/// use (through `DFS_TLS_DIR`), made once by the `dfs` under test beside
/// the binaries and reused while complete.
pub fn tls_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = bin_dir().join("test-tls");
        let roles = ["meta", "server", "client", "admin"];
        let complete = |d: &Path| {
            d.join("ca.crt").exists()
                && roles.iter().all(|r| {
                    d.join(format!("{r}.crt")).exists() && d.join(format!("{r}.key")).exists()
                })
        };
        if complete(&dir) {
            return dir;
        }
        // Made aside and renamed into place: another test binary running
        // at the same time finds it whole or not at all.
        let tmp = bin_dir().join(format!("test-tls.{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let run = |args: &[&str]| {
            let out = Command::new(bin("dfs"))
                .args(args)
                .output()
                .expect("run dfs ca");
            assert!(
                out.status.success(),
                "dfs {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let tmp_s = tmp.display().to_string();
        run(&["ca", "init", &tmp_s]);
        for role in roles {
            run(&[
                "ca",
                "issue",
                "--role",
                role,
                &format!("test-{role}"),
                "--ca",
                &tmp_s,
            ]);
        }
        let _ = fs::remove_dir_all(&dir);
        if fs::rename(&tmp, &dir).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        assert!(complete(&dir), "no test certificates in {}", dir.display());
        dir
    })
    .clone()
}

/// `Command::new(bin(name))` with the test cluster's certificates.
pub fn dfs_cmd(name: &str) -> Command {
    let mut cmd = Command::new(bin(name));
    cmd.env(TLS_DIR_ENV, tls_dir());
    cmd
}

/// The `dfs-meta` under test ([`meta_bin`]) with the test certificates.
pub fn meta_cmd() -> Command {
    let mut cmd = Command::new(meta_bin());
    cmd.env(TLS_DIR_ENV, tls_dir());
    cmd
}

/// The `dfs-meta` to run: `DFS_TEST_META_BIN` (one built with FoundationDB
/// support, for `DFS_TEST_META_STORE=fdb`), else the workspace's.
pub fn meta_bin() -> PathBuf {
    match std::env::var_os("DFS_TEST_META_BIN") {
        Some(path) => PathBuf::from(path),
        None => bin("dfs-meta"),
    }
}

/// A port nothing listens on, for a process the test starts (and may
/// restart on the same port). Taken below Linux's ephemeral range
/// (32768-60999): a port the kernel hands out for `:0` can meanwhile become
/// the local port of some outgoing connection, and a server then failed to
/// start with EADDRINUSE now and then. Counting from an offset of this test
/// binary's PID, ports differ between the tests of one binary, and cargo
/// runs test binaries one after the other.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(97);
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + base.wrapping_add(n) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// Waits for a line starting with `prefix` on the child's stdout.
pub fn wait_for_line(child: &mut Child, prefix: &str, timeout: Duration) -> Result<String, String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    let prefix = prefix.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with(&prefix) || line.starts_with("dfs-mount: error") {
                let _ = tx.send(line);
                // Keep draining so the child never blocks on a full pipe.
            }
        }
    });
    rx.recv_timeout(timeout).map_err(|e| match e {
        mpsc::RecvTimeoutError::Timeout => "timed out waiting for the process to come up".into(),
        mpsc::RecvTimeoutError::Disconnected => "the process exited before it came up".into(),
    })
}

/// A child process killed (SIGKILL, by PID) when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (a clean stop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file")
}

pub struct ServerSpec {
    pub port: u16,
    pub data: PathBuf,
    pub zone: String,
    pub rack: String,
    /// More `dfs-server` arguments (e.g. `--capacity`).
    pub extra_args: Vec<String>,
}

/// One metadata server and N chunk servers.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub meta_port: u16,
    pub meta: Proc,
    pub servers: Vec<Proc>,
    pub specs: Vec<ServerSpec>,
    /// More `dfs-meta` arguments (e.g. `--rebuild-after`).
    pub meta_args: Vec<String>,
    /// The port of a second `dfs-meta` over the same store, which chunk
    /// servers turn to when the first is unreachable (FoundationDB only:
    /// see [`TestCluster::start_shared`]).
    pub second_meta_port: Option<u16>,
    /// A `--store` to use instead of [`TestCluster::meta_store`]'s choice.
    pub store: Option<String>,
}

impl TestCluster {
    /// `zones` × `racks_per_zone` servers, one per rack.
    pub fn start(zones: usize, racks_per_zone: usize) -> Self {
        Self::start_with(zones, racks_per_zone, |_| Vec::new())
    }

    /// Like [`TestCluster::start`], with extra arguments for server `i`.
    pub fn start_with(
        zones: usize,
        racks_per_zone: usize,
        extra_args: impl Fn(usize) -> Vec<String>,
    ) -> Self {
        Self::start_full(zones, racks_per_zone, extra_args, Vec::new())
    }

    /// Like [`TestCluster::start_with`], with extra `dfs-meta` arguments.
    pub fn start_full(
        zones: usize,
        racks_per_zone: usize,
        extra_args: impl Fn(usize) -> Vec<String>,
        meta_args: Vec<String>,
    ) -> Self {
        Self::start_cluster(zones, racks_per_zone, extra_args, meta_args, None)
    }

    /// Like [`TestCluster::start`], with chunk servers that know a second
    /// metadata server (`second_meta_port`, started by the caller with
    /// [`TestCluster::spawn_meta_at`]) sharing the store.
    pub fn start_shared(zones: usize, racks_per_zone: usize) -> Self {
        let second = free_port();
        Self::start_cluster(
            zones,
            racks_per_zone,
            |_| Vec::new(),
            Vec::new(),
            Some(second),
        )
    }

    /// Like [`TestCluster::start`], with dfs-meta on `store`.
    pub fn start_on_store(zones: usize, racks_per_zone: usize, store: String) -> Self {
        Self::start_cluster_on(
            zones,
            racks_per_zone,
            |_| Vec::new(),
            Vec::new(),
            None,
            Some(store),
        )
    }

    fn start_cluster(
        zones: usize,
        racks_per_zone: usize,
        extra_args: impl Fn(usize) -> Vec<String>,
        meta_args: Vec<String>,
        second_meta_port: Option<u16>,
    ) -> Self {
        Self::start_cluster_on(
            zones,
            racks_per_zone,
            extra_args,
            meta_args,
            second_meta_port,
            None,
        )
    }

    fn start_cluster_on(
        zones: usize,
        racks_per_zone: usize,
        extra_args: impl Fn(usize) -> Vec<String>,
        meta_args: Vec<String>,
        second_meta_port: Option<u16>,
        store: Option<String>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dfs-test-")
            .tempdir()
            .expect("tempdir");
        let meta_port = free_port();
        let mut specs = Vec::new();
        for z in 0..zones {
            for r in 0..racks_per_zone {
                specs.push(ServerSpec {
                    port: free_port(),
                    data: dir.path().join(format!("server-z{z}-r{r}")),
                    zone: format!("zone-{z}"),
                    rack: format!("rack-{z}-{r}"),
                    extra_args: extra_args(z * racks_per_zone + r),
                });
            }
        }
        let mut cluster = TestCluster {
            meta: Proc {
                child: None,
                name: "meta".into(),
            },
            servers: Vec::new(),
            specs,
            meta_args,
            meta_port,
            second_meta_port,
            store,
            dir,
        };
        cluster.start_meta();
        for i in 0..cluster.specs.len() {
            let p = cluster.spawn_server(i);
            cluster.servers.push(p);
        }
        cluster.wait_servers_up(cluster.specs.len());
        cluster
    }

    pub fn meta_addr(&self) -> String {
        format!("127.0.0.1:{}", self.meta_port)
    }

    /// The metadata store of this cluster: RocksDB in the test's directory,
    /// or, with `DFS_TEST_META_STORE=fdb`, FoundationDB (`FDB_CLUSTER_FILE`)
    /// under a key prefix of this cluster's own.
    pub fn meta_store(&self) -> String {
        if let Some(store) = &self.store {
            return store.clone();
        }
        match std::env::var("DFS_TEST_META_STORE").as_deref() {
            Ok("fdb") => {
                let cluster_file = std::env::var("FDB_CLUSTER_FILE")
                    .expect("DFS_TEST_META_STORE=fdb needs FDB_CLUSTER_FILE");
                let name = self
                    .dir
                    .path()
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                format!("fdb:{cluster_file}#dfs-test/{name}/")
            }
            _ => format!("rocksdb:{}", self.dir.path().join("meta").display()),
        }
    }

    pub fn start_meta(&mut self) {
        self.meta = self.spawn_meta_at(self.meta_port, "meta");
    }

    /// Starts a `dfs-meta` on this cluster's store, listening on `port`,
    /// its log in `NAME.log`.
    pub fn spawn_meta_at(&self, port: u16, name: &str) -> Proc {
        let store = self.meta_store();
        let listen = format!("127.0.0.1:{port}");
        let mut child = meta_cmd()
            .args([
                "--listen",
                &listen,
                "--store",
                &store,
                "--suspect-after",
                "3",
                "--down-after",
                "6",
                // Tests collect garbage at once (a test may ask again
                // for the default minimum in its own arguments).
                "--min-gc-grace",
                "0",
            ])
            // Small files go to the chunk servers at once, as most tests
            // expect, unless a test asks for staging.
            .args(
                (!self.meta_args.iter().any(|a| a == "--stage-delay"))
                    .then_some(["--stage-delay", "0"])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.meta_args)
            .stdout(Stdio::piped())
            .stderr(log_file(self.dir.path(), name))
            .spawn()
            .expect("spawn dfs-meta");
        let started = Instant::now();
        if let Err(e) = wait_for_line(&mut child, "dfs-meta listening", Duration::from_secs(30)) {
            // Whether it exited (and how) or hangs, and where.
            let exit = child.try_wait();
            let threads = std::fs::read_dir(format!("/proc/{}/task", child.id()))
                .map(|dir| {
                    dir.flatten()
                        .map(|t| {
                            let p = t.path();
                            let read =
                                |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
                            format!(
                                "{} {} {}",
                                read("comm").trim(),
                                read("wchan"),
                                read("stack")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            let _ = child.kill();
            panic!(
                "dfs-meta did not come up after {:?}: {e}; exit: {exit:?}\nthreads:\n{threads}\nlog:\n{}",
                started.elapsed(),
                self.log(name)
            );
        }
        Proc {
            child: Some(child),
            name: name.into(),
        }
    }

    fn spawn_server(&self, i: usize) -> Proc {
        let s = &self.specs[i];
        let listen = format!("127.0.0.1:{}", s.port);
        let data = s.data.display().to_string();
        let meta = match self.second_meta_port {
            Some(port) => format!("{},127.0.0.1:{port}", self.meta_addr()),
            None => self.meta_addr(),
        };
        let mut child = dfs_cmd("dfs-server")
            .args([
                "--listen", &listen, "--meta", &meta, "--data", &data, "--zone", &s.zone, "--rack",
                &s.rack,
            ])
            .args(&s.extra_args)
            .stdout(Stdio::piped())
            .stderr(log_file(self.dir.path(), &format!("server-{i}")))
            .spawn()
            .expect("spawn dfs-server");
        if let Err(e) = wait_for_line(&mut child, "dfs-server listening", Duration::from_secs(30)) {
            let _ = child.kill();
            let log = std::fs::read_to_string(self.dir.path().join(format!("server-{i}.log")));
            panic!(
                "dfs-server {i} did not come up: {e}\n{}",
                log.unwrap_or_default()
            );
        }
        Proc {
            child: Some(child),
            name: format!("server-{i}"),
        }
    }

    pub fn kill_server(&mut self, i: usize) {
        self.servers[i].kill();
    }

    pub fn restart_server(&mut self, i: usize) {
        self.servers[i].kill();
        self.servers[i] = self.spawn_server(i);
    }

    pub fn restart_meta(&mut self) {
        self.meta.kill();
        self.start_meta();
    }

    pub fn status(&self) -> serde_json::Value {
        let out = dfs_cmd("dfs")
            .args(["status", "--meta", &self.meta_addr(), "--json"])
            .output()
            .expect("dfs status");
        assert!(
            out.status.success(),
            "dfs status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    pub fn stats(&self) -> serde_json::Value {
        let out = dfs_cmd("dfs")
            .args(["stats", "--meta", &self.meta_addr(), "--json"])
            .output()
            .expect("dfs stats");
        assert!(
            out.status.success(),
            "dfs stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("stats JSON")
    }

    /// Runs `dfs ARGS --meta ADDR --json`; returns whether it exited 0, and
    /// its JSON output.
    pub fn dfs_json(&self, args: &[&str]) -> (bool, serde_json::Value) {
        let out = dfs_cmd("dfs")
            .args(args)
            .args(["--meta", &self.meta_addr(), "--json"])
            .output()
            .expect("dfs");
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "dfs {args:?} printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), value)
    }

    pub fn wait_servers_up(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status();
            if s["servers_up"].as_u64() == Some(n as u64) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} servers up, status: {s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// A FUSE mount served by a `dfs-mount --foreground` child; unmounted and
/// stopped on drop.
pub struct TestMount {
    pub path: PathBuf,
    pub proc: Proc,
    _dir: Option<tempfile::TempDir>,
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.as_str()))
}

impl TestMount {
    pub fn start(source: &str, options: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dfs-mnt-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mountpoint");
        let mut m = Self::start_at(source, &path, options);
        m._dir = Some(dir);
        m
    }

    pub fn start_at(source: &str, path: &Path, options: &[&str]) -> Self {
        let mut cmd = dfs_cmd("dfs-mount");
        cmd.arg(source).arg(path).arg("--foreground");
        for o in options {
            cmd.arg("-o").arg(o);
        }
        let log = path.with_extension("log");
        let mut child = cmd
            .env("DFS_MOUNT_NOTIFY", "1")
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("mount log"),
            )
            .spawn()
            .expect("spawn dfs-mount");
        let line = wait_for_line(&mut child, "dfs-mount: ready", Duration::from_secs(60));
        let mut proc = Proc {
            child: Some(child),
            name: "mount".into(),
        };
        match line {
            Ok(l) if l.starts_with("dfs-mount: ready") => {}
            other => {
                proc.kill();
                panic!(
                    "mount failed: {other:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        TestMount {
            path: path.to_path_buf(),
            proc,
            _dir: None,
        }
    }

    /// Unmounts (the kernel flushes open files first) and waits for the
    /// client to exit.
    pub fn unmount(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .status();
        }
        if let Some(mut c) = self.proc.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.path) {
            // The client is gone; never leave a dead mount behind.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        // A request handler that panicked answered EIO (or nothing) to the
        // kernel: whatever the test checked, that is a failure.
        let log = std::fs::read_to_string(self.path.with_extension("log")).unwrap_or_default();
        if log.contains("panicked") && !std::thread::panicking() {
            panic!("the dfs client panicked during the test:\n{log}");
        }
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Runs a shell command, asserting success; returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), no two calls alike for
/// different seeds.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    dfs_core::xorshift::XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).bytes(len)
}

/// Builds a tree of mixed files under `root`: text that compresses, random
/// data that does not, empty files, nested directories and a symlink.
pub fn make_tree(root: &Path, files: usize) {
    std::fs::create_dir_all(root).expect("tree root");
    for i in 0..files {
        let dir = root.join(format!("d{}/e{}", i % 7, i % 3));
        std::fs::create_dir_all(&dir).expect("dir");
        let data = match i % 4 {
            0 => format!("line {i}\n").repeat(i * 13 % 5000).into_bytes(),
            1 => random_bytes(i * 7919 % 300_000, i as u64),
            2 => Vec::new(),
            _ => random_bytes(1 + i % 40, i as u64),
        };
        std::fs::write(dir.join(format!("f{i}.dat")), data).expect("write");
    }
    std::os::unix::fs::symlink("d0/e0", root.join("link")).expect("symlink");
}

/// Namespace operations every tool relies on, checked on a mounted root.
/// Written once, run on both rigs (embedded and cluster).
pub fn namespace_checks(root: &Path) {
    // create, write, read back, append
    fs::write(root.join("a.txt"), b"hello").expect("write");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(root.join("a.txt"))
        .expect("open append");
    f.write_all(b" world").expect("append");
    drop(f);
    assert_eq!(fs::read(root.join("a.txt")).expect("read"), b"hello world");

    // overwrite in the middle, read own writes before close
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.join("a.txt"))
        .expect("open rw");
    f.seek(SeekFrom::Start(6)).expect("seek");
    f.write_all(b"WORLD").expect("write");
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_string(&mut s).expect("read");
    assert_eq!(s, "hello WORLD");
    drop(f);

    // truncate down and up (hole reads as zeros)
    let f = fs::OpenOptions::new()
        .write(true)
        .open(root.join("a.txt"))
        .expect("open");
    f.set_len(3).expect("truncate down");
    f.set_len(8).expect("truncate up");
    drop(f);
    assert_eq!(
        fs::read(root.join("a.txt")).expect("read"),
        b"hel\0\0\0\0\0"
    );

    // mkdir, rename (atomic replace), readdir, rmdir
    fs::create_dir(root.join("dir")).expect("mkdir");
    fs::write(root.join("dir/b"), b"b").expect("write b");
    fs::write(root.join("dir/c"), b"c").expect("write c");
    fs::rename(root.join("dir/b"), root.join("dir/c")).expect("rename over");
    assert_eq!(fs::read(root.join("dir/c")).expect("read c"), b"b");
    let mut names: Vec<String> = fs::read_dir(root.join("dir"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, vec!["c"]);
    assert_eq!(
        fs::remove_dir(root.join("dir"))
            .expect_err("not empty")
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_file(root.join("dir/c")).expect("unlink");
    fs::remove_dir(root.join("dir")).expect("rmdir");
    assert_eq!(
        fs::metadata(root.join("dir"))
            .expect_err("gone")
            .raw_os_error(),
        Some(libc::ENOENT)
    );

    // rename a directory across parents, and refuse a move into itself
    fs::create_dir_all(root.join("p1/sub")).expect("mkdir -p");
    fs::create_dir(root.join("p2")).expect("mkdir");
    fs::rename(root.join("p1/sub"), root.join("p2/sub")).expect("move dir");
    assert!(root.join("p2/sub").is_dir());
    assert_eq!(
        fs::rename(root.join("p2"), root.join("p2/sub/x"))
            .expect_err("loop")
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    assert_eq!(fs::metadata(root.join("p1")).expect("p1").nlink(), 2);
    assert_eq!(fs::metadata(root.join("p2")).expect("p2").nlink(), 3);

    // symlink, readlink
    std::os::unix::fs::symlink("a.txt", root.join("ln")).expect("symlink");
    assert_eq!(
        fs::read_link(root.join("ln")).expect("readlink").to_str(),
        Some("a.txt")
    );
    assert_eq!(fs::read(root.join("ln")).expect("follow").len(), 8);

    // chmod, chown, utimens
    fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o640)).expect("chmod");
    assert_eq!(
        fs::metadata(root.join("a.txt")).expect("stat").mode() & 0o7777,
        0o640
    );
    sh(&format!("chown 1234:5678 {}", root.join("a.txt").display()));
    let md = fs::metadata(root.join("a.txt")).expect("stat");
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    sh(&format!(
        "touch -m -d '2001-02-03 04:05:06 UTC' {}",
        root.join("a.txt").display()
    ));
    assert_eq!(
        fs::metadata(root.join("a.txt")).expect("stat").mtime(),
        981_173_106
    );

    // errors users cause get the right errno
    assert_eq!(
        fs::create_dir(root.join("a.txt"))
            .expect_err("exists")
            .raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(
        fs::read(root.join("missing"))
            .expect_err("missing")
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    let long = "x".repeat(256);
    assert_eq!(
        fs::write(root.join(long), b"")
            .expect_err("long")
            .raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );

    // statfs works
    sh(&format!("df {}", root.display()));
}

/// How many requests of `method` a dfs-meta serving metrics on
/// `meta_port` has answered.
pub fn meta_rpcs(meta_port: u16, method: &str) -> f64 {
    let label = format!(r#"method="{method}""#);
    scrape::sum(
        &scrape::scrape(meta_port),
        dfs_core::telemetry::catalog::RPC_REQUESTS,
        &[&label],
    )
}

/// A cluster whose dfs-meta serves metrics (its port first) and two
/// default mounts of it.
pub fn two_mounts() -> (u16, TestCluster, TestMount, TestMount) {
    let meta_port = free_port();
    let cluster = TestCluster::start_full(
        1,
        3,
        |_| Vec::new(),
        vec!["--metrics".into(), format!("127.0.0.1:{meta_port}")],
    );
    let a = TestMount::start(&cluster.meta_addr(), &[]);
    let b = TestMount::start(&cluster.meta_addr(), &[]);
    (meta_port, cluster, a, b)
}
