//! The `dfs-server` binary as scripts use it: the ready line, clean shutdown
//! on SIGTERM, and a one-line error for an unusable data directory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dfs-server");

#[test]
fn bad_data_dir_exits_nonzero_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--plaintext", "--data"])
        .arg(&file)
        .env("RUST_LOG", "off")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("dfs-server: "), "{stderr}");
    assert!(lines[0].contains("cannot open shard store at"), "{stderr}");
    assert!(lines[0].contains(&file.display().to_string()), "{stderr}");
}

#[test]
fn without_certificates_it_says_how_to_make_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--meta", "127.0.0.1:1", "--data"])
        .arg(dir.path().join("data"))
        .arg("--tls-dir")
        .arg(dir.path().join("tls"))
        .env("RUST_LOG", "off")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("ca.crt") && stderr.contains("dfs ca issue --role server"),
        "{stderr}"
    );
    assert!(stderr.contains("--plaintext"), "{stderr}");
}

#[test]
fn announces_its_port_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--meta",
            "127.0.0.1:1",
            "--plaintext",
            "--data",
        ])
        .arg(dir.path())
        .args(["--zone", "z", "--rack", "r", "--heartbeat-ms", "100"])
        // A scrubber running (and failing to report) must not hold up shutdown.
        .args(["--scrub-period", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let addr = line
        .trim()
        .strip_prefix("dfs-server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    assert!(!addr.ends_with(":0"), "{addr}");
    assert!(std::net::TcpStream::connect(addr).is_ok());
    assert!(dir.path().join("server.id").exists());

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dfs-server did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
