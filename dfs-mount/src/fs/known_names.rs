//! Directories whose every name this client knows, so that a lookup of a
//! name that is not there is answered without a round trip.
//!
//! Copying a tree (`cp -r`, `tar x`, `git checkout`) looks up each new name
//! before creating it, and every one of those lookups is a miss: a third of
//! the metadata requests of a small file. A directory this client made is
//! empty; each change this client makes to it comes back with the
//! directory's [`InodeRecord::entry_changes`], which dfs-meta bumps once per
//! transaction that changes its entries. If that is exactly one past the
//! count the view last saw, the change was this client's own and no one
//! else's came between, so the view still holds every name. Anything else
//! (another client's change, a failed change, two of ours racing) drops the
//! view, and lookups go to dfs-meta again.
//!
//! A view answers "absent" only within the mount's cache lifetime (`ttl`,
//! 1 s for `consistency=read-own`) of its last confirmation, like the
//! kernel's own negative dentries: a name another client created in the
//! last second may be missed, as a cached entry may. `consistency=strong`
//! (ttl 0) turns this off.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use dfs_proto::InodeRecord;
use parking_lot::Mutex;

/// Directories with a view at once; past it, views are dropped (the
/// oldest first would need an order; dropping all is rare and only costs
/// lookups).
const MAX_VIEWS: usize = 1024;

/// Names one view holds at most; a directory larger than this is looked
/// up in dfs-meta.
const MAX_NAMES: usize = 100_000;

struct View {
    entry_changes: u64,
    names: HashSet<Vec<u8>>,
    confirmed: Instant,
}

/// How a change this client made altered a directory's names.
pub enum NameChange<'a> {
    Added(&'a [u8]),
    Removed(&'a [u8]),
    /// A rename within the directory (one change, both names).
    Renamed {
        from: &'a [u8],
        to: &'a [u8],
    },
    /// The same names (RENAME_EXCHANGE).
    Unchanged,
}

#[derive(Default)]
pub struct KnownNames {
    /// Zero: off.
    ttl: Mutex<Duration>,
    views: Mutex<HashMap<u64, View>>,
}

impl KnownNames {
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock() = ttl;
        if ttl.is_zero() {
            self.views.lock().clear();
        }
    }

    fn ttl(&self) -> Duration {
        *self.ttl.lock()
    }

    /// A directory this client just made (empty).
    pub fn made(&self, dir: &InodeRecord) {
        if self.ttl().is_zero() {
            return;
        }
        let mut views = self.views.lock();
        if views.len() >= MAX_VIEWS {
            let ttl = self.ttl();
            views.retain(|_, v| v.confirmed.elapsed() < ttl);
            if views.len() >= MAX_VIEWS {
                views.clear();
            }
        }
        views.insert(
            dir.ino,
            View {
                entry_changes: dir.entry_changes,
                names: HashSet::new(),
                confirmed: Instant::now(),
            },
        );
    }

    /// This client changed `dir`'s entries and dfs-meta answered with `after`
    /// (the directory as some change left it, this one's or a later one's).
    pub fn changed(&self, after: Option<&InodeRecord>, dir: u64, change: NameChange<'_>) {
        let mut views = self.views.lock();
        let Some(view) = views.get_mut(&dir) else {
            return;
        };
        let Some(after) = after.filter(|a| a.entry_changes == view.entry_changes + 1) else {
            views.remove(&dir);
            return;
        };
        match change {
            NameChange::Added(name) => {
                view.names.insert(name.to_vec());
            }
            NameChange::Removed(name) => {
                view.names.remove(name);
            }
            NameChange::Renamed { from, to } => {
                view.names.remove(from);
                view.names.insert(to.to_vec());
            }
            NameChange::Unchanged => {}
        }
        if view.names.len() > MAX_NAMES {
            views.remove(&dir);
            return;
        }
        view.entry_changes = after.entry_changes;
        view.confirmed = Instant::now();
    }

    /// A change of `dir` that failed or whose outcome is unknown.
    pub fn forget(&self, dir: u64) {
        self.views.lock().remove(&dir);
    }

    /// Whether `name` is certainly not in `dir`, as of less than the cache
    /// lifetime ago.
    pub fn absent(&self, dir: u64, name: &[u8]) -> bool {
        let ttl = self.ttl();
        let views = self.views.lock();
        views
            .get(&dir)
            .is_some_and(|v| v.confirmed.elapsed() < ttl && !v.names.contains(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(ino: u64, entry_changes: u64) -> InodeRecord {
        InodeRecord {
            ino,
            entry_changes,
            ..Default::default()
        }
    }

    #[test]
    fn a_made_directory_knows_its_names_while_only_this_client_changes_it() {
        let known = KnownNames::default();
        known.set_ttl(Duration::from_secs(60));
        known.made(&dir(5, 0));
        assert!(known.absent(5, b"a"));
        known.changed(Some(&dir(5, 1)), 5, NameChange::Added(b"a"));
        assert!(!known.absent(5, b"a"), "a name it made is not absent");
        assert!(known.absent(5, b"b"));
        known.changed(
            Some(&dir(5, 2)),
            5,
            NameChange::Renamed {
                from: b"a",
                to: b"b",
            },
        );
        assert!(known.absent(5, b"a") && !known.absent(5, b"b"));
        known.changed(Some(&dir(5, 3)), 5, NameChange::Removed(b"b"));
        assert!(known.absent(5, b"b"));
        // Another client's change came between: the view is gone.
        known.changed(Some(&dir(5, 5)), 5, NameChange::Added(b"c"));
        assert!(!known.absent(5, b"zzz"), "unknown again: dfs-meta decides");
        // Directories it did not make are never known.
        assert!(!known.absent(6, b"a"));
    }

    #[test]
    fn a_failed_change_or_a_lost_answer_drops_the_view() {
        let known = KnownNames::default();
        known.set_ttl(Duration::from_secs(60));
        known.made(&dir(5, 0));
        known.changed(None, 5, NameChange::Added(b"a"));
        assert!(!known.absent(5, b"b"));
        known.made(&dir(7, 0));
        known.forget(7);
        assert!(!known.absent(7, b"b"));
    }

    #[test]
    fn views_expire_and_strong_consistency_has_none() {
        let known = KnownNames::default();
        known.set_ttl(Duration::from_millis(20));
        known.made(&dir(5, 0));
        assert!(known.absent(5, b"a"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !known.absent(5, b"a"),
            "a view older than the ttl decides nothing"
        );
        known.set_ttl(Duration::ZERO);
        known.made(&dir(8, 0));
        assert!(!known.absent(8, b"a"));
    }
}
