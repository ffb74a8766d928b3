//! fcntl, OFD and flock locks through the metadata service, so that a lock
//! taken through one mount holds against every client of the volume.
//!
//! The kernel sends every lock request here (FUSE_POSIX_LOCKS and
//! FUSE_FLOCK_LOCKS): flock arrives as a whole-file lock whose owner is the
//! open file description, as NFS does it. The mount opens a lock session
//! with the first lock and renews its lease in the background; if the
//! client dies, its locks stop counting when the lease runs out.
//!
//! F_SETLKW waits without holding a FUSE thread (the reply is sent from a
//! task), and gives up with EINTR when the waiting thread has a signal to
//! handle: fuser answers the kernel's FUSE_INTERRUPT with ENOSYS, so the
//! thread's pending signals are read from `/proc` instead.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dfs_core::error::DfsError;
use dfs_proto::{LockKind, LockSessionRequest, SetLockRequest};
use parking_lot::Mutex;

use crate::client::meta::MetaRpc;

/// How long one SetLock call may wait on the server before the client
/// looks at the waiting thread's signals again.
const WAIT_SLICE: Duration = Duration::from_millis(300);

/// The whole of any file (the kernel's OFFSET_MAX).
const TO_END: u64 = i64::MAX as u64;

/// A conflicting lock, as F_GETLK reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLock {
    pub start: u64,
    pub end: u64,
    /// libc::F_RDLCK, F_WRLCK, or F_UNLCK for "no conflict".
    pub typ: i32,
    pub pid: u32,
}

pub struct Locks {
    meta: MetaRpc,
    host: String,
    /// The lock session, opened with the first lock.
    session: tokio::sync::Mutex<Option<u64>>,
    /// Lock owners that may hold locks, by inode, with the file handles
    /// they locked through: closing a file whose owner never locked it
    /// costs no round trip, and the last close of a handle releases the
    /// OFD locks taken through it (the kernel names no owner for those).
    owners: Mutex<HashMap<u64, HashMap<u64, HashSet<u64>>>>,
}

fn kind_of(typ: i32) -> Result<LockKind, DfsError> {
    match typ {
        libc::F_RDLCK => Ok(LockKind::LockRead),
        libc::F_WRLCK => Ok(LockKind::LockWrite),
        libc::F_UNLCK => Ok(LockKind::LockUnlock),
        other => Err(DfsError::new(
            libc::EINVAL,
            format!("unknown lock type {other}"),
        )),
    }
}

fn typ_of(kind: LockKind) -> i32 {
    match kind {
        LockKind::LockRead => libc::F_RDLCK,
        LockKind::LockWrite => libc::F_WRLCK,
        LockKind::LockUnlock => libc::F_UNLCK,
    }
}

impl Locks {
    pub fn new(meta: MetaRpc) -> Arc<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Arc::new(Self {
            meta,
            host: format!("{host} pid {}", std::process::id()),
            session: tokio::sync::Mutex::new(None),
            owners: Mutex::new(HashMap::new()),
        })
    }

    /// The session id, opening the session (and starting its renewals)
    /// on first use.
    async fn session(self: &Arc<Self>) -> Result<u64, DfsError> {
        let mut session = self.session.lock().await;
        if let Some(id) = *session {
            return Ok(id);
        }
        let host = self.host.clone();
        let reply = self
            .meta
            .open_lock_session(LockSessionRequest { session: 0, host })
            .await?;
        tracing::info!(session = reply.session, "lock session opened");
        *session = Some(reply.session);
        let renew_every = Duration::from_millis(reply.lease_ms / 4).max(Duration::from_millis(250));
        tokio::spawn(renew_lease(Arc::downgrade(self), renew_every));
        Ok(reply.session)
    }

    /// Renews the session now (after the server said it had expired).
    async fn reopen(&self, session: u64) -> Result<(), DfsError> {
        renew_once(self, session).await
    }

    fn note_owner(&self, ino: u64, owner: u64, fh: u64) {
        self.owners
            .lock()
            .entry(ino)
            .or_default()
            .entry(owner)
            .or_default()
            .insert(fh);
    }

    fn forget_owner(&self, ino: u64, owner: u64) {
        let mut owners = self.owners.lock();
        if let Some(of_ino) = owners.get_mut(&ino) {
            of_ino.remove(&owner);
            if of_ino.is_empty() {
                owners.remove(&ino);
            }
        }
    }

    fn owner_known(&self, ino: u64, owner: u64) -> bool {
        self.owners
            .lock()
            .get(&ino)
            .is_some_and(|of_ino| of_ino.contains_key(&owner))
    }

    /// Owners of `ino` that locked through handle `fh`.
    fn owners_of_handle(&self, ino: u64, fh: u64) -> Vec<u64> {
        self.owners
            .lock()
            .get(&ino)
            .map_or_else(Vec::new, |of_ino| {
                of_ino
                    .iter()
                    .filter(|(_, handles)| handles.contains(&fh))
                    .map(|(&owner, _)| owner)
                    .collect()
            })
    }

    /// One SetLock call; a session the server forgot (its lease ran out
    /// while the server was unreachable) is renewed and the call repeated.
    async fn try_set(self: &Arc<Self>, mut request: SetLockRequest) -> Result<bool, DfsError> {
        request.session = self.session().await?;
        for attempt in 0..2 {
            let result = self.meta.set_lock(request).await;
            match result {
                Ok(reply) => return Ok(reply.granted),
                Err(e) if e.errno == libc::ENOLCK && attempt == 0 => {
                    tracing::warn!(
                        session = request.session,
                        "lock session had expired; renewing it"
                    );
                    self.reopen(request.session).await?;
                    request.session = self.session().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(DfsError::new(
            libc::ENOLCK,
            "lock session cannot be renewed",
        ))
    }

    /// F_SETLK / F_SETLKW / flock. With `wait_for` (the waiting thread),
    /// waits until the lock is granted or the thread has a signal to take
    /// (EINTR); without, a conflict is EAGAIN.
    #[allow(clippy::too_many_arguments)]
    pub async fn set(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        wait_for: Option<u32>,
    ) -> Result<(), DfsError> {
        let kind = kind_of(typ)?;
        if start > end {
            return Err(DfsError::new(
                libc::EINVAL,
                "lock range ends before it starts",
            ));
        }
        if kind != LockKind::LockUnlock {
            self.note_owner(ino, owner, fh);
        }
        let mut request = SetLockRequest {
            session: 0,
            ino,
            owner,
            start,
            end,
            kind: kind as i32,
            pid,
            wait_ms: 0,
        };
        let Some(tid) = wait_for.filter(|_| kind != LockKind::LockUnlock) else {
            let granted = self.try_set(request).await?;
            if kind == LockKind::LockUnlock && start == 0 && end >= TO_END {
                self.forget_owner(ino, owner);
            } else if granted && kind != LockKind::LockUnlock {
                self.note_owner(ino, owner, fh);
            }
            return if granted {
                Ok(())
            } else {
                Err(DfsError::new(libc::EAGAIN, "a conflicting lock is held"))
            };
        };
        request.wait_ms = WAIT_SLICE.as_millis() as u32;
        loop {
            if self.try_set(request).await? {
                // Again: a close during the wait forgot the owner.
                self.note_owner(ino, owner, fh);
                return Ok(());
            }
            if signal_pending(tid) {
                tracing::debug!(ino, tid, "lock wait interrupted by a signal");
                return Err(DfsError::new(
                    libc::EINTR,
                    "interrupted while waiting for a lock",
                ));
            }
        }
    }

    /// F_GETLK: the first lock that would conflict, or typ F_UNLCK.
    pub async fn get(
        self: &Arc<Self>,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
    ) -> Result<HeldLock, DfsError> {
        let kind = kind_of(typ)?;
        let none = HeldLock {
            start,
            end,
            typ: libc::F_UNLCK,
            pid: 0,
        };
        if start > end {
            return Err(DfsError::new(
                libc::EINVAL,
                "lock range ends before it starts",
            ));
        }
        if kind == LockKind::LockUnlock {
            return Ok(none);
        }
        let session = self.session().await?;
        let request = SetLockRequest {
            session,
            ino,
            owner,
            start,
            end,
            kind: kind as i32,
            pid: 0,
            wait_ms: 0,
        };
        let reply = self.meta.get_lock(request).await?;
        if reply.kind() == LockKind::LockUnlock {
            return Ok(none);
        }
        Ok(HeldLock {
            start: reply.start,
            end: reply.end,
            typ: typ_of(reply.kind()),
            // A process id means something only on this machine: another
            // client's lock is reported without one.
            pid: if reply.same_session { reply.pid } else { 0 },
        })
    }

    /// Releases every lock `owner` holds on `ino`: fcntl locks at any
    /// close by the process (FLUSH), flock locks at the last close of the
    /// open file description (RELEASE). Free when the owner never locked.
    pub async fn release_owner(self: &Arc<Self>, ino: u64, owner: u64) -> Result<(), DfsError> {
        if !self.owner_known(ino, owner) {
            return Ok(());
        }
        self.set(ino, 0, owner, 0, u64::MAX, libc::F_UNLCK, 0, None)
            .await
    }

    /// At the last close of handle `fh` (RELEASE): releases the locks of
    /// the owners that locked through it and were not released since.
    /// These are OFD locks (their owner is the open file description,
    /// which the kernel does not name at release); fcntl owners that
    /// locked through it were released by the FLUSH of their close.
    pub async fn release_handle(self: &Arc<Self>, ino: u64, fh: u64) -> Result<(), DfsError> {
        let mut result = Ok(());
        for owner in self.owners_of_handle(ino, fh) {
            let released = self.release_owner(ino, owner).await;
            result = result.and(released);
        }
        result
    }

    /// Ends the session at unmount, releasing every lock of this mount.
    pub async fn end(&self) {
        let Some(session) = self.session.lock().await.take() else {
            return;
        };
        let result = self
            .meta
            .end_lock_session(LockSessionRequest {
                session,
                host: String::new(),
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(session, error = %e, "cannot end the lock session; its locks go when its lease runs out");
        }
    }
}

/// Renews `session`. When its lease had run out, the server hands out a
/// new session: the locks of the old one are lost (others may hold them
/// now), which is logged, and later requests use the new one.
async fn renew_once(locks: &Locks, session: u64) -> Result<(), DfsError> {
    let host = locks.host.clone();
    let reply = locks
        .meta
        .open_lock_session(LockSessionRequest { session, host })
        .await?;
    if !reply.renewed {
        tracing::error!(
            session,
            new_session = reply.session,
            "the lock lease ran out while the metadata service was unreachable: \
             locks held through this mount were given up and may be held by others now"
        );
        let mut current = locks.session.lock().await;
        if *current == Some(session) {
            *current = Some(reply.session);
        }
    }
    Ok(())
}

/// Renews the session's lease until the mount (the `Locks`) is gone or the
/// session ended.
async fn renew_lease(locks: std::sync::Weak<Locks>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(locks) = locks.upgrade() else {
            return;
        };
        let Some(session) = *locks.session.lock().await else {
            return;
        };
        if let Err(e) = renew_once(&locks, session).await {
            tracing::warn!(session, error = %e, "cannot renew the lock lease");
        }
    }
}

/// True when thread `tid` has a signal it will take (pending, neither
/// blocked nor ignored), or is gone: a lock wait for it must end.
pub fn signal_pending(tid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => deliverable_signals(&status) != 0,
        // Gone; a status we may not read (hidepid) tells nothing.
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Signals pending for a thread (its own or its process's) that it does
/// not block or ignore, from the text of `/proc/TID/status`.
fn deliverable_signals(status: &str) -> u64 {
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") & !mask("SigIgn:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_signals_count_unless_blocked_or_ignored() {
        let status = "Name:\tx\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000102\n\
                      SigBlk:\t0000000000000002\nSigIgn:\t0000000000000000\n";
        assert_eq!(
            deliverable_signals(status),
            0x100,
            "SIGKILL is taken, SIGINT blocked"
        );
        let quiet = "SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n";
        assert_eq!(deliverable_signals(quiet), 0);
    }

    #[test]
    fn this_thread_has_no_signal_and_a_dead_thread_ends_the_wait() {
        let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        let tid: u32 = link
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .expect("thread id");
        assert!(!signal_pending(tid));
        assert!(signal_pending(u32::MAX - 1));
    }

    #[test]
    fn lock_types_map_both_ways() {
        for typ in [libc::F_RDLCK, libc::F_WRLCK, libc::F_UNLCK] {
            assert_eq!(typ_of(kind_of(typ).expect("known type")), typ);
        }
        assert!(kind_of(99).is_err());
    }
}
