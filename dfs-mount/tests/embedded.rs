//! The embedded `local:` file system, mounted for real: namespace basics,
//! a tree copied in and out, and persistence across a remount.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;

#[test]
fn namespace_operations_behave_like_a_local_disk() {
    let data = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", data.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let root = &m.path;

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

#[test]
fn tree_copy_reads_back_identical_and_survives_remount() {
    let work = tempfile::tempdir().expect("tempdir");
    let tree = work.path().join("tree");
    make_tree(&tree, 300);
    let source = format!("local:{}", work.path().join("vol").display());
    {
        let m = TestMount::start(&source, &[]);
        sh(&format!(
            "cp -a {} {}/tree",
            tree.display(),
            m.path.display()
        ));
        sh(&format!(
            "diff -r --no-dereference {} {}/tree",
            tree.display(),
            m.path.display()
        ));
    }
    // A new process on the same data directory sees everything.
    let m = TestMount::start(&source, &[]);
    sh(&format!(
        "diff -r --no-dereference {} {}/tree",
        tree.display(),
        m.path.display()
    ));
    let mode = fs::symlink_metadata(m.path.join("tree/link"))
        .expect("link")
        .file_type()
        .is_symlink();
    assert!(mode);
}

#[test]
fn a_second_mount_of_the_same_local_volume_is_refused_clearly() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let _first = TestMount::start(&source, &[]);
    let other = work.path().join("mnt2");
    fs::create_dir(&other).expect("mkdir");
    let out = std::process::Command::new(bin("dfs-mount"))
        .arg(&source)
        .arg(&other)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metadata store"), "unexpected error: {err}");
}
