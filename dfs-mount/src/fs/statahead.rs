//! Statahead: a directory whose names are looked up one after another is
//! read a page at a time with every entry's attributes, and the lookups
//! that follow are answered from the page.
//!
//! `stat` of each file of a directory after the kernel dropped its dentries
//! (memory pressure, `drop_caches`, a fresh mount), `git status`, `make`
//! checking its targets, `rsync` comparing a tree: each is one lookup a
//! name, each a round trip to dfs-meta that costs far more in thread
//! hand-offs than in dfs-meta's own work. One page of a directory with
//! attributes ([`ReadDirRequest::plus`]) costs about as much as a few
//! lookups and answers a thousand. Lustre's statahead is the precedent.
//!
//! When: after [`TRIGGER`] lookups in one directory that went to dfs-meta
//! while this client changed nothing (a tree being copied into looks names
//! up too, but changes it between them), the next lookup there reads the
//! page from the directory's first name (or, when a page was read before,
//! from the name looked up) beside its own lookup. A lookup past the end of
//! a page that had more reads the next page at once.
//!
//! Consistency: a page answers only while it is younger than the mount's
//! cache lifetime (`ttl`, 1 s for `consistency=read-own`), and the kernel
//! is told to keep the answer only for what is left of it, so no answer is
//! older than one the kernel may keep from a lookup of its own. And only
//! while this client has made no metadata change since it asked for the
//! page ([`crate::client::MetaRpc::changes`]): a client always sees its own
//! changes. `consistency=strong` (ttl 0) turns it off.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dfs_proto::{DirEntry, InodeRecord};
use parking_lot::Mutex;

/// Lookups in one directory that go to dfs-meta before its page is read.
pub const TRIGGER: u32 = 4;

/// Entries one page asks for.
pub const PAGE_ENTRIES: u32 = 1024;

/// Directories tracked at once; past it the stale ones are dropped.
const MAX_DIRS: usize = 1024;

struct Page {
    entries: HashMap<Vec<u8>, InodeRecord>,
    /// The page's last name, and whether the directory has names after it.
    last: Vec<u8>,
    more: bool,
    /// When it was asked for, and the client's change count then.
    asked: Instant,
    changes: u64,
}

impl Page {
    fn valid(&self, ttl: Duration, changes: u64) -> Option<Duration> {
        if self.changes != changes {
            return None;
        }
        ttl.checked_sub(self.asked.elapsed())
            .filter(|left| !left.is_zero())
    }
}

#[derive(Default)]
struct Dir {
    /// Lookups that went to dfs-meta since the streak began.
    streak: u32,
    /// The client's change count when the streak began, and when the last
    /// lookup of it was.
    streak_changes: u64,
    streak_last: Option<Instant>,
    page: Option<Page>,
}

/// What a lookup that the pages could not answer should ask for beside
/// itself.
#[derive(Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Names strictly after this one (empty: from the first).
    pub after: Vec<u8>,
}

#[derive(Default)]
pub struct Statahead {
    /// Zero: off.
    ttl: Mutex<Duration>,
    dirs: Mutex<HashMap<u64, Dir>>,
}

impl Statahead {
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock() = ttl;
        if ttl.is_zero() {
            self.dirs.lock().clear();
        }
    }

    fn ttl(&self) -> Duration {
        *self.ttl.lock()
    }

    /// `name` in `parent` from a page, and how much longer the answer
    /// holds; `changes` is the client's change count now.
    pub fn answer(
        &self,
        parent: u64,
        name: &[u8],
        changes: u64,
    ) -> Option<(InodeRecord, Duration)> {
        let ttl = self.ttl();
        if ttl.is_zero() {
            return None;
        }
        let dirs = self.dirs.lock();
        let page = dirs.get(&parent)?.page.as_ref()?;
        let left = page.valid(ttl, changes)?;
        Some((page.entries.get(name)?.clone(), left))
    }

    /// A lookup of `name` in `parent` that no page answered is going to
    /// dfs-meta: whether it should read a page beside it.
    pub fn missed(&self, parent: u64, name: &[u8], changes: u64) -> Option<PageRequest> {
        let ttl = self.ttl();
        if ttl.is_zero() {
            return None;
        }
        let now = Instant::now();
        let mut dirs = self.dirs.lock();
        if dirs.len() >= MAX_DIRS && !dirs.contains_key(&parent) {
            dirs.retain(|_, d| d.streak_last.is_some_and(|t| now - t < ttl));
            if dirs.len() >= MAX_DIRS {
                dirs.clear();
            }
        }
        let dir = dirs.entry(parent).or_default();
        // Reading on past the end of a page that had more.
        if let Some(page) = &dir.page {
            if page.more && page.valid(ttl, changes).is_some() && name > page.last.as_slice() {
                dir.page = None;
                dir.streak = 0;
                return Some(PageRequest {
                    after: name.to_vec(),
                });
            }
        }
        let streak_alive =
            dir.streak_changes == changes && dir.streak_last.is_some_and(|t| now - t < ttl);
        if !streak_alive {
            dir.streak = 0;
            dir.streak_changes = changes;
        }
        dir.streak += 1;
        dir.streak_last = Some(now);
        if dir.streak < TRIGGER {
            return None;
        }
        dir.streak = 0;
        let after = match dir.page.take() {
            // A page read before did not hold this name: the walk is not
            // from the start, so read on from where it is.
            Some(_) => name.to_vec(),
            None => Vec::new(),
        };
        Some(PageRequest { after })
    }

    /// A page of `parent` read with attributes, asked for at `asked` when
    /// the client's change count was `changes`.
    pub fn store(
        &self,
        parent: u64,
        entries: Vec<DirEntry>,
        more: bool,
        asked: Instant,
        changes: u64,
    ) {
        let last = entries.last().map(|e| e.name.clone()).unwrap_or_default();
        let entries = entries
            .into_iter()
            .filter_map(|e| Some((e.name, e.attr?)))
            .collect();
        if let Some(dir) = self.dirs.lock().get_mut(&parent) {
            dir.page = Some(Page {
                entries,
                last,
                more,
                asked,
                changes,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, ino: u64) -> DirEntry {
        DirEntry {
            name: name.as_bytes().to_vec(),
            ino,
            kind: 0,
            attr: Some(InodeRecord {
                ino,
                size: ino * 10,
                ..Default::default()
            }),
        }
    }

    fn on(ttl: Duration) -> Statahead {
        let s = Statahead::default();
        s.set_ttl(ttl);
        s
    }

    #[test]
    fn a_run_of_lookups_reads_the_directory_once_and_later_lookups_come_from_it() {
        let s = on(Duration::from_secs(60));
        for name in ["a", "b", "c"] {
            assert_eq!(s.missed(1, name.as_bytes(), 0), None);
        }
        let asked = s
            .missed(1, b"d", 0)
            .expect("the fourth lookup reads a page");
        assert_eq!(asked.after, b"");
        s.store(
            1,
            vec![entry("a", 2), entry("e", 3)],
            false,
            Instant::now(),
            0,
        );
        let (attr, left) = s.answer(1, b"e", 0).expect("answered from the page");
        assert_eq!((attr.ino, attr.size), (3, 30));
        assert!(left <= Duration::from_secs(60) && !left.is_zero());
        assert!(
            s.answer(1, b"zz", 0).is_none(),
            "names not in it go to dfs-meta"
        );
        assert!(s.answer(2, b"e", 0).is_none(), "only in its own directory");
    }

    #[test]
    fn any_change_by_this_client_or_the_ttl_ends_a_page() {
        let s = on(Duration::from_millis(40));
        for name in ["a", "b", "c", "d"] {
            s.missed(1, name.as_bytes(), 5);
        }
        s.store(1, vec![entry("e", 3)], false, Instant::now(), 5);
        assert!(s.answer(1, b"e", 5).is_some());
        assert!(
            s.answer(1, b"e", 6).is_none(),
            "this client changed something"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(s.answer(1, b"e", 5).is_none(), "older than the ttl");
    }

    #[test]
    fn lookups_between_changes_never_read_a_page() {
        let s = on(Duration::from_secs(60));
        for (i, name) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            // A tree copied into: each lookup is followed by a create.
            assert_eq!(s.missed(1, name.as_bytes(), i as u64), None);
        }
    }

    #[test]
    fn a_lookup_past_a_page_with_more_reads_the_next_page_from_its_name() {
        let s = on(Duration::from_secs(60));
        for name in ["a", "b", "c", "d"] {
            s.missed(1, name.as_bytes(), 0);
        }
        s.store(
            1,
            vec![entry("a", 2), entry("m", 3)],
            true,
            Instant::now(),
            0,
        );
        assert_eq!(
            s.missed(1, b"n", 0),
            Some(PageRequest {
                after: b"n".to_vec()
            })
        );
        // A name before the page's end that it did not hold is a plain miss.
        s.store(
            1,
            vec![entry("o", 4), entry("t", 5)],
            true,
            Instant::now(),
            0,
        );
        assert_eq!(s.missed(1, b"p", 0), None);
    }

    #[test]
    fn strong_consistency_has_no_pages() {
        let s = on(Duration::ZERO);
        for name in ["a", "b", "c", "d", "e"] {
            assert_eq!(s.missed(1, name.as_bytes(), 0), None);
        }
        s.store(1, vec![entry("a", 2)], false, Instant::now(), 0);
        assert!(s.answer(1, b"a", 0).is_none());
    }
}
