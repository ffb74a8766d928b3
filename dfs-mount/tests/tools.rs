//! Real tools on a real mount, as users run them: rsync with hard links and
//! extended attributes, git, and a C build with make.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

fn embedded() -> (tempfile::TempDir, TestMount) {
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("local:{}", work.path().join("vol").display());
    let m = TestMount::start(&source, &[]);
    (work, m)
}

/// A source tree with what `rsync -aHAX` must carry: hard links (also
/// across directories), extended attributes, a symlink, modes and times.
fn tree_with_links_and_xattrs(root: &Path) {
    make_tree(root, 60);
    fs::write(root.join("d1/shared"), b"one inode, three names").expect("write");
    fs::hard_link(root.join("d1/shared"), root.join("d2/shared-link")).expect("link");
    fs::hard_link(root.join("d1/shared"), root.join("d1/shared-again")).expect("link");
    sh(&format!(
        "setfattr -n user.colour -v blue {r}/d1/shared && \
         setfattr -n user.empty {r}/d0/e0/f0.dat && \
         setfattr -n user.binary -v 0x00ff10 {r}/d2 && \
         chmod 0751 {r}/d3 && chmod 0600 {r}/d1/shared",
        r = root.display()
    ));
    // Times in the past, with nanoseconds: rsync only re-sets a time that
    // differs in whole seconds, so a tree made the same second as the copy
    // would not round-trip even between two local disks.
    sh(&format!(
        "find {} -depth -exec touch -h -d '2020-01-02 03:04:05.123456789' {{}} +",
        root.display()
    ));
}

fn assert_same_tree(a: &Path, b: &Path) {
    sh(&format!(
        "diff -r --no-dereference {} {}",
        a.display(),
        b.display()
    ));
    let dump = |p: &Path| {
        sh(&format!(
            "cd {} && getfattr -R -d -m - --absolute-names . 2>/dev/null | sort",
            p.display()
        ))
    };
    assert_eq!(dump(a), dump(b), "extended attributes differ");
    let meta = |p: &Path| {
        sh(&format!(
            "cd {} && find . -printf '%p %y %m %n %s %T@\\n' | awk '$2 == \"d\" {{ $5 = \"-\" }} 1' | sort",
            p.display()
        ))
    };
    assert_eq!(
        meta(a),
        meta(b),
        "modes, link counts, sizes or mtimes differ"
    );
}

#[test]
fn rsync_with_hard_links_and_xattrs_round_trips() {
    let (work, m) = embedded();
    let src = work.path().join("src");
    tree_with_links_and_xattrs(&src);
    let inside = m.path.join("copy");
    let back = work.path().join("back");
    sh(&format!(
        "rsync -aHAX {}/ {}/",
        src.display(),
        inside.display()
    ));
    assert_same_tree(&src, &inside);
    let a = fs::metadata(inside.join("d1/shared")).expect("stat");
    let b = fs::metadata(inside.join("d2/shared-link")).expect("stat");
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 3),
        "hard links kept as links"
    );
    sh(&format!(
        "rsync -aHAX {}/ {}/",
        inside.display(),
        back.display()
    ));
    assert_same_tree(&src, &back);
    // Unlinking one name leaves the others intact.
    fs::remove_file(inside.join("d1/shared")).expect("unlink one name");
    assert_eq!(
        fs::read(inside.join("d2/shared-link")).expect("read"),
        b"one inode, three names"
    );
    assert_eq!(
        fs::metadata(inside.join("d1/shared-again"))
            .expect("stat")
            .nlink(),
        2
    );
}

#[test]
fn extended_attributes_follow_setxattr_flags() {
    let (_work, m) = embedded();
    let f = m.path.join("f");
    fs::write(&f, b"x").expect("write");
    let p = f.display();
    sh(&format!("setfattr -n user.a -v 1 {p}"));
    assert_eq!(
        sh(&format!("getfattr --only-values -n user.a {p}")),
        "1",
        "value read back"
    );
    // Missing names: ENODATA, for get and remove.
    let missing = std::process::Command::new("getfattr")
        .args(["-n", "user.none"])
        .arg(&f)
        .output()
        .expect("getfattr");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("No such attribute"));
    // XATTR_CREATE on an existing name and XATTR_REPLACE on a missing one
    // fail; python's os.setxattr passes the flags straight through.
    let script = _work.path().join("flags.py");
    fs::write(
        &script,
        r#"import errno, os, sys
p = sys.argv[1]
try:
    os.setxattr(p, 'user.a', b'2', os.XATTR_CREATE)
    raise SystemExit('create over an existing name worked')
except OSError as e:
    assert e.errno == errno.EEXIST, e
try:
    os.setxattr(p, 'user.b', b'2', os.XATTR_REPLACE)
    raise SystemExit('replace of a missing name worked')
except OSError as e:
    assert e.errno == errno.ENODATA, e
os.setxattr(p, 'user.a', b'3', os.XATTR_REPLACE)
os.setxattr(p, 'user.big', b'v' * 65536)
assert sorted(os.listxattr(p)) == ['user.a', 'user.big'], os.listxattr(p)
assert os.getxattr(p, 'user.a') == b'3'
os.removexattr(p, 'user.a')
assert os.listxattr(p) == ['user.big'], os.listxattr(p)
"#,
    )
    .expect("write script");
    sh(&format!("python3 {} {p}", script.display()));
    // Attributes go with the file.
    fs::remove_file(&f).expect("rm");
    fs::write(&f, b"y").expect("recreate");
    assert_eq!(sh(&format!("getfattr -d {p}")), "");
}

#[test]
fn git_clone_commit_and_fsck() {
    let (work, m) = embedded();
    let origin = work.path().join("origin");
    sh(&format!(
        "git init -q {o} && cd {o} && git config user.email t@example.com && \
         git config user.name tester && printf 'hello\\n' > a && mkdir -p dir && \
         seq 1 20000 > dir/numbers && git add . && git commit -qm first",
        o = origin.display()
    ));
    let clone = m.path.join("clone");
    sh(&format!(
        "git clone -q {} {c} && cd {c} && git config user.email t@example.com && \
         git config user.name tester && printf 'more\\n' >> a && git mv dir/numbers dir/n && \
         git commit -qam second && git gc -q && git fsck --strict --full && \
         test \"$(git log --oneline | wc -l)\" = 2 && test -z \"$(git status --porcelain)\"",
        origin.display(),
        c = clone.display()
    ));
}

#[test]
fn a_c_program_builds_with_make() {
    let (_work, m) = embedded();
    let dir = m.path.join("hello");
    fs::create_dir(&dir).expect("mkdir");
    fs::write(
        dir.join("hello.c"),
        "#include <stdio.h>\n#include \"msg.h\"\nint main(void) { puts(MSG); return 0; }\n",
    )
    .expect("write");
    fs::write(dir.join("msg.h"), "#define MSG \"built on dfs\"\n").expect("write");
    fs::write(
        dir.join("Makefile"),
        "hello: hello.o\n\tcc -o $@ $^\nhello.o: hello.c msg.h\n\tcc -c -o $@ $<\n",
    )
    .expect("write");
    let out = sh(&format!("cd {d} && make -s && ./hello", d = dir.display()));
    assert_eq!(out, "built on dfs\n");
    // An edit of a header rebuilds (mtimes must order correctly).
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(dir.join("msg.h"), "#define MSG \"rebuilt\"\n").expect("write");
    let out = sh(&format!("cd {d} && make -s && ./hello", d = dir.display()));
    assert_eq!(out, "rebuilt\n");
}
