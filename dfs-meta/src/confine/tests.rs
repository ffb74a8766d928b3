#![allow(clippy::unwrap_used)]

use super::*;
use crate::namespace::{create, init_root, link, lookup, rename, unlink};
use crate::store::MemStore;
use dfs_proto::{CreateRequest, RenameRequest};

fn make(store: &MemStore, parent: u64, name: &str, kind: FileKind, ino: u64) -> u64 {
    let request = CreateRequest {
        parent,
        name: name.as_bytes().to_vec(),
        kind: kind as i32,
        mode: 0o755,
        ..Default::default()
    };
    transact(store, |t| create(t, &request, ino, 1))
        .unwrap()
        .ino
}

/// `/src/a/f`, `/src/g`, `/etc/passwd`.
fn volume() -> (MemStore, [u64; 5]) {
    let store = MemStore::default();
    transact(&store, |t| {
        init_root(t, 1)?;
        mark_built(t);
        Ok::<_, MetaError>(())
    })
    .unwrap();
    let src = make(&store, ROOT_INO, "src", FileKind::Directory, 10);
    let a = make(&store, src, "a", FileKind::Directory, 11);
    let f = make(&store, a, "f", FileKind::Regular, 12);
    let etc = make(&store, ROOT_INO, "etc", FileKind::Directory, 13);
    let passwd = make(&store, etc, "passwd", FileKind::Regular, 14);
    (store, [src, a, f, etc, passwd])
}

fn reach(store: &MemStore, subtree: &str, ino: u64) -> Result<u64> {
    transact(store, |t| Scope::resolve(t, Some(subtree))?.ino(t, ino))
}

#[test]
fn a_confined_caller_reaches_only_its_subtree() {
    let (store, [src, a, f, etc, passwd]) = volume();
    // Its root is the subtree's directory.
    assert_eq!(reach(&store, "/src", ROOT_INO).unwrap(), src);
    assert_eq!(reach(&store, "/src", a).unwrap(), a);
    assert_eq!(reach(&store, "/src", f).unwrap(), f);
    for outside in [etc, passwd] {
        let refused = reach(&store, "/src", outside);
        assert!(
            matches!(refused, Err(MetaError::AccessDenied(_))),
            "{refused:?}"
        );
    }
    // Deeper subtrees, and one that does not exist or is a file.
    assert_eq!(reach(&store, "/src/a", f).unwrap(), f);
    assert!(reach(&store, "/src/a", src).is_err());
    assert!(matches!(
        reach(&store, "/nope", ROOT_INO),
        Err(MetaError::AccessDenied(_))
    ));
    assert!(reach(&store, "/src/a/f", ROOT_INO).is_err());
    // The whole volume, and "/", map nothing and check nothing.
    assert_eq!(reach(&store, "/", passwd).unwrap(), passwd);
    let whole = transact(&store, |t| Scope::WHOLE.ino(t, ROOT_INO)).unwrap();
    assert_eq!(whole, ROOT_INO);
}

#[test]
fn links_renames_and_unlinks_move_the_boundary() {
    let (store, [src, a, f, etc, passwd]) = volume();
    // A hard link from inside makes a file reachable, as a path would.
    transact(&store, |t| link(t, passwd, a, b"pw", 2)).unwrap();
    assert_eq!(reach(&store, "/src", passwd).unwrap(), passwd);
    transact(&store, |t| unlink(t, a, b"pw", 0, 3)).unwrap();
    assert!(reach(&store, "/src", passwd).is_err());
    // A file moved out, or a directory moved out with what it holds.
    let out = RenameRequest {
        parent: a,
        name: b"f".to_vec(),
        new_parent: etc,
        new_name: b"f".to_vec(),
        ..Default::default()
    };
    transact(&store, |t| rename(t, &out, 4)).unwrap();
    assert!(reach(&store, "/src", f).is_err());
    let dir_out = RenameRequest {
        parent: src,
        name: b"a".to_vec(),
        new_parent: etc,
        new_name: b"a".to_vec(),
        ..Default::default()
    };
    transact(&store, |t| rename(t, &dir_out, 5)).unwrap();
    assert!(reach(&store, "/src", a).is_err());
    // Renaming the subtree's directory takes the access with it.
    let moved = RenameRequest {
        parent: ROOT_INO,
        name: b"src".to_vec(),
        new_parent: ROOT_INO,
        new_name: b"old".to_vec(),
        ..Default::default()
    };
    transact(&store, |t| rename(t, &moved, 6)).unwrap();
    assert!(reach(&store, "/src", ROOT_INO).is_err());
    assert_eq!(reach(&store, "/old", ROOT_INO).unwrap(), src);
}

#[test]
fn an_exchange_swaps_back_references() {
    let (store, [src, _a, _f, etc, passwd]) = volume();
    let g = make(&store, src, "g", FileKind::Regular, 20);
    let swap = RenameRequest {
        parent: src,
        name: b"g".to_vec(),
        new_parent: etc,
        new_name: b"passwd".to_vec(),
        flags: dfs_proto::RENAME_EXCHANGE,
        ..Default::default()
    };
    transact(&store, |t| rename(t, &swap, 2)).unwrap();
    assert!(reach(&store, "/src", g).is_err());
    assert_eq!(reach(&store, "/src", passwd).unwrap(), passwd);
    // Replacing a name drops the replaced file's back-reference.
    let over = RenameRequest {
        parent: src,
        name: b"g".to_vec(),
        new_parent: etc,
        new_name: b"passwd".to_vec(),
        ..Default::default()
    };
    transact(&store, |t| rename(t, &over, 3)).unwrap();
    let left = transact(&store, |t| {
        Ok::<_, MetaError>(t.range(
            &keys::backref_prefix(g),
            &keys::prefix_end(&keys::backref_prefix(g)),
            0,
            false,
        )?)
    })
    .unwrap();
    assert!(left.is_empty(), "the replaced file keeps no link: {left:?}");
}

#[test]
fn an_open_unlinked_file_stays_reachable_from_where_it_was() {
    let (store, [_src, a, f, _etc, _passwd]) = volume();
    transact(&store, |t| unlink(t, a, b"f", f, 2)).unwrap();
    assert_eq!(reach(&store, "/src", f).unwrap(), f);
    assert!(reach(&store, "/etc", f).is_err());
}

#[test]
fn replies_show_the_subtree_as_the_root() {
    let (store, [src, a, f, _etc, _passwd]) = volume();
    transact(&store, |t| {
        let scope = Scope::resolve(t, Some("/src"))?;
        let mut root = get_inode(t, src)?;
        scope.show(&mut root);
        assert_eq!((root.ino, root.parent), (ROOT_INO, ROOT_INO));
        let mut child = lookup(t, src, b"a")?;
        scope.show(&mut child);
        assert_eq!((child.ino, child.parent), (a, ROOT_INO));
        let mut file = get_inode(t, f)?;
        scope.show(&mut file);
        assert_eq!(file.ino, f);
        Ok::<_, MetaError>(())
    })
    .unwrap();
}

#[test]
fn an_old_volume_gets_its_back_references_once() {
    let (store, [src, _a, f, _etc, passwd]) = volume();
    let g = make(&store, src, "g", FileKind::Regular, 20);
    // As a volume made before back-references: none, and no marker.
    let (begin, end) = keys::tag_range(keys::BACKREF);
    let before = transact(&store, |t| {
        let rows = t.range(&begin, &end, 0, false)?;
        t.clear_range(&begin, &end);
        t.clear(&built_marker());
        Ok::<_, MetaError>(rows)
    })
    .unwrap();
    assert_eq!(before.len(), 3);
    assert!(reach(&store, "/src", f).is_err());
    assert_eq!(build_backrefs(&store).unwrap(), 3);
    let after = transact(&store, |t| {
        Ok::<_, MetaError>(t.range(&begin, &end, 0, false)?)
    })
    .unwrap();
    assert_eq!(after, before);
    assert_eq!(reach(&store, "/src", f).unwrap(), f);
    assert_eq!(reach(&store, "/src", g).unwrap(), g);
    assert!(reach(&store, "/src", passwd).is_err());
    assert_eq!(build_backrefs(&store).unwrap(), 0, "once");
}

fn link_problems_of(store: &MemStore) -> Vec<String> {
    let mut all = Vec::new();
    for tag in [keys::DIRENT, keys::BACKREF] {
        let mut from = Vec::new();
        loop {
            let (problems, next) = transact(store, |t| link_problems(t, tag, &from, 2)).unwrap();
            all.extend(problems);
            match next {
                Some(key) => from = key,
                None => break,
            }
        }
    }
    all
}

#[test]
fn fsck_finds_entries_and_back_references_that_disagree() {
    let (store, [src, a, f, _etc, passwd]) = volume();
    transact(&store, |t| link(t, passwd, src, b"pw", 2)).unwrap();
    assert_eq!(link_problems_of(&store), Vec::<String>::new());
    transact(&store, |t| {
        t.clear(&keys::backref(f, a, b"f"));
        t.set(&keys::backref(passwd, a, b"ghost"), &[]);
        Ok::<_, MetaError>(())
    })
    .unwrap();
    let problems = link_problems_of(&store);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("no back-reference"), "{problems:?}");
    assert!(problems[1].contains("ghost"), "{problems:?}");
}
