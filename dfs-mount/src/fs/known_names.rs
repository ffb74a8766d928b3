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
//! How long a view may answer "absent" ([`Views`]):
//! - `consistency=read-own` (close-to-open): while this client holds
//!   dfs-meta's lease on the directory's names (`dfs-meta` `dir_lease`),
//!   counted from before it sent the change that granted or renewed it.
//!   Another client adding a name there first revokes the lease and waits
//!   for it to run out, so a file another client closed always opens.
//! - `consistency=eventual`: the mount's cache lifetime since the last
//!   confirmation, like the kernel's own negative dentries (a name another
//!   client made in that time may be missed, as a cached entry may be
//!   stale).
//! - `consistency=strong`: never.

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

/// Longest name a directory holds (Linux's, as dfs-meta checks).
const NAME_MAX: usize = 255;

/// Taken off a lease's length on this client's clock, for clock rates.
const LEASE_MARGIN: Duration = Duration::from_millis(20);

/// When views answer, by the mount's consistency.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Views {
    #[default]
    Off,
    /// For this long after each confirmation (`eventual`).
    Cached(Duration),
    /// While this client (`client`, its id in requests) holds the
    /// directory's lease (`read-own`).
    Leased { client: u64 },
}

struct View {
    entry_changes: u64,
    names: HashSet<Vec<u8>>,
    /// Until when the view may answer.
    until: Instant,
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

/// Until when a view of `dir` as dfs-meta answered it may answer, for a
/// request sent at `sent`; `None`: it may not. `renewed`: the change added
/// a name, which renews a lease (a removal does not).
fn valid_until(mode: Views, dir: &InodeRecord, sent: Instant, renewed: bool) -> Option<Instant> {
    match mode {
        Views::Off => None,
        Views::Cached(ttl) => Some(Instant::now() + ttl),
        Views::Leased { client } => {
            let held = client != 0 && dir.lease_holder == client && !dir.lease_revoked;
            let lease = dfs_proto::DIRECTORY_LEASE.saturating_sub(LEASE_MARGIN);
            (held && renewed).then(|| sent + lease)
        }
    }
}

#[derive(Default)]
pub struct KnownNames {
    mode: Mutex<Views>,
    views: Mutex<HashMap<u64, View>>,
}

impl KnownNames {
    pub fn set_mode(&self, mode: Views) {
        *self.mode.lock() = mode;
        self.views.lock().clear();
    }

    fn mode(&self) -> Views {
        *self.mode.lock()
    }

    /// The client id to send with changes that add names: only a client
    /// that uses leases takes them (a lease held back other clients'
    /// additions for nothing otherwise). 0: none.
    pub fn lease_client(&self) -> u64 {
        match self.mode() {
            Views::Leased { client } => client,
            _ => 0,
        }
    }

    /// A directory this client just made, with a request sent at `sent`.
    pub fn made(&self, dir: &InodeRecord, sent: Instant) {
        // A create sent again may answer with a directory made earlier,
        // which others may have filled since.
        if dir.entry_changes != 0 {
            return;
        }
        let Some(until) = valid_until(self.mode(), dir, sent, true) else {
            return;
        };
        let mut views = self.views.lock();
        if views.len() >= MAX_VIEWS {
            let now = Instant::now();
            views.retain(|_, v| v.until > now);
            if views.len() >= MAX_VIEWS {
                views.clear();
            }
        }
        views.insert(
            dir.ino,
            View {
                entry_changes: dir.entry_changes,
                names: HashSet::new(),
                until,
            },
        );
    }

    /// This client changed `dir`'s entries with a request sent at `sent`,
    /// and dfs-meta answered with `after` (the directory as some change
    /// left it, this one's or a later one's).
    pub fn changed(
        &self,
        after: Option<&InodeRecord>,
        dir: u64,
        change: NameChange<'_>,
        sent: Instant,
    ) {
        let mode = self.mode();
        let mut views = self.views.lock();
        let Some(view) = views.get_mut(&dir) else {
            return;
        };
        let adds = matches!(change, NameChange::Added(_) | NameChange::Renamed { .. });
        let until = after
            .filter(|a| a.entry_changes == view.entry_changes + 1)
            .and_then(|a| match mode {
                // A removal keeps the lease as it was, if still held.
                Views::Leased { client } if !adds => {
                    (a.lease_holder == client && !a.lease_revoked).then_some(view.until)
                }
                _ => valid_until(mode, a, sent, adds),
            });
        let (Some(after), Some(until)) = (after, until) else {
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
        view.until = until;
    }

    /// A change of `dir` that failed or whose outcome is unknown.
    pub fn forget(&self, dir: u64) {
        self.views.lock().remove(&dir);
    }

    /// For a create answered before it is sent (`fs::early_create`):
    /// when `name` is certainly not in `dir` while the view is of `dir` as
    /// `seen` (its record as this client's last change left it) with at
    /// least `min_left` of its lease ahead, takes the name into the view
    /// and answers when the lease runs out, as this client counts it. The
    /// create's reply then comes to [`KnownNames::changed`] as any other.
    pub fn claim_absent(
        &self,
        seen: &InodeRecord,
        name: &[u8],
        min_left: Duration,
    ) -> Option<Instant> {
        if name.len() > NAME_MAX || !matches!(self.mode(), Views::Leased { .. }) {
            return None;
        }
        let mut views = self.views.lock();
        let view = views.get_mut(&seen.ino)?;
        let claimable = view.entry_changes == seen.entry_changes
            && Instant::now() + min_left <= view.until
            && view.names.len() < MAX_NAMES
            && !view.names.contains(name);
        claimable.then(|| {
            view.names.insert(name.to_vec());
            view.until
        })
    }

    /// Whether `name` is certainly not in `dir` (see [`Views`] for how
    /// certain).
    pub fn absent(&self, dir: u64, name: &[u8]) -> bool {
        // A name no directory can hold is dfs-meta's to refuse
        // (ENAMETOOLONG), not absent (pjdfstest `*::enametoolong_component`).
        if name.len() > NAME_MAX {
            return false;
        }
        let views = self.views.lock();
        views
            .get(&dir)
            .is_some_and(|v| Instant::now() < v.until && !v.names.contains(name))
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

    fn leased(ino: u64, entry_changes: u64, holder: u64, revoked: bool) -> InodeRecord {
        InodeRecord {
            lease_holder: holder,
            lease_revoked: revoked,
            ..dir(ino, entry_changes)
        }
    }

    #[test]
    fn a_made_directory_knows_its_names_while_only_this_client_changes_it() {
        let known = KnownNames::default();
        known.set_mode(Views::Cached(Duration::from_secs(60)));
        let now = Instant::now();
        known.made(&dir(5, 0), now);
        assert!(known.absent(5, b"a"));
        known.changed(Some(&dir(5, 1)), 5, NameChange::Added(b"a"), now);
        assert!(!known.absent(5, b"a"), "a name it made is not absent");
        assert!(known.absent(5, b"b"));
        let renamed = NameChange::Renamed {
            from: b"a",
            to: b"b",
        };
        known.changed(Some(&dir(5, 2)), 5, renamed, now);
        assert!(known.absent(5, b"a") && !known.absent(5, b"b"));
        known.changed(Some(&dir(5, 3)), 5, NameChange::Removed(b"b"), now);
        assert!(known.absent(5, b"b"));
        // Another client's change came between: the view is gone.
        known.changed(Some(&dir(5, 5)), 5, NameChange::Added(b"c"), now);
        assert!(!known.absent(5, b"zzz"), "unknown again: dfs-meta decides");
        // Directories it did not make are never known, nor one a retried
        // create found already changed.
        assert!(!known.absent(6, b"a"));
        known.made(&dir(9, 3), now);
        assert!(!known.absent(9, b"a"));
    }

    #[test]
    fn a_failed_change_or_a_lost_answer_drops_the_view() {
        let known = KnownNames::default();
        known.set_mode(Views::Cached(Duration::from_secs(60)));
        let now = Instant::now();
        known.made(&dir(5, 0), now);
        known.changed(None, 5, NameChange::Added(b"a"), now);
        assert!(!known.absent(5, b"b"));
        known.made(&dir(7, 0), now);
        known.forget(7);
        assert!(!known.absent(7, b"b"));
    }

    #[test]
    fn views_expire_and_strong_consistency_has_none() {
        let known = KnownNames::default();
        known.set_mode(Views::Cached(Duration::from_millis(20)));
        known.made(&dir(5, 0), Instant::now());
        assert!(known.absent(5, b"a"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !known.absent(5, b"a"),
            "a view older than the ttl decides nothing"
        );
        known.set_mode(Views::Off);
        known.made(&dir(8, 0), Instant::now());
        assert!(!known.absent(8, b"a"));
    }

    #[test]
    fn a_leased_view_answers_while_this_client_holds_the_lease() {
        let known = KnownNames::default();
        known.set_mode(Views::Leased { client: 7 });
        let now = Instant::now();
        // Made without a lease (an older dfs-meta) or leased to another: none.
        known.made(&dir(4, 0), now);
        known.made(&leased(5, 0, 8, false), now);
        assert!(!known.absent(4, b"a") && !known.absent(5, b"a"));
        known.made(&leased(6, 0, 7, false), now);
        assert!(known.absent(6, b"a"));
        assert!(
            !known.absent(6, &[b'x'; 256]),
            "too long a name is refused by dfs-meta, not absent"
        );
        // Removals keep it, additions renew it from when they were sent.
        known.changed(
            Some(&leased(6, 1, 7, false)),
            6,
            NameChange::Added(b"a"),
            now,
        );
        known.changed(
            Some(&leased(6, 2, 7, false)),
            6,
            NameChange::Removed(b"a"),
            now,
        );
        assert!(known.absent(6, b"a"));
        // Sent longer than a lease ago: the lease may have run out already.
        let long_ago = now - dfs_proto::DIRECTORY_LEASE;
        known.changed(
            Some(&leased(6, 3, 7, false)),
            6,
            NameChange::Added(b"b"),
            long_ago,
        );
        assert!(!known.absent(6, b"c"), "lease run out");
        // Revoked: the view goes at once.
        known.made(&leased(10, 0, 7, false), now);
        known.changed(
            Some(&leased(10, 1, 7, true)),
            10,
            NameChange::Removed(b"x"),
            now,
        );
        assert!(!known.absent(10, b"a"));
    }

    #[test]
    fn a_create_answered_early_claims_an_absent_name_of_a_current_view() {
        let known = KnownNames::default();
        let left = Duration::from_millis(300);
        known.set_mode(Views::Leased { client: 7 });
        let now = Instant::now();
        known.made(&leased(6, 0, 7, false), now);
        // Only with the directory as the view last saw it.
        assert!(known.claim_absent(&dir(6, 1), b"a", left).is_none());
        let until = known.claim_absent(&dir(6, 0), b"a", left).expect("claimed");
        assert!(until > now + left);
        assert!(!known.absent(6, b"a"), "claimed: looked up in dfs-meta");
        assert!(known.claim_absent(&dir(6, 0), b"a", left).is_none(), "once");
        // Not with less of the lease left than asked, nor without a view.
        assert!(known
            .claim_absent(&dir(6, 0), b"b", dfs_proto::DIRECTORY_LEASE)
            .is_none());
        assert!(known.claim_absent(&dir(9, 0), b"b", left).is_none());
        // The create's reply counts one change of the directory.
        known.changed(
            Some(&leased(6, 1, 7, false)),
            6,
            NameChange::Added(b"a"),
            now,
        );
        assert!(known.claim_absent(&dir(6, 1), b"b", left).is_some());
        // Never without leases.
        known.set_mode(Views::Cached(Duration::from_secs(60)));
        known.made(&dir(11, 0), now);
        assert!(known.claim_absent(&dir(11, 0), b"a", left).is_none());
    }
}
