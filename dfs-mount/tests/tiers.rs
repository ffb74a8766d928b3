//! Tiering policies (issue 21) on a real mount: `user.dfs.tier` is checked
//! by dfs-meta (a bad policy is EINVAL, whoever sets it), kept canonical,
//! handed down to what is created in a directory, and `dfs tier get` says
//! which policy a file follows and where it comes from.

mod common;

use std::fs;
use std::path::Path;

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
