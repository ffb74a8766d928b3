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
fn terminal_probes_get_enotty_without_a_warning_each() {
    use std::io::IsTerminal;
    let data = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", data.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let path = m.path.join("plain");
    fs::write(&path, b"not a terminal").expect("write");
    let file = fs::File::open(&path).expect("open");
    for _ in 0..3 {
        assert!(!file.is_terminal());
    }
    // stty's TCGETS: the errno a regular file gives.
    let out = std::process::Command::new("stty")
        .arg("-F")
        .arg(&path)
        .output()
        .expect("stty");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Inappropriate ioctl"), "{err}");
    let log = fs::read_to_string(m.path.with_extension("log")).unwrap_or_default();
    assert!(!log.contains("ioctl"), "ioctls logged:\n{log}");
}

#[test]
fn poll_finds_files_ready_without_a_warning() {
    let data = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", data.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let path = m.path.join("polled");
    fs::write(&path, b"ready").expect("write");
    // Twice: the first poll reaches the mount, which tells the kernel it
    // need not ask again.
    let out = sh(&format!(
        "python3 - '{}' <<'EOF'
import select, sys
f = open(sys.argv[1], 'r+')
for _ in range(2):
    p = select.poll()
    p.register(f, select.POLLIN | select.POLLOUT)
    [(fd, events)] = p.poll(5000)
    print(events & (select.POLLIN | select.POLLOUT))
EOF",
        path.display()
    ));
    let ready = (libc::POLLIN | libc::POLLOUT).to_string();
    assert_eq!(out, format!("{ready}\n{ready}\n"));
    let log = fs::read_to_string(m.path.with_extension("log")).unwrap_or_default();
    assert!(!log.contains("poll"), "poll logged:\n{log}");
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
    let out = dfs_cmd("dfs-mount")
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

#[test]
fn remount_read_only_and_back_keeps_the_client_running() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    fs::write(m.path.join("kept"), b"before").expect("write");
    let remount = |opts: &str| {
        let out = dfs_cmd("dfs-mount")
            .arg(&source)
            .arg(&m.path)
            .args(["-o", opts])
            .output()
            .expect("run dfs-mount");
        assert!(
            out.status.success(),
            "remount {opts}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    remount("remount,ro");
    let err = fs::write(m.path.join("new"), b"x").expect_err("write on a read-only mount");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(fs::read(m.path.join("kept")).expect("read"), b"before");
    remount("remount,rw");
    fs::write(m.path.join("new"), b"after").expect("write after remount rw");
    assert_eq!(fs::read(m.path.join("new")).expect("read"), b"after");

    // A remount of something that is not a dfs mount is refused.
    let out = dfs_cmd("dfs-mount")
        .arg(&source)
        .arg(work.path())
        .args(["-o", "remount,ro"])
        .output()
        .expect("run dfs-mount");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a mounted dfs file system"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_open_directory_that_is_removed_has_no_links() {
    use std::os::unix::fs::MetadataExt;
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    // rmdir while open.
    fs::create_dir(m.path.join("gone")).expect("mkdir");
    let open = fs::File::open(m.path.join("gone")).expect("open dir");
    fs::remove_dir(m.path.join("gone")).expect("rmdir");
    assert_eq!(open.metadata().expect("fstat").nlink(), 0);
    // Renamed over while open (fstests generic/035).
    fs::create_dir(m.path.join("a")).expect("mkdir a");
    fs::create_dir(m.path.join("b")).expect("mkdir b");
    let open_b = fs::File::open(m.path.join("b")).expect("open b");
    fs::rename(m.path.join("a"), m.path.join("b")).expect("rename over");
    let meta = open_b.metadata().expect("fstat");
    assert_eq!(meta.nlink(), 0);
    assert!(meta.is_dir());
    // A directory that was never opened is simply gone.
    assert!(fs::metadata(m.path.join("a")).is_err());
}

#[test]
fn umount_then_mount_at_once_waits_for_the_old_client() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt).expect("mountpoint");
    for round in 0..3u8 {
        let out = dfs_cmd("dfs-mount")
            .arg(&source)
            .arg(&mnt)
            .output()
            .expect("run dfs-mount");
        assert!(
            out.status.success(),
            "mount {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(mnt.join(format!("f{round}")), vec![round; 1 << 20]).expect("write");
        // umount returns before the client has closed its stores.
        let status = std::process::Command::new("umount")
            .arg(&mnt)
            .status()
            .expect("umount");
        assert!(status.success());
    }
    let m = TestMount::start_at(&source, &mnt, &[]);
    for round in 0..3u8 {
        assert_eq!(
            fs::read(m.path.join(format!("f{round}"))).expect("read"),
            vec![round; 1 << 20]
        );
    }
}

#[test]
fn fallocate_beyond_the_free_space_is_enospc() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let status = std::process::Command::new("fallocate")
        .args(["-l", "100T"])
        .arg(m.path.join("huge"))
        .output()
        .expect("fallocate");
    assert!(!status.status.success());
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("No space left"),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(fs::metadata(m.path.join("huge")).expect("stat").len(), 0);
    let ok = std::process::Command::new("fallocate")
        .args(["-l", "1M"])
        .arg(m.path.join("small"))
        .status()
        .expect("fallocate");
    assert!(ok.success());
    assert_eq!(
        fs::metadata(m.path.join("small")).expect("stat").len(),
        1 << 20
    );
}

#[test]
fn fallocate_by_an_unprivileged_user_drops_setgid() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &["allow_other"]);
    // The test's temporary directories are private to root: let nobody in.
    for dir in [work.path(), m.path.parent().expect("parent"), &m.path] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let file = m.path.join("a");
    fs::write(&file, b"").expect("create");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o2666)).expect("chmod");
    let as_nobody = std::process::Command::new("su")
        .args(["nobody", "-s", "/bin/sh", "-c"])
        .arg(format!("fallocate -l 4096 '{}'", file.display()))
        .status()
        .expect("su");
    assert!(as_nobody.success());
    let mode = fs::metadata(&file).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o666, "mode {mode:o}");
    // Root keeps them (CAP_FSETID).
    fs::set_permissions(&file, fs::Permissions::from_mode(0o4766)).expect("chmod");
    let as_root = std::process::Command::new("fallocate")
        .args(["-l", "8192"])
        .arg(&file)
        .status()
        .expect("fallocate");
    assert!(as_root.success());
    let mode = fs::metadata(&file).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o4766, "mode {mode:o}");
}

/// POSIX ACLs: enforced by the kernel, kept in step with the mode, and
/// inherited from a directory's default ACL instead of the umask.
#[test]
fn posix_acls_are_enforced_follow_chmod_and_are_inherited() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &["allow_other"]);
    for dir in [work.path(), m.path.parent().expect("parent"), &m.path] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let nobody = |cmd: &str| {
        std::process::Command::new("su")
            .args(["nobody", "-s", "/bin/sh", "-c", cmd])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("su")
            .success()
    };
    let mode = |p: &std::path::Path| fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    let file = m.path.join("f");
    let f = file.display().to_string();
    fs::write(&file, b"secret\n").expect("create");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(!nobody(&format!("cat {f}")), "mode 600 keeps nobody out");
    sh(&format!("setfacl -m u:nobody:rw {f}"));
    assert_eq!(mode(&file), 0o660, "the group bits show the mask");
    assert!(
        nobody(&format!("cat {f} >/dev/null")),
        "the ACL lets nobody read"
    );
    assert!(nobody(&format!("echo more >> {f}")), "and write");
    // chmod narrows the mask: nobody's entry stays but no longer grants write.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).expect("chmod");
    assert!(sh(&format!("getfacl -c {f}")).contains("mask::r--"));
    assert!(
        !nobody(&format!("echo more >> {f}")),
        "the mask limits the entry"
    );
    assert!(nobody(&format!("cat {f} >/dev/null")));
    // An ACL no richer than the mode is not kept as an attribute.
    sh(&format!("setfacl -b {f}"));
    sh(&format!("setfacl -m u::rw,g::r,o::- {f}"));
    assert_eq!(sh(&format!("getfattr -m - -d {f}")), "");

    // Default ACL: new names get it, masked by the mode asked for, and no
    // umask; subdirectories carry it on.
    let dir = m.path.join("d");
    let d = dir.display().to_string();
    fs::create_dir(&dir).expect("mkdir");
    sh(&format!("setfacl -d -m u:nobody:rwx,g::rwx,o::- {d}"));
    sh(&format!("umask 077; touch {d}/new; mkdir {d}/sub"));
    assert_eq!(
        mode(&dir.join("new")),
        0o660,
        "umask ignored, mode 666 masks the ACL"
    );
    let acl = sh(&format!("getfacl -c {d}/new"));
    assert!(
        acl.contains("user:nobody:rwx") && acl.contains("mask::rw-"),
        "{acl}"
    );
    let sub = sh(&format!("getfacl -c {d}/sub"));
    assert!(sub.contains("default:user:nobody:rwx"), "{sub}");
    // Without a default ACL the umask applies as usual.
    sh(&format!("umask 027; touch {}/plain", m.path.display()));
    assert_eq!(mode(&m.path.join("plain")), 0o640);

    // setfacl by the owner who is not in the file's group drops setgid.
    let owned = m.path.join("owned");
    fs::write(&owned, b"").expect("create");
    sh(&format!(
        "chown nobody:root {0} && chmod 2770 {0}",
        owned.display()
    ));
    assert!(nobody(&format!("setfacl -m u:root:r {}", owned.display())));
    assert_eq!(mode(&owned) & 0o2000, 0, "setgid kept: {:o}", mode(&owned));
}

/// With `noacl` the kernel does not enforce ACLs, so setting one is
/// refused rather than stored and half-applied to the mode.
#[test]
fn acls_are_refused_on_a_noacl_mount() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &["noacl"]);
    let file = m.path.join("f");
    fs::write(&file, b"x").expect("create");
    let out = std::process::Command::new("setfacl")
        .args(["-m", "u:nobody:rw"])
        .arg(&file)
        .output()
        .expect("setfacl");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sh(&format!("setfattr -n user.kept -v 1 {}", file.display()));
}

/// Names created after opendir are listed after rewinddir (POSIX; fstests
/// generic/471).
#[test]
#[allow(unsafe_code)]
fn rewinddir_sees_names_created_after_opendir() {
    use std::ffi::{CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let dir = m.path.join("d");
    fs::create_dir(&dir).expect("mkdir");
    let path = CString::new(dir.as_os_str().as_bytes()).expect("path");
    let names = |stream: *mut libc::DIR| {
        let mut out = Vec::new();
        loop {
            // SAFETY: `stream` is a valid open DIR*; readdir's entry is
            // read before the next call.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                break;
            }
            // SAFETY: d_name is a NUL-terminated string inside the entry.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            out.push(name.to_string_lossy().into_owned());
        }
        out.retain(|n| n != "." && n != "..");
        out.sort();
        out
    };
    // SAFETY: `path` is a valid C string.
    let stream = unsafe { libc::opendir(path.as_ptr()) };
    assert!(!stream.is_null(), "opendir failed");
    fs::write(dir.join("early"), b"").expect("create");
    // SAFETY: `stream` is open.
    unsafe { libc::rewinddir(stream) };
    assert_eq!(names(stream), vec!["early".to_string()]);
    fs::write(dir.join("late"), b"").expect("create");
    // SAFETY: `stream` is open.
    unsafe { libc::rewinddir(stream) };
    assert_eq!(names(stream), vec!["early".to_string(), "late".to_string()]);
    // SAFETY: `stream` is open and not used afterwards.
    unsafe { libc::closedir(stream) };
}

/// The kernel asks for a directory's attributes after each change in it;
/// the client answers from the change's reply. Whatever answers, they must
/// be the directory's attributes after the change.
#[test]
fn directory_attributes_follow_each_change_at_once() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    let (d, e) = (m.path.join("d"), m.path.join("e"));
    fs::create_dir(&d).expect("mkdir d");
    fs::create_dir(&e).expect("mkdir e");
    let stamp = |p: &std::path::Path| {
        let md = fs::metadata(p).expect("stat");
        (
            md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            md.ctime() * 1_000_000_000 + md.ctime_nsec(),
            md.nlink(),
        )
    };
    let pause = || std::thread::sleep(std::time::Duration::from_millis(5));
    let mut last = stamp(&d);
    let step = |what: &str, expect_nlink: u64, last: &mut (i64, i64, u64)| {
        let now = stamp(&d);
        assert!(
            now.0 > last.0,
            "{what}: mtime of d did not advance: {last:?} -> {now:?}"
        );
        assert_eq!(now.2, expect_nlink, "{what}: nlink of d");
        *last = now;
    };
    pause();
    fs::write(d.join("f"), b"x").expect("create");
    step("create", 2, &mut last);
    pause();
    fs::create_dir(d.join("s")).expect("mkdir");
    step("mkdir", 3, &mut last);
    let moved_before = stamp(&d.join("s"));
    pause();
    fs::rename(d.join("s"), d.join("t")).expect("rename within d");
    step("rename", 3, &mut last);
    assert!(
        stamp(&d.join("t")).1 > moved_before.1,
        "a renamed directory's ctime"
    );
    pause();
    fs::rename(d.join("t"), e.join("t")).expect("rename to e");
    step("rename out", 2, &mut last);
    assert_eq!(stamp(&e).2, 3, "nlink of e after a directory moved in");
    pause();
    fs::remove_dir(e.join("t")).expect("rmdir");
    assert_eq!(stamp(&e).2, 2, "nlink of e after rmdir");
    fs::hard_link(d.join("f"), d.join("g")).expect("link");
    step("link", 2, &mut last);
    pause();
    fs::remove_file(d.join("f")).expect("unlink");
    step("unlink", 2, &mut last);
    // Changes whose replies do not carry the directory: mode, xattrs.
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).expect("chmod");
    assert_eq!(
        fs::metadata(&d).expect("stat").permissions().mode() & 0o7777,
        0o700
    );
    let ctime = stamp(&d).1;
    pause();
    sh(&format!(
        "python3 -c 'import os; os.setxattr(\"{}\", \"user.k\", b\"v\")'",
        d.display()
    ));
    assert!(
        stamp(&d).1 > ctime,
        "setxattr changes the directory's ctime"
    );
}
