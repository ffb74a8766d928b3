//! Attributes set on a file while this client holds data for it that is
//! not committed yet, sent with that data's commit instead of on their own.
//!
//! `tar x` (and `cp -p`, `rsync`, package managers) write a file and then,
//! before closing it, set its times, owner and mode: GNU tar sends
//! utimensat, fchown and fchmod on the open descriptor. Each was a request
//! to dfs-meta, and the first also committed the buffered data (a synced
//! commit) so that the explicit mtime would land after the data's: five
//! round trips a file where `cp -r` pays two. Now a change of attributes
//! on a file with buffered data is kept here, shown by this client at
//! once, and applied by dfs-meta in the same transaction as the data's
//! commit at close or fsync (`CommitChunksRequest.attrs`).
//!
//! Permissions were checked by the kernel (`default_permissions`), so
//! nothing dfs-meta would refuse is deferred except what an unprivileged
//! certificate may not set: a mode with set-user-ID or set-group-ID bits
//! goes at once, so that chmod itself reports the refusal. Other clients
//! see the attributes when they see the data, at close (close-to-open).

use dfs_proto::{InodeRecord, SetAttrRequest};
use libc::{S_ISGID, S_ISUID};

/// Attribute changes waiting for the file's next commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingAttrs {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    atime_ns: Option<i64>,
    mtime_ns: Option<i64>,
    /// When the last change was made: the file's ctime as shown here.
    changed_ns: i64,
}

impl PendingAttrs {
    /// Whether `request` may wait for the commit (see the module's text).
    pub fn can_defer(request: &SetAttrRequest) -> bool {
        request
            .mode
            .is_none_or(|mode| mode & (S_ISUID | S_ISGID) == 0)
    }

    /// Folds `request` in: a field set again replaces the earlier value;
    /// "now" is `now_ns`. A change of owner clears set-user-ID (and
    /// set-group-ID with group execute) as dfs-meta does, since a mode set
    /// before it, when it was deferred, carries no such bits.
    pub fn merge(&mut self, request: &SetAttrRequest, now_ns: i64) {
        if request.mode.is_some() {
            self.mode = request.mode;
        }
        if request.uid.is_some() {
            self.uid = request.uid;
        }
        if request.gid.is_some() {
            self.gid = request.gid;
        }
        if request.atime_now {
            self.atime_ns = Some(now_ns);
        } else if request.atime_ns.is_some() {
            self.atime_ns = request.atime_ns;
        }
        if request.mtime_now {
            self.mtime_ns = Some(now_ns);
        } else if request.mtime_ns.is_some() {
            self.mtime_ns = request.mtime_ns;
        }
        self.changed_ns = self.changed_ns.max(now_ns);
    }

    /// The data changed after the attributes were set (a write, a
    /// truncation): its modification time replaces an explicit one.
    pub fn data_changed(&mut self) {
        self.mtime_ns = None;
    }

    /// `self` (set later) over `older` (what a failed flush carried back):
    /// `older`'s explicit mtime only if no write came after it.
    pub fn over(mut self, older: PendingAttrs, written_since: bool) -> PendingAttrs {
        self.mode = self.mode.or(older.mode);
        self.uid = self.uid.or(older.uid);
        self.gid = self.gid.or(older.gid);
        self.atime_ns = self.atime_ns.or(older.atime_ns);
        if !written_since {
            self.mtime_ns = self.mtime_ns.or(older.mtime_ns);
        }
        self.changed_ns = self.changed_ns.max(older.changed_ns);
        self
    }

    /// `attr` as it will be once the commit applies these.
    pub fn apply(&self, attr: &mut InodeRecord) {
        if let Some(mode) = self.mode {
            attr.mode = mode & 0o7777;
        }
        if self.uid.is_some() || self.gid.is_some() {
            attr.uid = self.uid.unwrap_or(attr.uid);
            attr.gid = self.gid.unwrap_or(attr.gid);
            if self.mode.is_none() {
                attr.mode &= !S_ISUID;
                if attr.mode & 0o010 != 0 {
                    attr.mode &= !S_ISGID;
                }
            }
        }
        if let Some(t) = self.atime_ns {
            attr.atime_ns = t;
        }
        if let Some(t) = self.mtime_ns {
            attr.mtime_ns = t;
        }
        attr.ctime_ns = attr.ctime_ns.max(self.changed_ns);
    }

    /// The request that applies these to `ino`.
    pub fn request(&self, ino: u64) -> SetAttrRequest {
        SetAttrRequest {
            ino,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            atime_ns: self.atime_ns,
            mtime_ns: self.mtime_ns,
            atime_now: false,
            mtime_now: false,
            client_id: 0,
        }
    }

    /// Whether `reply` shows these applied: a metadata server older than
    /// `CommitChunksRequest.attrs` ignores them, and the client then sends
    /// them on their own.
    pub fn applied(&self, reply: &InodeRecord) -> bool {
        self.mode.is_none_or(|m| reply.mode & 0o7777 == m & 0o7777)
            && self.uid.is_none_or(|u| reply.uid == u)
            && self.gid.is_none_or(|g| reply.gid == g)
            && self.atime_ns.is_none_or(|t| reply.atime_ns == t)
            && self.mtime_ns.is_none_or(|t| reply.mtime_ns == t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32) -> InodeRecord {
        InodeRecord {
            ino: 7,
            mode,
            uid: 1000,
            gid: 1000,
            atime_ns: 10,
            mtime_ns: 20,
            ctime_ns: 30,
            ..Default::default()
        }
    }

    #[test]
    fn tar_s_three_calls_fold_into_one_request() {
        let mut pending = PendingAttrs::default();
        // utimensat(fd, [UTIME_OMIT, T]), fchown(fd, 0, 0), fchmod(fd, 0644)
        pending.merge(
            &SetAttrRequest {
                mtime_ns: Some(1_000),
                ..Default::default()
            },
            500,
        );
        pending.merge(
            &SetAttrRequest {
                uid: Some(0),
                gid: Some(0),
                ..Default::default()
            },
            600,
        );
        pending.merge(
            &SetAttrRequest {
                mode: Some(0o644),
                ..Default::default()
            },
            700,
        );
        let request = pending.request(7);
        assert_eq!(
            (request.ino, request.mode, request.uid, request.gid),
            (7, Some(0o644), Some(0), Some(0))
        );
        assert_eq!((request.atime_ns, request.mtime_ns), (None, Some(1_000)));
        let mut shown = file(0o600);
        pending.apply(&mut shown);
        assert_eq!(
            (
                shown.mode,
                shown.uid,
                shown.gid,
                shown.atime_ns,
                shown.mtime_ns,
                shown.ctime_ns
            ),
            (0o644, 0, 0, 10, 1_000, 700)
        );
        assert!(pending.applied(&shown));
        assert!(!pending.applied(&file(0o600)), "an older server's reply");
    }

    #[test]
    fn now_is_resolved_and_a_later_write_takes_the_mtime() {
        let mut pending = PendingAttrs::default();
        pending.merge(
            &SetAttrRequest {
                atime_now: true,
                mtime_now: true,
                ..Default::default()
            },
            42,
        );
        let request = pending.request(7);
        assert_eq!((request.atime_ns, request.mtime_ns), (Some(42), Some(42)));
        assert!(!request.atime_now && !request.mtime_now);
        pending.data_changed();
        let request = pending.request(7);
        assert_eq!((request.atime_ns, request.mtime_ns), (Some(42), None));
    }

    #[test]
    fn what_a_failed_flush_carried_goes_back_under_later_changes() {
        let older = |mtime| {
            let mut p = PendingAttrs::default();
            p.merge(
                &SetAttrRequest {
                    mode: Some(0o600),
                    uid: Some(3),
                    mtime_ns: mtime,
                    ..Default::default()
                },
                5,
            );
            p
        };
        let mut newer = PendingAttrs::default();
        newer.merge(
            &SetAttrRequest {
                mode: Some(0o640),
                ..Default::default()
            },
            9,
        );
        let back = newer.clone().over(older(Some(77)), false).request(1);
        assert_eq!(
            (back.mode, back.uid, back.mtime_ns),
            (Some(0o640), Some(3), Some(77))
        );
        let back = newer.over(older(Some(77)), true).request(1);
        assert_eq!(back.mtime_ns, None, "a write came after the explicit time");
        let back = PendingAttrs::default().over(older(None), false).request(1);
        assert_eq!((back.mode, back.uid), (Some(0o600), Some(3)));
    }

    #[test]
    fn set_id_modes_are_not_deferred_and_a_chown_clears_them_in_the_view() {
        assert!(!PendingAttrs::can_defer(&SetAttrRequest {
            mode: Some(0o4755),
            ..Default::default()
        }));
        assert!(!PendingAttrs::can_defer(&SetAttrRequest {
            mode: Some(0o2755),
            ..Default::default()
        }));
        assert!(PendingAttrs::can_defer(&SetAttrRequest {
            mode: Some(0o1755),
            uid: Some(0),
            ..Default::default()
        }));
        let mut pending = PendingAttrs::default();
        pending.merge(
            &SetAttrRequest {
                uid: Some(5),
                ..Default::default()
            },
            1,
        );
        let mut shown = file(0o6775);
        pending.apply(&mut shown);
        assert_eq!(shown.mode, 0o0775, "as dfs-meta's chown does");
    }
}
