//! Byte-range locks shared by every client of a volume: fcntl (POSIX)
//! locks, open-file-description locks and flock, which the kernel hands to
//! FUSE as byte-range locks with different owners.
//!
//! A lock belongs to `(session, owner)`. The session is one mount; it holds
//! a lease that the client renews. The owner is the kernel's lock owner: a
//! process's file table for fcntl locks (so every descriptor of a process
//! shares them, and a close releases them), an open file description for
//! flock and OFD locks. Locks of a session whose lease ran out stop
//! counting: the first conflicting request removes them, and the
//! maintenance sweep ends the session.
//!
//! All locks of one inode live in one record (`L ino`): they are few, and
//! one key makes a check-and-set one read and one write. `W session ino`
//! lists the inodes a session holds locks on, so that ending it is cheap.

use std::time::Duration;

use dfs_proto::{
    GetLockReply, LockKind, LockRecord, LockSessionRecord, LockTableRecord, SetLockRequest,
};

use crate::error::{MetaError, Result};
use crate::keys;
use crate::store::KvTxn;
use crate::store::{get_record, put_record};

/// How long a session's locks count after its last renewal.
pub const LEASE: Duration = Duration::from_secs(20);

/// Extra time a lease is honoured, for clock differences between several
/// metadata servers (each stamps expiry times with its own clock).
const CLOCK_SKEW: Duration = Duration::from_secs(2);

/// Inodes released in one transaction when a session ends (each table is
/// at most `MAX_LOCKS_PER_INODE` entries, so a batch stays far below the
/// store's 10 MB transaction limit).
const END_BATCH: usize = 50;

/// Locks one inode may carry: their table is one value, and values are
/// limited to 100 kB. Past it, new locks and unlocks that would split one
/// are refused (ENOLCK); other unlocks always work.
const MAX_LOCKS_PER_INODE: usize = 1_000;

const SESSION_COUNTER: &str = "lock_sessions";

fn lease_ns() -> i64 {
    LEASE.as_nanos() as i64
}

/// True when `held` keeps `(session, owner)` from taking `[start, end]` as
/// `kind`.
fn conflicts(
    held: &LockRecord,
    session: u64,
    owner: u64,
    start: u64,
    end: u64,
    kind: LockKind,
) -> bool {
    (held.session, held.owner) != (session, owner)
        && held.start <= end
        && start <= held.end
        && (held.kind() == LockKind::LockWrite || kind == LockKind::LockWrite)
}

/// Applies a lock change of `(new.session, new.owner)` to `locks`, without
/// conflict checks: the owner's locks lose whatever part of them
/// `[new.start, new.end]` covers (split when the range is in their middle),
/// then, unless `new` is an unlock, the range is added, merged with the
/// owner's adjacent locks of the same kind. This is POSIX's rule: a new lock
/// replaces the owner's old ones where they overlap.
pub fn apply(locks: &mut Vec<LockRecord>, new: &LockRecord) {
    let mut kept = Vec::with_capacity(locks.len() + 2);
    for held in locks.drain(..) {
        let mine = held.session == new.session && held.owner == new.owner;
        if !mine || held.end < new.start || held.start > new.end {
            kept.push(held);
            continue;
        }
        if held.start < new.start {
            kept.push(LockRecord {
                end: new.start - 1,
                ..held
            });
        }
        if held.end > new.end {
            kept.push(LockRecord {
                start: new.end + 1,
                ..held
            });
        }
    }
    if new.kind() != LockKind::LockUnlock {
        let mut merged = *new;
        kept.retain(|held| {
            let touches = held.session == new.session
                && held.owner == new.owner
                && held.kind == new.kind
                && (held.end.checked_add(1) == Some(merged.start)
                    || merged.end.checked_add(1) == Some(held.start));
            if touches {
                merged.start = merged.start.min(held.start);
                merged.end = merged.end.max(held.end);
            }
            !touches
        });
        kept.push(merged);
    }
    kept.sort_by_key(|l| (l.start, l.session, l.owner));
    *locks = kept;
}

/// The clock a lock decision is made with.
#[derive(Clone, Copy, Debug)]
pub struct LockClock {
    pub now_ns: i64,
    /// False while this metadata server has been up for less than a lease:
    /// clients could not renew while it was down, so no lease counts as
    /// run out yet.
    pub leases_trusted: bool,
}

impl LockClock {
    pub fn trusted(now_ns: i64) -> Self {
        Self {
            now_ns,
            leases_trusted: true,
        }
    }
}

/// True while `session`'s lease runs.
fn session_alive(txn: &mut dyn KvTxn, session: u64, clock: LockClock) -> Result<bool> {
    let record: Option<LockSessionRecord> = get_record(txn, &keys::lock_session(session))?;
    Ok(record.is_some_and(|r| {
        !clock.leases_trusted
            || r.expires_ns.saturating_add(CLOCK_SKEW.as_nanos() as i64) >= clock.now_ns
    }))
}

fn load_table(txn: &mut dyn KvTxn, ino: u64) -> Result<Vec<LockRecord>> {
    let table: Option<LockTableRecord> = get_record(txn, &keys::lock_table(ino))?;
    Ok(table.map(|t| t.locks).unwrap_or_default())
}

/// Writes `locks` back and keeps the `W` index of `touched` sessions true.
fn store_table(txn: &mut dyn KvTxn, ino: u64, locks: Vec<LockRecord>, touched: &[u64]) {
    for &session in touched {
        let index = keys::lock_held(session, ino);
        if locks.iter().any(|l| l.session == session) {
            txn.set(&index, &[]);
        } else {
            txn.clear(&index);
        }
    }
    if locks.is_empty() {
        txn.clear(&keys::lock_table(ino));
    } else {
        put_record(txn, &keys::lock_table(ino), &LockTableRecord { locks });
    }
}

fn check_range(start: u64, end: u64) -> Result<()> {
    if start > end {
        return Err(MetaError::Invalid(format!(
            "lock range starts after it ends ({start} > {end})"
        )));
    }
    Ok(())
}

/// Takes, changes or releases a lock. Returns false, changing nothing but
/// the removal of expired sessions' locks, when a live lock of another
/// owner conflicts.
pub fn set_lock(txn: &mut dyn KvTxn, req: &SetLockRequest, clock: LockClock) -> Result<bool> {
    check_range(req.start, req.end)?;
    let kind = LockKind::try_from(req.kind)
        .map_err(|_| MetaError::Invalid(format!("unknown lock kind {}", req.kind)))?;
    if req.session == 0 {
        return Err(MetaError::Invalid("lock request without a session".into()));
    }
    if kind != LockKind::LockUnlock && !session_alive(txn, req.session, clock)? {
        return Err(MetaError::LockSessionExpired(req.session));
    }
    let mut locks = load_table(txn, req.ino)?;
    let mut touched = vec![req.session];
    if kind != LockKind::LockUnlock {
        let mut holders: Vec<u64> = locks
            .iter()
            .filter(|l| conflicts(l, req.session, req.owner, req.start, req.end, kind))
            .map(|l| l.session)
            .collect();
        holders.sort_unstable();
        holders.dedup();
        let mut blocked = false;
        for holder in holders {
            if holder != req.session && !session_alive(txn, holder, clock)? {
                tracing::info!(
                    ino = req.ino,
                    session = holder,
                    "dropping locks of an expired session"
                );
                locks.retain(|l| l.session != holder);
                touched.push(holder);
            } else {
                blocked = true;
            }
        }
        if blocked {
            if touched.len() > 1 {
                store_table(txn, req.ino, locks, &touched[1..]);
            }
            return Ok(false);
        }
    }
    let new = LockRecord {
        session: req.session,
        owner: req.owner,
        start: req.start,
        end: req.end,
        kind: kind as i32,
        pid: req.pid,
    };
    let before = locks.len();
    apply(&mut locks, &new);
    // An unlock in the middle of a lock splits it: one more entry. Counted
    // like a new lock, or a process unlocking every other byte of a range
    // would grow the table (one value, rewritten whole by every request on
    // the inode) without bound. An unlock that adds no entry always works,
    // so a close's release of everything never fails (Linux's fcntl also
    // answers ENOLCK when an unlock's split finds no room).
    let grew = locks.len() > before;
    if locks.len() > MAX_LOCKS_PER_INODE && (kind != LockKind::LockUnlock || grew) {
        return Err(MetaError::TooManyLocks(req.ino));
    }
    store_table(txn, req.ino, locks, &touched);
    Ok(true)
}

/// The first live lock that would keep the described lock from being
/// taken (F_GETLK), or kind UNLOCK when there is none.
pub fn get_lock(
    txn: &mut dyn KvTxn,
    req: &SetLockRequest,
    clock: LockClock,
) -> Result<GetLockReply> {
    check_range(req.start, req.end)?;
    let kind = LockKind::try_from(req.kind)
        .map_err(|_| MetaError::Invalid(format!("unknown lock kind {}", req.kind)))?;
    if kind == LockKind::LockUnlock {
        return Ok(GetLockReply::default());
    }
    for held in load_table(txn, req.ino)? {
        if !conflicts(&held, req.session, req.owner, req.start, req.end, kind) {
            continue;
        }
        if held.session != req.session && !session_alive(txn, held.session, clock)? {
            continue;
        }
        return Ok(GetLockReply {
            kind: held.kind,
            start: held.start,
            end: held.end,
            pid: held.pid,
            same_session: held.session == req.session,
        });
    }
    Ok(GetLockReply::default())
}

/// Opens a session (`session` 0: a new one) or renews it. Returns the
/// session id and whether the session was renewed. A session that is
/// unknown or whose lease ran out is not brought back (other clients may
/// hold the locks it lost, and its remaining ones no longer count): a new
/// session is opened instead, and `false` tells the client so.
pub fn open_session(
    txn: &mut dyn KvTxn,
    session: u64,
    host: &str,
    clock: LockClock,
) -> Result<(u64, bool)> {
    let now_ns = clock.now_ns;
    let renewable = session != 0 && session_alive(txn, session, clock)?;
    let (id, renewed) = if renewable {
        (session, true)
    } else {
        let key = keys::counter(SESSION_COUNTER);
        let next = crate::store::decode_counter(txn.get(&key)?.as_deref()) + 1;
        txn.set(&key, &next.to_le_bytes());
        (next as u64, session == 0)
    };
    let record = LockSessionRecord {
        expires_ns: now_ns.saturating_add(lease_ns()),
        host: host.chars().take(256).collect(),
    };
    put_record(txn, &keys::lock_session(id), &record);
    Ok((id, renewed))
}

/// Releases up to `END_BATCH` inodes' locks of `session`; when none are
/// left, removes the session. Returns true when the session is gone.
pub fn end_session_step(txn: &mut dyn KvTxn, session: u64) -> Result<bool> {
    let prefix = keys::lock_held_prefix(session);
    let rows = txn.range(&prefix, &keys::prefix_end(&prefix), END_BATCH + 1, false)?;
    let more = rows.len() > END_BATCH;
    for (key, _) in rows.into_iter().take(END_BATCH) {
        txn.clear(&key);
        let Some(ino) = keys::lock_held_ino(&key) else {
            continue;
        };
        let mut locks = load_table(txn, ino)?;
        locks.retain(|l| l.session != session);
        store_table(txn, ino, locks, &[]);
    }
    if !more {
        txn.clear(&keys::lock_session(session));
    }
    Ok(!more)
}

/// Sessions among up to `limit` from `from` (a key; empty: the first)
/// whose lease ran out before `now_ns`, and the key to continue from.
pub fn expired_sessions(
    txn: &mut dyn KvTxn,
    from: &[u8],
    now_ns: i64,
    limit: usize,
) -> Result<(Vec<u64>, Option<Vec<u8>>)> {
    let (rows, next) = crate::store::tag_page(txn, keys::LOCK_SESSION, from, limit)?;
    let cut = now_ns.saturating_sub(CLOCK_SKEW.as_nanos() as i64);
    let mut expired = Vec::new();
    for (key, value) in rows {
        let Some(session) = keys::lock_session_id(&key) else {
            continue;
        };
        let record = <LockSessionRecord as prost::Message>::decode(value.as_slice());
        if record.map_or(true, |r| r.expires_ns < cut) {
            expired.push(session);
        }
    }
    Ok((expired, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{transact, MemStore, MetaStore};

    fn lock(session: u64, owner: u64, start: u64, end: u64, kind: LockKind) -> LockRecord {
        LockRecord {
            session,
            owner,
            start,
            end,
            kind: kind as i32,
            pid: 7,
        }
    }

    fn ranges(locks: &[LockRecord]) -> Vec<(u64, u64, LockKind)> {
        locks.iter().map(|l| (l.start, l.end, l.kind())).collect()
    }

    use LockKind::{LockRead as R, LockUnlock as U, LockWrite as W};

    #[test]
    fn unlocking_the_middle_splits_a_lock() {
        let mut locks = vec![lock(1, 1, 0, 99, W)];
        apply(&mut locks, &lock(1, 1, 10, 19, U));
        assert_eq!(ranges(&locks), vec![(0, 9, W), (20, 99, W)]);
    }

    #[test]
    fn a_new_kind_replaces_the_overlap_and_neighbours_merge() {
        let mut locks = vec![lock(1, 1, 0, 99, R)];
        apply(&mut locks, &lock(1, 1, 50, 149, W));
        assert_eq!(ranges(&locks), vec![(0, 49, R), (50, 149, W)]);
        apply(&mut locks, &lock(1, 1, 150, 199, W));
        assert_eq!(ranges(&locks), vec![(0, 49, R), (50, 199, W)]);
        apply(&mut locks, &lock(1, 1, 0, u64::MAX, U));
        assert!(locks.is_empty());
    }

    #[test]
    fn other_owners_locks_are_left_alone() {
        let mut locks = vec![lock(1, 2, 0, 9, R), lock(2, 1, 0, 9, R)];
        apply(&mut locks, &lock(1, 1, 0, 9, R));
        apply(&mut locks, &lock(1, 1, 0, 9, U));
        assert_eq!(locks.len(), 2);
    }

    #[test]
    fn conflicts_need_overlap_another_owner_and_a_writer() {
        let held = lock(1, 1, 10, 19, R);
        assert!(!conflicts(&held, 1, 2, 0, 100, R), "readers share");
        assert!(
            conflicts(&held, 1, 2, 19, 30, W),
            "other owner, same session"
        );
        assert!(
            conflicts(&held, 2, 1, 0, 10, W),
            "same owner id, other session"
        );
        assert!(!conflicts(&held, 1, 1, 0, 100, W), "own lock");
        assert!(!conflicts(&held, 2, 1, 20, 30, W), "no overlap");
    }

    fn request(session: u64, owner: u64, start: u64, end: u64, kind: LockKind) -> SetLockRequest {
        SetLockRequest {
            session,
            ino: 42,
            owner,
            start,
            end,
            kind: kind as i32,
            pid: 100 + owner as u32,
            wait_ms: 0,
        }
    }

    fn run<T>(store: &MemStore, body: impl FnMut(&mut dyn KvTxn) -> Result<T>) -> T {
        transact(store as &dyn MetaStore, body).expect("transaction")
    }

    #[test]
    fn sessions_conflict_until_one_releases_or_expires() {
        let store = MemStore::default();
        let now = 1_000_000_000_000;
        let (a, _) = run(&store, |t| open_session(t, 0, "a", LockClock::trusted(now)));
        let (b, _) = run(&store, |t| open_session(t, 0, "b", LockClock::trusted(now)));
        assert_ne!(a, b);
        assert!(run(&store, |t| set_lock(
            t,
            &request(a, 1, 0, 99, W),
            LockClock::trusted(now)
        )));
        assert!(!run(&store, |t| set_lock(
            t,
            &request(b, 1, 50, 50, R),
            LockClock::trusted(now)
        )));
        let seen = run(&store, |t| {
            get_lock(t, &request(b, 1, 50, 50, R), LockClock::trusted(now))
        });
        assert_eq!(
            (seen.kind(), seen.start, seen.end, seen.pid),
            (W, 0, 99, 101)
        );
        assert!(
            run(&store, |t| set_lock(
                t,
                &request(b, 1, 100, 200, W),
                LockClock::trusted(now)
            )),
            "no overlap"
        );
        // Releasing the owner's whole range lets the other session in.
        assert!(run(&store, |t| set_lock(
            t,
            &request(a, 1, 0, u64::MAX, U),
            LockClock::trusted(now)
        )));
        assert!(run(&store, |t| set_lock(
            t,
            &request(b, 1, 50, 50, R),
            LockClock::trusted(now)
        )));
        // b's lease runs out: a takes the range, and b's locks are gone.
        let later = now + lease_ns() + CLOCK_SKEW.as_nanos() as i64 + 1;
        let halfway = now + lease_ns() / 2;
        let (a2, renewed) = run(&store, |t| {
            open_session(t, a, "a", LockClock::trusted(halfway))
        });
        assert_eq!((a2, renewed), (a, true), "a live session is renewed");
        assert!(run(&store, |t| set_lock(
            t,
            &request(a, 1, 0, 300, W),
            LockClock::trusted(later)
        )));
        assert!(store_is_clean_of(&store, b));
        let (expired, _) = run(&store, |t| expired_sessions(t, &[], later, 10));
        assert_eq!(expired, vec![b]);
        // b comes back after its lease ran out: it gets a new session.
        let (b2, renewed) = run(&store, |t| {
            open_session(t, b, "b", LockClock::trusted(later))
        });
        assert!(
            b2 != b && !renewed,
            "an expired session must not be revived"
        );
        // An id nobody was given is not taken either.
        let (c, renewed) = run(&store, |t| {
            open_session(t, 999, "c", LockClock::trusted(later))
        });
        assert!(c != 999 && !renewed);
    }

    fn store_is_clean_of(store: &MemStore, session: u64) -> bool {
        run(store, |t| {
            let prefix = keys::lock_held_prefix(session);
            let held = t.range(&prefix, &keys::prefix_end(&prefix), 1, false)?;
            let table = load_table(t, 42)?;
            Ok(held.is_empty() && table.iter().all(|l| l.session != session))
        })
    }

    #[test]
    fn ending_a_session_releases_its_locks() {
        let store = MemStore::default();
        let now = 5_000_000_000;
        let (a, _) = run(&store, |t| open_session(t, 0, "a", LockClock::trusted(now)));
        let (b, _) = run(&store, |t| open_session(t, 0, "b", LockClock::trusted(now)));
        assert!(run(&store, |t| set_lock(
            t,
            &request(a, 1, 0, 9, W),
            LockClock::trusted(now)
        )));
        assert!(run(&store, |t| end_session_step(t, a)));
        assert!(store_is_clean_of(&store, a));
        assert!(run(&store, |t| set_lock(
            t,
            &request(b, 1, 0, 9, W),
            LockClock::trusted(now)
        )));
        // A lock asked for by an ended session is refused, not granted.
        let refused = transact(&store as &dyn MetaStore, |t| {
            set_lock(t, &request(a, 1, 20, 29, W), LockClock::trusted(now))
        });
        assert!(matches!(refused, Err(MetaError::LockSessionExpired(_))));
    }

    #[test]
    fn unlocks_that_split_count_against_the_table_limit() {
        let store = MemStore::default();
        let clock = LockClock::trusted(1);
        let (a, _) = run(&store, |t| open_session(t, 0, "a", clock));
        assert!(run(&store, |t| set_lock(
            t,
            &request(a, 1, 0, 1_000_000, W),
            clock
        )));
        // Each unlock of one byte inside the range splits a lock in two.
        for i in 1..MAX_LOCKS_PER_INODE as u64 {
            assert!(run(&store, |t| set_lock(
                t,
                &request(a, 1, 2 * i, 2 * i, U),
                clock
            )));
        }
        assert_eq!(
            run(&store, |t| load_table(t, 42)).len(),
            MAX_LOCKS_PER_INODE
        );
        let split = transact(&store as &dyn MetaStore, |t| {
            set_lock(t, &request(a, 1, 5_000, 5_000, U), clock)
        });
        assert!(matches!(split, Err(MetaError::TooManyLocks(42))));
        assert_eq!(
            run(&store, |t| load_table(t, 42)).len(),
            MAX_LOCKS_PER_INODE
        );
        // Unlocks that add no entry still work, down to releasing it all.
        assert!(run(&store, |t| set_lock(t, &request(a, 1, 3, 3, U), clock)));
        assert!(run(&store, |t| set_lock(
            t,
            &request(a, 1, 0, u64::MAX, U),
            clock
        )));
        assert!(run(&store, |t| load_table(t, 42)).is_empty());
    }

    #[test]
    fn bad_ranges_and_kinds_are_refused() {
        let store = MemStore::default();
        let (a, _) = run(&store, |t| open_session(t, 0, "a", LockClock::trusted(1)));
        let mut bad = request(a, 1, 10, 9, W);
        assert!(transact(&store as &dyn MetaStore, |t| set_lock(
            t,
            &bad,
            LockClock::trusted(1)
        ))
        .is_err());
        bad.start = 0;
        bad.kind = 9;
        assert!(transact(&store as &dyn MetaStore, |t| set_lock(
            t,
            &bad,
            LockClock::trusted(1)
        ))
        .is_err());
    }
}
