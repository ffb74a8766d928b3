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
//! When: after [`TRIGGER`] lookups in one directory that found their names
//! through dfs-meta while this client changed nothing (a tree being copied
//! into looks names up too, but changes it between them; names that are
//! not there, as a PATH search probes, do not count), the next lookup there
//! reads the page from the directory's first name (or, once a page was
//! read, from the name looked up) beside its own lookup. A lookup past the
//! end of a page that had more and answered lookups reads the next page at
//! once. A page that answers fewer than [`TRIGGER`] lookups doubles the run
//! the directory's next page waits for (random lookups in a large
//! directory), up to [`TRIGGER`] << [`MAX_BACKOFF`]. At most [`MAX_PAGES`]
//! pages are kept; a page no longer valid is dropped when next looked at.
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

/// Lookups in one directory found through dfs-meta before the next one
/// reads a page.
pub const TRIGGER: u32 = 3;

/// Entries one page asks for.
pub const PAGE_ENTRIES: u32 = 1024;

/// Pages kept at once (each up to [`PAGE_ENTRIES`] attributes).
pub const MAX_PAGES: usize = 64;

/// Useless pages in a row past which the run a page waits for stops
/// doubling.
pub const MAX_BACKOFF: u32 = 8;

/// Directories tracked at once; past it the idle ones are dropped.
const MAX_DIRS: usize = 1024;

struct Page {
    entries: HashMap<Vec<u8>, InodeRecord>,
    /// The page's last name, and whether the directory has names after it.
    last: Vec<u8>,
    more: bool,
    /// When it was asked for, and the client's change count then.
    asked: Instant,
    changes: u64,
    /// Lookups it answered.
    hits: u32,
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
    /// Lookups found through dfs-meta in a row, the client's change count
    /// when the run began, and when its last lookup was.
    streak: u32,
    streak_changes: u64,
    streak_last: Option<Instant>,
    /// Pages in a row that answered fewer than [`TRIGGER`] lookups.
    useless: u32,
    /// Whether a page of it was ever read (the next reads on from the
    /// name looked up, not from the first).
    paged: bool,
    page: Option<Page>,
}

impl Dir {
    /// The run of lookups, begun again if this client changed something
    /// since or the last lookup is older than the TTL.
    fn streak(&mut self, changes: u64, now: Instant, ttl: Duration) -> &mut u32 {
        let alive =
            self.streak_changes == changes && self.streak_last.is_some_and(|t| now - t < ttl);
        if !alive {
            self.streak = 0;
            self.streak_changes = changes;
        }
        &mut self.streak
    }

    /// Drops the page, noting whether it was worth reading.
    fn retire(&mut self) {
        if let Some(page) = self.page.take() {
            self.useless = if page.hits < TRIGGER {
                (self.useless + 1).min(MAX_BACKOFF)
            } else {
                0
            };
        }
    }
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
        let mut dirs = self.dirs.lock();
        let dir = dirs.get_mut(&parent)?;
        let page = dir.page.as_mut()?;
        let Some(left) = page.valid(ttl, changes) else {
            dir.retire();
            return None;
        };
        let found = page.entries.get(name)?.clone();
        page.hits += 1;
        Some((found, left))
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
            dirs.retain(|_, d| d.page.is_some() || d.streak_last.is_some_and(|t| now - t < ttl));
            if dirs.len() >= MAX_DIRS {
                dirs.clear();
            }
        }
        let dir = dirs.entry(parent).or_default();
        // Reading on past the end of a page that had more and was used.
        let read_on = dir.page.as_ref().is_some_and(|page| {
            page.more
                && page.hits >= TRIGGER
                && page.valid(ttl, changes).is_some()
                && name > page.last.as_slice()
        });
        let needed = TRIGGER << dir.useless;
        if !read_on && *dir.streak(changes, now, ttl) < needed {
            return None;
        }
        dir.streak = 0;
        dir.retire();
        let after = if dir.paged { name.to_vec() } else { Vec::new() };
        dir.paged = true;
        Some(PageRequest { after })
    }

    /// A lookup in `parent` that went to dfs-meta found its name.
    pub fn found(&self, parent: u64, changes: u64) {
        let ttl = self.ttl();
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        if let Some(dir) = self.dirs.lock().get_mut(&parent) {
            *dir.streak(changes, now, ttl) += 1;
            dir.streak_last = Some(now);
        }
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
        let mut dirs = self.dirs.lock();
        let Some(dir) = dirs.get_mut(&parent) else {
            return;
        };
        dir.retire();
        dir.page = Some(Page {
            entries,
            last,
            more,
            asked,
            changes,
            hits: 0,
        });
        // Past the bound, the oldest page goes.
        let pages = dirs.values().filter(|d| d.page.is_some()).count();
        if pages > MAX_PAGES {
            let oldest = dirs
                .iter()
                .filter_map(|(ino, d)| Some((d.page.as_ref()?.asked, *ino)))
                .min()
                .map(|(_, ino)| ino);
            if let Some(dir) = oldest.and_then(|ino| dirs.get_mut(&ino)) {
                dir.retire();
            }
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

    /// `n` lookups of names found through dfs-meta, none reading a page.
    fn found_run(s: &Statahead, dir: u64, names: &[&str], changes: u64) {
        for name in names {
            assert_eq!(s.missed(dir, name.as_bytes(), changes), None, "{name}");
            s.found(dir, changes);
        }
    }

    #[test]
    fn a_run_of_lookups_reads_the_directory_once_and_later_lookups_come_from_it() {
        let s = on(Duration::from_secs(60));
        found_run(&s, 1, &["a", "b", "c"], 0);
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
        found_run(&s, 1, &["a", "b", "c"], 5);
        assert!(s.missed(1, b"d", 5).is_some());
        s.store(1, vec![entry("e", 3)], false, Instant::now(), 5);
        assert!(s.answer(1, b"e", 5).is_some());
        assert!(
            s.answer(1, b"e", 6).is_none(),
            "this client changed something"
        );
        s.store(1, vec![entry("e", 3)], false, Instant::now(), 5);
        std::thread::sleep(Duration::from_millis(50));
        assert!(s.answer(1, b"e", 5).is_none(), "older than the ttl");
    }

    #[test]
    fn lookups_between_changes_or_of_absent_names_never_read_a_page() {
        let s = on(Duration::from_secs(60));
        for (i, name) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            // A tree copied into: each lookup is followed by a create.
            found_run(&s, 1, &[name], i as u64);
        }
        for name in ["p", "q", "r", "s", "t", "u"] {
            // A PATH search: none of them is there.
            assert_eq!(s.missed(2, name.as_bytes(), 0), None);
        }
    }

    #[test]
    fn a_lookup_past_a_used_page_with_more_reads_the_next_page_from_its_name() {
        let s = on(Duration::from_secs(60));
        found_run(&s, 1, &["a", "b", "c"], 0);
        s.missed(1, b"d", 0);
        let page = vec![entry("a", 2), entry("b", 3), entry("c", 4), entry("m", 5)];
        s.store(1, page, true, Instant::now(), 0);
        assert_eq!(
            s.missed(1, b"n", 0),
            None,
            "a page that answered nothing yet"
        );
        for name in ["a", "b", "c"] {
            assert!(s.answer(1, name.as_bytes(), 0).is_some());
        }
        assert_eq!(
            s.missed(1, b"n", 0),
            Some(PageRequest {
                after: b"n".to_vec()
            })
        );
    }

    #[test]
    fn useless_pages_make_the_next_wait_longer() {
        let s = on(Duration::from_secs(60));
        found_run(&s, 1, &["a", "b", "c"], 0);
        assert!(s.missed(1, b"d", 0).is_some());
        // Random lookups the page does not hold: it answers nothing.
        s.store(1, vec![entry("x", 2)], false, Instant::now(), 0);
        found_run(&s, 1, &["d", "e", "f"], 0);
        assert!(s.missed(1, b"g", 0).is_some());
        s.store(1, vec![entry("x", 2)], false, Instant::now(), 0);
        found_run(&s, 1, &["g", "h", "i", "j", "k", "l"], 0);
        assert!(s.missed(1, b"m", 0).is_some(), "after twice the run");
    }

    #[test]
    fn pages_are_bounded() {
        let s = on(Duration::from_secs(60));
        for dir in 0..(MAX_PAGES as u64 + 10) {
            found_run(&s, dir, &["a", "b", "c"], 0);
            assert!(s.missed(dir, b"d", 0).is_some());
            s.store(dir, vec![entry("e", 3)], false, Instant::now(), 0);
        }
        let pages = s.dirs.lock().values().filter(|d| d.page.is_some()).count();
        assert_eq!(pages, MAX_PAGES);
        assert!(
            s.answer(MAX_PAGES as u64 + 9, b"e", 0).is_some(),
            "the newest stays"
        );
    }

    #[test]
    fn strong_consistency_has_no_pages() {
        let s = on(Duration::ZERO);
        found_run(&s, 1, &["a", "b", "c", "d", "e"], 0);
        s.store(1, vec![entry("a", 2)], false, Instant::now(), 0);
        assert!(s.answer(1, b"a", 0).is_none());
    }
}
