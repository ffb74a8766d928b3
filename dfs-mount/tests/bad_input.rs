//! Mistakes a user can make get a clear message and a non-zero exit, fast.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn run(cmd: &mut Command) -> (bool, String, Duration) {
    let started = Instant::now();
    let out = cmd.output().expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn mount_with_no_metadata_server_fails_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port(); // nothing listens there
    let (ok, err, took) = run(dfs_cmd("dfs-mount")
        .arg(format!("127.0.0.1:{port}"))
        .arg(dir.path()));
    assert!(!ok);
    assert!(err.contains("metadata server"), "message: {err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(!is_mounted(dir.path()));
}

#[test]
fn unknown_mount_option_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, err, _) = run(dfs_cmd("dfs-mount")
        .arg("local:/tmp/never")
        .arg(dir.path())
        .args(["-o", "rw,frobnicate"]));
    assert!(!ok);
    assert!(
        err.contains("unknown mount option `frobnicate`"),
        "message: {err}"
    );
    let (ok, err, _) = run(dfs_cmd("mount.dfs")
        .arg("local:/tmp/never")
        .arg(dir.path())
        .args(["-o", "consistency=sometimes"]));
    assert!(!ok);
    assert!(err.contains("consistency"), "message: {err}");
}

#[test]
fn missing_mountpoint_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let (ok, err, _) = run(dfs_cmd("dfs-mount")
        .arg(format!("local:{}", dir.path().join("vol").display()))
        .arg(&missing));
    assert!(!ok);
    assert!(err.contains("does not exist"), "message: {err}");
}

#[test]
fn server_with_unusable_data_directory_fails_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let (ok, err, took) = run(dfs_cmd("dfs-server").args([
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--meta",
        "127.0.0.1:1",
        "--data",
        &file.join("sub").display().to_string(),
    ]));
    assert!(!ok);
    assert!(
        err.contains("plain-file"),
        "message should name the path: {err}"
    );
    assert!(took < Duration::from_secs(10));
}

#[test]
fn meta_with_bad_store_spec_fails() {
    let (ok, err, _) =
        run(dfs_cmd("dfs-meta").args(["--listen", "127.0.0.1:0", "--store", "floppy:/x"]));
    assert!(!ok);
    assert!(err.contains("unknown store"), "message: {err}");
}
