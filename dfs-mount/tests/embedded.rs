//! The embedded `local:` file system, mounted for real: namespace basics,
//! a tree copied in and out, and persistence across a remount.

mod common;

use std::fs;

use common::*;

#[test]
fn namespace_operations_behave_like_a_local_disk() {
    let data = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", data.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    namespace_checks(&m.path);
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

#[test]
fn many_files_written_at_once_respect_the_write_buffer_limit() {
    use std::io::Write;
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &["write_buffer=1M"]);
    let contents: Vec<Vec<u8>> = (0..8).map(|i| random_bytes(3 << 20, 500 + i)).collect();
    let mut files: Vec<fs::File> = (0..8)
        .map(|i| fs::File::create(m.path.join(format!("f{i}"))).expect("create"))
        .collect();
    // Interleave 256 KiB writes over all eight files: the 1 MiB limit over
    // all files forces flushes in the middle of every file.
    for piece in 0..12 {
        for (f, data) in files.iter_mut().zip(&contents) {
            f.write_all(&data[piece << 18..(piece + 1) << 18])
                .expect("write");
        }
    }
    drop(files);
    for (i, data) in contents.iter().enumerate() {
        assert!(
            fs::read(m.path.join(format!("f{i}"))).expect("read") == *data,
            "file f{i} differs"
        );
    }
}

#[test]
fn writes_around_a_huge_hole_store_only_the_written_bytes() {
    use std::os::unix::fs::FileExt;
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let path = m.path.join("sparse");
    let f = fs::File::create(&path).expect("create");
    let (a, b) = (random_bytes(4096, 1), random_bytes(4096, 2));
    f.write_all_at(&a, 0).expect("write at 0");
    f.write_all_at(&b, 10 << 30).expect("write at 10 GiB");
    drop(f); // re-cutting the 10 GiB hole would run out of memory here
    let f = fs::File::open(&path).expect("open");
    assert_eq!(f.metadata().expect("stat").len(), (10 << 30) + 4096);
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).expect("read");
    assert!(buf == a);
    f.read_exact_at(&mut buf, 10 << 30).expect("read");
    assert!(buf == b);
    f.read_exact_at(&mut buf, 5 << 30).expect("read hole");
    assert!(buf.iter().all(|&x| x == 0));
}
