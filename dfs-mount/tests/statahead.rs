//! Statahead on real mounts: a mount that looks up the names of a directory
//! one after another (`stat` of each file after the kernel dropped its
//! dentries) reads the directory a page at a time with attributes instead
//! of asking dfs-meta name by name, and still keeps the default level's
//! promises: a file another client closed opens with that client's bytes,
//! a name another client adds is found, this client's own changes show at
//! once, and no attribute is older than the cache lifetime (1 s).
//! Lookups of new names in a directory the mount made are answered by the
//! mount itself under dfs-meta's directory lease, with the same promises.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const FILES: usize = 60;

/// A default (`read-own`) mount answers lookups of names absent from a
/// directory it made (the kernel's lookup before each create) without
/// asking dfs-meta while it holds the directory's lease; another client
/// adding a name there first waits the lease out, so the first mount finds
/// that name at once afterwards (close-to-open), and asks dfs-meta again.
#[test]
fn new_names_in_a_leased_directory_need_no_lookup_and_keep_close_to_open() {
    let (meta_port, _cluster, a, b) = two_mounts();
    let (in_a, in_b) = (a.path.join("leased"), b.path.join("leased"));
    fs::create_dir(&in_a).expect("mkdir");
    let lookups = meta_rpcs(meta_port, "Lookup");
    for i in 0..FILES {
        fs::write(in_a.join(format!("f{i:02}")), b"a").expect("create");
    }
    fs::create_dir(in_a.join("sub")).expect("mkdir in it");
    fs::rename(in_a.join("f00"), in_a.join("g00")).expect("rename");
    fs::remove_file(in_a.join("f01")).expect("unlink");
    assert!(!in_a.join("f01").exists() && !in_a.join("f00").exists());
    assert_eq!(fs::read(in_a.join("g00")).expect("renamed"), b"a");
    let lookups = meta_rpcs(meta_port, "Lookup") - lookups;
    assert!(
        lookups <= 2.0,
        "{FILES} creates in a directory this mount made cost {lookups} lookups in dfs-meta"
    );

    // B adds names (a file, a link, a rename into it): each is found
    // through A as soon as B's change returns.
    fs::write(in_b.join("theirs"), b"b").expect("create through b");
    assert_eq!(fs::read(in_a.join("theirs")).expect("close-to-open"), b"b");
    fs::write(in_a.join("mine"), b"a").expect("A goes on creating");
    assert_eq!(fs::read(in_b.join("mine")).expect("through b"), b"a");
    fs::hard_link(in_b.join("theirs"), in_b.join("linked")).expect("link through b");
    assert_eq!(fs::read(in_a.join("linked")).expect("a link b made"), b"b");
    fs::write(b.path.join("outside"), b"moved").expect("create through b");
    fs::rename(b.path.join("outside"), in_b.join("moved")).expect("rename through b");
    assert_eq!(
        fs::read(in_a.join("moved")).expect("a rename b made"),
        b"moved"
    );

    // The same between two directories each mount made for itself.
    fs::create_dir(in_b.join("from-b")).expect("mkdir through b");
    fs::write(in_b.join("from-b/1"), b"1").expect("create through b");
    fs::write(in_a.join("from-b/2"), b"2").expect("create through a");
    assert_eq!(
        fs::read(in_b.join("from-b/2")).expect("close-to-open"),
        b"2"
    );
}

#[test]
fn names_looked_up_one_after_another_come_from_pages_that_keep_close_to_open() {
    let (meta_port, _cluster, a, b) = two_mounts();
    let (in_a, in_b) = (a.path.join("d"), b.path.join("d"));
    fs::create_dir(&in_a).expect("mkdir");
    for i in 0..FILES {
        fs::write(in_a.join(format!("f{i:02}")), vec![i as u8; 100 + i]).expect("create");
    }

    // B has never seen these names: each stat is a lookup.
    let (lookups, pages) = (
        meta_rpcs(meta_port, "Lookup"),
        meta_rpcs(meta_port, "ReadDir"),
    );
    for i in 0..FILES {
        let len = fs::metadata(in_b.join(format!("f{i:02}")))
            .expect("stat through b")
            .len();
        assert_eq!(len, (100 + i) as u64, "f{i:02}'s size through b");
    }
    let lookups = meta_rpcs(meta_port, "Lookup") - lookups;
    let pages = meta_rpcs(meta_port, "ReadDir") - pages;
    assert!(
        pages >= 1.0 && lookups <= 10.0,
        "{FILES} stats cost {lookups} lookups and {pages} pages in dfs-meta"
    );

    // A rewrites a file B stat'ed from a page, and adds one.
    fs::write(in_a.join("f30"), vec![7u8; 5000]).expect("rewrite through a");
    fs::write(in_a.join("new"), b"from a").expect("create through a");
    // Close-to-open: B opens and reads what A closed, at once.
    assert_eq!(
        fs::read(in_b.join("f30")).expect("read through b"),
        vec![7u8; 5000],
        "a file another client closed reads as it closed it"
    );
    assert_eq!(fs::read(in_b.join("new")).expect("found"), b"from a");

    // B's own changes show at once in B.
    for i in 40..FILES {
        fs::metadata(in_b.join(format!("f{i:02}"))).expect("stat through b");
    }
    fs::write(in_b.join("f50"), vec![1u8; 3000]).expect("rewrite through b");
    fs::remove_file(in_b.join("f51")).expect("unlink through b");
    for i in 40..FILES {
        let seen = fs::metadata(in_b.join(format!("f{i:02}")));
        match i {
            50 => assert_eq!(seen.expect("own rewrite").len(), 3000),
            51 => assert!(seen.is_err(), "own unlink shows at once"),
            _ => assert_eq!(seen.expect("stat").len(), (100 + i) as u64),
        }
    }

    // Another client's change to an attribute shows within the cache
    // lifetime (1 s), pages or not.
    fs::write(in_a.join("f20"), vec![9u8; 7000]).expect("rewrite through a");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        fs::metadata(in_b.join("f20")).expect("stat").len(),
        7000,
        "another client's change shows after the TTL"
    );
}

/// Close-to-open with the file's attributes in the kernel's cache: B
/// looked the file up (one lookup, no page) just before A rewrote it
/// larger; B's open must still read all of A's bytes, not stop at the size
/// the kernel kept.
#[test]
fn a_file_looked_up_before_another_client_grew_it_opens_whole() {
    let cluster = TestCluster::start(1, 3);
    let a = TestMount::start(&cluster.meta_addr(), &[]);
    let b = TestMount::start(&cluster.meta_addr(), &[]);
    fs::write(a.path.join("f"), b"short").expect("create through a");
    assert_eq!(fs::metadata(b.path.join("f")).expect("stat").len(), 5);
    fs::write(a.path.join("f"), vec![3u8; 9000]).expect("rewrite through a");
    assert_eq!(
        fs::read(b.path.join("f")).expect("read through b").len(),
        9000,
        "B's open reads what A closed"
    );
}

/// The kernel asks for an open file's attributes again after its writes
/// and setattrs (a chown's set-id check, `fstat`): a default mount answers
/// from dfs-meta's last answer while it has changed nothing since, so
/// unpacking files as `tar x` does (create, write, set the mtime, chown,
/// chmod through the descriptor, close) asks dfs-meta for no attributes.
/// What the mount shows is still its own latest change, and an open after
/// another client's change shows that change (close-to-open).
#[test]
fn an_open_file_shows_its_own_latest_attributes_without_asking_dfs_meta() {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let (meta_port, _cluster, a, b) = two_mounts();
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let getattrs = meta_rpcs(meta_port, "GetAttr");
    for i in 0..FILES {
        let mut f = fs::File::create_new(a.path.join(format!("t{i:02}"))).expect("create");
        f.write_all(b"0123456789").expect("write");
        f.set_modified(mtime).expect("futimens");
        std::os::unix::fs::fchown(&f, Some(1000), Some(1000)).expect("fchown");
        f.set_permissions(fs::Permissions::from_mode(0o640))
            .expect("fchmod");
        let st = f.metadata().expect("fstat");
        assert_eq!(
            (st.len(), st.mode() & 0o7777, st.uid(), st.gid()),
            (10, 0o640, 1000, 1000)
        );
        assert_eq!(st.modified().expect("mtime"), mtime);
    }
    let getattrs = meta_rpcs(meta_port, "GetAttr") - getattrs;
    assert!(
        getattrs <= 2.0,
        "{FILES} files unpacked asked dfs-meta for attributes {getattrs} times"
    );

    // Its own change shows at once.
    let f = fs::OpenOptions::new()
        .append(true)
        .open(a.path.join("t00"))
        .expect("open");
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .expect("fchmod");
    assert_eq!(f.metadata().expect("fstat").mode() & 0o7777, 0o600);
    (&f).write_all(b"more").expect("append");
    assert_eq!(f.metadata().expect("fstat").len(), 14);
    drop(f);

    // Another client's change shows to an open after it.
    fs::write(b.path.join("t01"), vec![7u8; 20]).expect("rewrite through b");
    let f = fs::File::open(a.path.join("t01")).expect("open through a");
    assert_eq!(f.metadata().expect("fstat").len(), 20);
    assert_eq!(fs::read(a.path.join("t01")).expect("read"), vec![7u8; 20]);
}
