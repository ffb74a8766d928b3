//! The `Meta` gRPC service: decodes a request, runs one transaction on a
//! blocking thread (the store API is synchronous), and maps the outcome to
//! a reply or a typed error.

use std::sync::Arc;

use dfs_core::error::DfsError;
use dfs_core::rpc::Connector;
use dfs_core::shard_token::Signer;
use dfs_core::time::now_ns;
use dfs_proto::meta_server::{Meta, MetaServer};
use dfs_proto::*;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::access::{AccessLog, TierClock};
use crate::confine::Scope;
use crate::error::{MetaError, Result};
use crate::maintenance::{fsck::FsckOptions, gc::GcOptions, Maintenance, MaintenanceConfig};
use crate::registry::Liveness;
use crate::store::{read_only, transact, KvTxn, MetaStore, StoreError};
use crate::{caps, chunkmap, confine, dir_lease, inodes, locks, namespace, registry, xattrs};

mod chunks;
mod creates;
mod gauges;
mod options;
mod transactions;
use chunks::owner_of;
use transactions::{changed_if_dir, gone, to_response, with_changed_dirs, Access};

/// Inode numbers a metadata server reserves at a time.
const INODE_BATCH: u64 = 1024;
/// Raw bytes of inline chunks a commit's handler verifies in place (a small
/// file's worth: tens of microseconds); more go to a blocking thread.
const INLINE_VERIFY_IN_PLACE: usize = 128 * 1024;

#[derive(Clone)]
pub struct MetaService {
    store: Arc<dyn MetaStore>,
    liveness: Liveness,
    /// Wakes the purge worker after a removal.
    purge_wake: Arc<tokio::sync::Notify>,
    inodes: Arc<inodes::InodeAllocator>,
    /// Rebuilds, scrub repairs, garbage collection, fsck.
    maintenance: Arc<Maintenance>,
    /// Wakes lock requests waiting on this server when a lock is released
    /// (waiters also poll, for locks released through another server).
    lock_released: Arc<tokio::sync::Notify>,
    started: std::time::Instant,
    /// The longest transaction so far, for `dfs stats`.
    longest: Arc<parking_lot::Mutex<(std::time::Duration, &'static str)>>,
    /// Test hook (`--inject-unknown-commit-every N`): every N-th create
    /// that committed answers as if its commit's outcome were unknown, as
    /// FoundationDB's `commit_unknown_result` does, so the client's retry
    /// of a create that happened is exercised. 0: off.
    unknown_create_every: u64,
    creates: Arc<std::sync::atomic::AtomicU64>,
    /// Signs shard tokens (`service::chunks`).
    tokens: Arc<Signer>,
    token_lifetime_ns: i64,
    /// The servers put tokens are granted for, and when they were read.
    token_servers: Arc<parking_lot::Mutex<Option<chunks::ServerList>>>,
    /// The clock tiering reads (files' access days).
    clock: Arc<TierClock>,
    /// Files read since the `access` worker last wrote their days.
    reads: Arc<AccessLog>,
    /// Between two passes of the `tiering` worker (`None`: it does not run).
    tier_interval: Option<std::time::Duration>,
    /// Cold files read again come back to hot (`cold::reheat`).
    reheat: bool,
}

/// A transaction over this is logged: FoundationDB refuses any older than
/// 5 s, and a request that slow is felt by whoever waits on it.
const SLOW_TRANSACTION: std::time::Duration = std::time::Duration::from_secs(1);

impl MetaService {
    /// Opens the volume on `store`, creating the root directory and the
    /// volume record (from `volume`) when the store is new. `connector`
    /// reaches the chunk servers for the maintenance work.
    pub fn open(
        store: Arc<dyn MetaStore>,
        volume: VolumeConfig,
        liveness: Liveness,
        maintenance: MaintenanceConfig,
        connector: Connector,
    ) -> Result<Self> {
        let now = now_ns();
        let fresh = dfs_core::shard_token::new_secret()
            .map_err(|e| MetaError::Invalid(format!("token secret: {e}")))?;
        let secret = transact(store.as_ref(), |txn| {
            registry::init_volume(txn, &volume)?;
            if namespace::init_root(txn, now)? {
                confine::mark_built(txn);
                crate::access::mark_indexed(txn);
            }
            registry::token_secret(txn, &fresh)
        })?;
        confine::build_backrefs(store.as_ref())?;
        crate::access::index_existing(store.as_ref())?;
        let purge_wake = Arc::new(tokio::sync::Notify::new());
        Ok(Self {
            maintenance: Maintenance::new(
                store.clone(),
                liveness,
                maintenance,
                connector,
                purge_wake.clone(),
            ),
            store,
            liveness,
            purge_wake,
            inodes: Arc::new(inodes::InodeAllocator::new(INODE_BATCH)),
            lock_released: Arc::new(tokio::sync::Notify::new()),
            started: std::time::Instant::now(),
            longest: Arc::new(parking_lot::Mutex::new((std::time::Duration::ZERO, ""))),
            unknown_create_every: 0,
            creates: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            tokens: Arc::new(Signer::new(&secret)),
            token_lifetime_ns: chunks::TOKEN_LIFETIME_NS,
            token_servers: Arc::new(parking_lot::Mutex::new(None)),
            clock: Arc::new(TierClock::system()),
            reads: Arc::new(AccessLog::default()),
            tier_interval: Some(crate::tiering::DEFAULT_INTERVAL),
            reheat: false,
        })
    }

    /// Starts the background work (purging removed files' chunk maps,
    /// rebuilds and repairs, garbage collection). Needs a tokio runtime.
    pub fn start_background(&self) {
        tokio::spawn(crate::purge::purge_worker(
            self.store.clone(),
            self.purge_wake.clone(),
            self.maintenance.workers().add("purge", "files"),
        ));
        tokio::spawn(self.maintenance.clone().run());
        tokio::spawn(transactions::sync_deferred(self.store.clone()));
        let cold_reads = (self.reheat && self.maintenance.recall().is_some()).then(|| {
            let (to, from) = tokio::sync::mpsc::channel(crate::cold::reheat::QUEUE);
            tokio::spawn(crate::cold::reheat::reheat_worker(
                self.store.clone(),
                self.maintenance.clone(),
                from,
                self.maintenance.workers().add("reheat", "files"),
            ));
            to
        });
        tokio::spawn(crate::access::record_reads(
            self.store.clone(),
            self.reads.clone(),
            self.clock.clone(),
            self.maintenance.workers().add("access", "files"),
            cold_reads,
        ));
        if let Some(interval) = self.tier_interval {
            tokio::spawn(crate::tiering::tiering_worker(
                self.store.clone(),
                self.clock.clone(),
                self.maintenance.clone(),
                self.maintenance.workers().add("tiering", "files"),
                interval,
            ));
        }
    }

    pub fn maintenance(&self) -> &Arc<Maintenance> {
        &self.maintenance
    }

    /// Maps a maintenance outcome to a reply.
    fn reply<T>(op: &'static str, result: Result<T>) -> Result<Response<T>, Status> {
        result.map(Response::new).map_err(|e| {
            let err = DfsError::from(e);
            tracing::warn!(op, errno = err.errno, error = %err.message, "maintenance request failed");
            Status::from(err)
        })
    }

    pub fn into_server(self) -> MetaServer<Self> {
        MetaServer::new(self)
            .max_decoding_message_size(MAX_META_REQUEST_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// How often a waiting lock request looks again for a release it was not
/// woken for (one made through another metadata server).
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// The longest a lock request waits on the server before answering.
const LOCK_WAIT_MAX_MS: u32 = 10_000;

impl MetaService {
    fn lock_clock(&self, now_ns: i64) -> locks::LockClock {
        locks::LockClock {
            now_ns,
            leases_trusted: self.started.elapsed() >= locks::LEASE,
        }
    }

    /// Wakes the purge worker when the change left a removed file's chunk
    /// map for it to release (a large file), and strips that flag from the
    /// reply. A wake costs the worker a transaction over the whole trash
    /// range, so not on every unlink or rename.
    fn wake_purge_if<T>(&self, reply: Response<(bool, T)>) -> Response<T> {
        let (purge_left, reply) = reply.into_inner();
        if purge_left {
            self.purge_wake.notify_one();
        }
        Response::new(reply)
    }
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn open_lock_session(
        &self,
        r: Request<LockSessionRequest>,
    ) -> Result<Response<LockSessionReply>, Status> {
        let r = r.into_inner();
        let services = self.clone();
        self.run("open_lock_session", move |t, now| {
            let (session, renewed) =
                locks::open_session(t, r.session, &r.host, services.lock_clock(now))?;
            Ok(LockSessionReply {
                session,
                lease_ms: locks::LEASE.as_millis() as u64,
                renewed,
            })
        })
        .await
    }

    async fn end_lock_session(
        &self,
        r: Request<LockSessionRequest>,
    ) -> Result<Response<Empty>, Status> {
        let session = r.into_inner().session;
        loop {
            let done = self
                .run("end_lock_session", move |t, _| {
                    locks::end_session_step(t, session)
                })
                .await?
                .into_inner();
            if done {
                break;
            }
        }
        self.lock_released.notify_waiters();
        Ok(Response::new(Empty {}))
    }

    async fn set_lock(&self, r: Request<SetLockRequest>) -> Result<Response<SetLockReply>, Status> {
        let caps = caps::of(&r);
        let r = r.into_inner();
        let wait = std::time::Duration::from_millis(r.wait_ms.min(LOCK_WAIT_MAX_MS).into());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the attempt, so a release between the
            // attempt and the wait is not missed.
            let released = self.lock_released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let mut request = r;
            let services = self.clone();
            let caps = caps.clone();
            let granted = self
                .run("set_lock", move |t, now| {
                    request.ino = Scope::resolve(t, caps.subtree())?.ino(t, r.ino)?;
                    locks::set_lock(t, &request, services.lock_clock(now))
                })
                .await?
                .into_inner();
            if granted {
                // Any change may have freed a range someone waits for.
                self.lock_released.notify_waiters();
                return Ok(Response::new(SetLockReply { granted }));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(SetLockReply { granted }));
            }
            let _ = tokio::time::timeout((deadline - now).min(LOCK_POLL), released).await;
        }
    }

    async fn get_lock(&self, r: Request<SetLockRequest>) -> Result<Response<GetLockReply>, Status> {
        let caps = caps::of(&r);
        let mut r = r.into_inner();
        let services = self.clone();
        self.point_read("get_lock", move |t, now| {
            r.ino = Scope::resolve(t, caps.subtree())?.ino(t, r.ino)?;
            locks::get_lock(t, &r, services.lock_clock(now))
        })
        .await
    }

    async fn lookup(&self, r: Request<LookupRequest>) -> Result<Response<InodeRecord>, Status> {
        let caps = caps::of(&r);
        let r = r.into_inner();
        self.point_read("lookup", move |t, _| {
            let scope = Scope::resolve(t, caps.subtree())?;
            let parent = scope.ino(t, r.parent)?;
            let mut found = namespace::lookup(t, parent, &r.name)?;
            scope.show(&mut found);
            Ok(found)
        })
        .await
    }

    async fn get_attr(&self, r: Request<InoRequest>) -> Result<Response<InodeRecord>, Status> {
        let caps = caps::of(&r);
        let ino = r.into_inner().ino;
        self.point_read("getattr", move |t, _| {
            let scope = Scope::resolve(t, caps.subtree())?;
            let ino = scope.ino(t, ino)?;
            let mut inode = inodes::get_inode(t, ino)?;
            scope.show(&mut inode);
            Ok(inode)
        })
        .await
    }

    async fn set_attr(&self, r: Request<SetAttrRequest>) -> Result<Response<InodeRecord>, Status> {
        let caps = caps::of(&r);
        let mut r = r.into_inner();
        let asked = r.ino;
        let reply = self
            .run("setattr", move |t, now| {
                t.defer_sync();
                let scope = Scope::resolve(t, caps.subtree())?;
                r.ino = scope.ino(t, asked)?;
                dir_lease::admit_change(t, r.ino, r.client_id, now)?;
                if caps.unprivileged && r.mode.is_some() {
                    let kind = inodes::get_inode(t, r.ino)?.kind();
                    caps::check_mode(&caps, kind, r.mode)?;
                }
                let mut inode = namespace::set_attr(t, &r, now)?;
                scope.show(&mut inode);
                let dirs = changed_if_dir(&inode);
                Ok((inode, dirs))
            })
            .await?;
        Ok(with_changed_dirs(reply))
    }

    async fn create(&self, r: Request<CreateRequest>) -> Result<Response<InodeRecord>, Status> {
        self.create_as(caps::of(&r), r.into_inner()).await
    }

    async fn unlink(&self, r: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        let caps = caps::of(&r);
        let r = r.into_inner();
        let reply = self
            .run("unlink", move |t, now| {
                t.defer_sync();
                let scope = Scope::resolve(t, caps.subtree())?;
                let parent = scope.ino(t, r.parent)?;
                let purge_left = namespace::unlink(t, parent, &r.name, r.keep_ino, now)?;
                let mut dirs = vec![inodes::get_inode(t, parent)?];
                scope.show_all(&mut dirs);
                Ok((purge_left, (Empty {}, dirs)))
            })
            .await?;
        Ok(with_changed_dirs(self.wake_purge_if(reply)))
    }

    async fn forget_unlinked(&self, r: Request<InoRequest>) -> Result<Response<Empty>, Status> {
        let caps = caps::of(&r);
        let ino = r.into_inner().ino;
        let reply = self
            .run("forget_unlinked", move |t, _| {
                let ino = Scope::resolve(t, caps.subtree())?.ino(t, ino)?;
                namespace::forget_unlinked(t, ino).map(|purge_left| (purge_left, Empty {}))
            })
            .await?;
        Ok(self.wake_purge_if(reply))
    }

    async fn keep_unlinked(
        &self,
        r: Request<KeepUnlinkedRequest>,
    ) -> Result<Response<Empty>, Status> {
        let caps = caps::of(&r);
        let r = r.into_inner();
        if r.inos.len() > 100_000 {
            return Err(DfsError::new(libc::EINVAL, "too many inodes in one request").into());
        }
        self.run("keep_unlinked", move |t, now| {
            let scope = Scope::resolve(t, caps.subtree())?;
            let inos = r
                .inos
                .iter()
                .map(|&ino| scope.ino(t, ino))
                .collect::<Result<Vec<u64>>>()?;
            namespace::keep_unlinked(t, &inos, now).map(|_| Empty {})
        })
        .await
    }

    async fn link(&self, r: Request<LinkRequest>) -> Result<Response<InodeRecord>, Status> {
        let caps = caps::of(&r);
        let r = r.into_inner();
        let reply = self
            .run("link", move |t, now| {
                t.defer_sync();
                let scope = Scope::resolve(t, caps.subtree())?;
                let (ino, new_parent) = (scope.ino(t, r.ino)?, scope.ino(t, r.new_parent)?);
                let mut made = [
                    dir_lease::link(t, ino, new_parent, &r.new_name, r.client_id, now)?,
                    inodes::get_inode(t, new_parent)?,
                ];
                scope.show_all(&mut made);
                let [inode, parent] = made;
                Ok((inode, vec![parent]))
            })
            .await?;
        Ok(with_changed_dirs(reply))
    }

    async fn set_xattr(&self, r: Request<XattrRequest>) -> Result<Response<Empty>, Status> {
        let caps = caps::of(&r);
        let mut r = r.into_inner();
        caps::check_xattr(&caps, &r).map_err(|e| Status::from(DfsError::from(e)))?;
        let asked = r.ino;
        let reply = self
            .run("setxattr", move |t, now| {
                t.defer_sync();
                let scope = Scope::resolve(t, caps.subtree())?;
                r.ino = scope.ino(t, asked)?;
                dir_lease::admit_change(t, r.ino, r.client_id, now)?;
                xattrs::set_xattr(t, &r, now)?;
                let mut dirs = changed_if_dir(&inodes::get_inode(t, r.ino)?);
                scope.show_all(&mut dirs);
                Ok((Empty {}, dirs))
            })
            .await?;
        Ok(with_changed_dirs(reply))
    }

    async fn get_xattr(&self, r: Request<XattrRequest>) -> Result<Response<XattrReply>, Status> {
        let caps = caps::of(&r);
        let r = r.into_inner();
        self.point_read("getxattr", move |t, _| {
            let ino = Scope::resolve(t, caps.subtree())?.ino(t, r.ino)?;
            xattrs::get_xattr(t, ino, &r.name).map(|value| XattrReply { value })
        })
        .await
    }

    async fn list_xattr(&self, r: Request<InoRequest>) -> Result<Response<XattrListReply>, Status> {
        let caps = caps::of(&r);
        let ino = r.into_inner().ino;
        self.read("listxattr", move |t, _| {
            let ino = Scope::resolve(t, caps.subtree())?.ino(t, ino)?;
            xattrs::list_xattr(t, ino).map(|names| XattrListReply { names })
        })
        .await
    }

    async fn remove_xattr(&self, r: Request<XattrRequest>) -> Result<Response<Empty>, Status> {
        let caps = caps::of(&r);
        let r = r.into_inner();
        caps::check_xattr(&caps, &r).map_err(|e| Status::from(DfsError::from(e)))?;
        let reply = self
            .run("removexattr", move |t, now| {
                t.defer_sync();
                let scope = Scope::resolve(t, caps.subtree())?;
                let ino = scope.ino(t, r.ino)?;
                dir_lease::admit_change(t, ino, r.client_id, now)?;
                xattrs::remove_xattr(t, ino, &r.name, now)?;
                let mut dirs = changed_if_dir(&inodes::get_inode(t, ino)?);
                scope.show_all(&mut dirs);
                Ok((Empty {}, dirs))
            })
            .await?;
        Ok(with_changed_dirs(reply))
    }

    async fn gc(&self, r: Request<GcRequest>) -> Result<Response<GcReport>, Status> {
        let r = r.into_inner();
        if r.grace_ns < 0 || r.clock_skew_ns < 0 || r.orphan_grace_ns < 0 {
            return Err(DfsError::new(libc::EINVAL, "negative grace period or clock skew").into());
        }
        // Below it, GC could delete the shards of an upload whose commit is
        // still on its way, whoever asks.
        let min = self.maintenance.config().min_gc_grace;
        let shortest = if r.orphans {
            r.grace_ns.min(r.orphan_grace_ns)
        } else {
            r.grace_ns
        };
        if (shortest as u128) < min.as_nanos() {
            return Err(DfsError::new(
                libc::EINVAL,
                format!(
                    "grace periods under {} s are refused by this cluster (dfs-meta --min-gc-grace)",
                    min.as_secs()
                ),
            )
            .into());
        }
        let options = GcOptions {
            grace: std::time::Duration::from_nanos(r.grace_ns as u64),
            clock_skew: std::time::Duration::from_nanos(r.clock_skew_ns as u64),
            orphan_grace: r
                .orphans
                .then(|| std::time::Duration::from_nanos(r.orphan_grace_ns as u64)),
        };
        Self::reply("gc", self.maintenance.gc(options).await)
    }

    async fn fsck(&self, r: Request<FsckRequest>) -> Result<Response<FsckReport>, Status> {
        let r = r.into_inner();
        let options = FsckOptions {
            verify: r.verify,
            orphan_grace_ns: r.orphan_grace_ns.max(0),
        };
        Self::reply("fsck", self.maintenance.fsck(options).await)
    }

    async fn report_bad_shards(
        &self,
        r: Request<ReportBadShardsRequest>,
    ) -> Result<Response<Empty>, Status> {
        let key_id = caller_key(&r);
        let r = r.into_inner();
        // Only the server itself reports its shards damaged.
        if key_id.is_some() {
            let id = r.server_id;
            self.point_read("report_bad_shards", move |t, _| {
                registry::check_server_key(t, id, key_id.as_ref())
            })
            .await?;
        }
        Self::reply(
            "report_bad_shards",
            self.maintenance
                .report_bad(r.server_id, r.shards)
                .map(|()| Empty {}),
        )
    }

    async fn rmdir(&self, r: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        let caps = caps::of(&r);
        let r = r.into_inner();
        let reply = self
            .run("rmdir", move |t, now| {
                t.defer_sync();
                let scope = Scope::resolve(t, caps.subtree())?;
                let parent = scope.ino(t, r.parent)?;
                let removed = namespace::lookup(t, parent, &r.name).ok();
                dir_lease::rmdir(t, parent, &r.name, r.client_id, now)?;
                let mut dirs = vec![inodes::get_inode(t, parent)?];
                dirs.extend(removed.map(gone));
                scope.show_all(&mut dirs);
                Ok((Empty {}, dirs))
            })
            .await?;
        // A directory has no chunk map: nothing for the purge worker.
        Ok(with_changed_dirs(reply))
    }

    async fn rename(&self, r: Request<RenameRequest>) -> Result<Response<Empty>, Status> {
        let caps = caps::of(&r);
        let asked = r.into_inner();
        let reply = self
            .run("rename", move |t, now| {
                t.defer_sync();
                let scope = Scope::resolve(t, caps.subtree())?;
                let r = RenameRequest {
                    parent: scope.ino(t, asked.parent)?,
                    new_parent: scope.ino(t, asked.new_parent)?,
                    ..asked.clone()
                };
                let target = namespace::lookup(t, r.new_parent, &r.new_name).ok();
                let purge_left = dir_lease::rename(t, &r, now)?;
                let mut dirs = vec![inodes::get_inode(t, r.parent)?];
                // A directory the rename replaced is gone.
                if let Some(old) = target
                    .filter(|o| o.kind() == FileKind::Directory && r.flags & RENAME_EXCHANGE == 0)
                {
                    if inodes::get_inode(t, old.ino).is_err() {
                        dirs.push(gone(old));
                    }
                }
                if r.new_parent != r.parent {
                    dirs.push(inodes::get_inode(t, r.new_parent)?);
                }
                // A directory that moved has a new ctime (and `..`). Its
                // name is gone after a plain rename, hence `ok()`.
                for (parent, name) in [(r.new_parent, &r.new_name), (r.parent, &r.name)] {
                    if let Ok(moved) = namespace::lookup(t, parent, name) {
                        if moved.kind() == FileKind::Directory {
                            dirs.push(moved);
                        }
                    }
                }
                scope.show_all(&mut dirs);
                Ok((purge_left, (Empty {}, dirs)))
            })
            .await?;
        Ok(with_changed_dirs(self.wake_purge_if(reply)))
    }

    async fn read_dir(&self, r: Request<ReadDirRequest>) -> Result<Response<ReadDirReply>, Status> {
        let caps = caps::of(&r);
        let r = r.into_inner();
        self.read("readdir", move |t, _| {
            let scope = Scope::resolve(t, caps.subtree())?;
            let ino = scope.ino(t, r.ino)?;
            let (mut entries, more) =
                namespace::read_dir(t, ino, &r.after_name, r.limit as usize, r.plus)?;
            for entry in &mut entries {
                scope.show_entry(entry);
            }
            Ok(ReadDirReply { entries, more })
        })
        .await
    }

    async fn sync(&self, _r: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.sync_store().await.map(|()| Response::new(Empty {}))
    }

    // statfs, list_servers and stats only read: on a snapshot, never
    // queued behind other requests' synced commits.
    async fn stat_fs(&self, _r: Request<Empty>) -> Result<Response<StatFsReply>, Status> {
        let liveness = self.liveness;
        self.read("statfs", move |t, now| registry::stat_fs(t, &liveness, now))
            .await
    }

    async fn get_volume_config(
        &self,
        _r: Request<Empty>,
    ) -> Result<Response<VolumeConfig>, Status> {
        let staging = self.maintenance.config().stage_delay.is_some();
        self.run("volume", move |t, _| {
            let mut volume = registry::volume_config(t)?;
            if !staging {
                // Nothing would move staged chunks: clients must not stage.
                volume.stage_max_bytes = 0;
            }
            Ok(volume)
        })
        .await
    }

    async fn lookup_chunks(
        &self,
        r: Request<LookupChunksRequest>,
    ) -> Result<Response<LookupChunksReply>, Status> {
        let signs = chunks::wants_tokens(&r);
        self.lookup_chunks_as(owner_of(&r), signs, r.into_inner())
            .await
    }

    async fn commit_chunks(
        &self,
        r: Request<CommitChunksRequest>,
    ) -> Result<Response<InodeRecord>, Status> {
        let caps = caps::of(&r);
        self.commit_chunks_as(owner_of(&r), caps, r.into_inner())
            .await
    }

    async fn reserve_inodes(
        &self,
        r: Request<Empty>,
    ) -> Result<Response<ReserveInodesReply>, Status> {
        self.reserve_inodes_as(caps::of(&r)).await
    }

    async fn get_chunk_map(
        &self,
        r: Request<ChunkMapRequest>,
    ) -> Result<Response<ChunkMapReply>, Status> {
        let signs = chunks::wants_tokens(&r);
        let caps = caps::of(&r);
        let r = r.into_inner();
        let (ino, first_page) = (r.ino, r.from_offset == 0);
        let mut reply = self
            .read("chunk_map", move |t, _| {
                let ino = Scope::resolve(t, caps.subtree())?.ino(t, r.ino)?;
                if let Some(unchanged) = chunkmap::unchanged(t, ino, &r)? {
                    return Ok(unchanged);
                }
                let mut map = chunkmap::chunk_map(t, ino, r.from_offset, r.limit as usize)?;
                crate::dictionary::confine(t, &mut map.chunks, caps.subtree.is_some())?;
                Ok(map)
            })
            .await?;
        // A file opened and read: its access day, written later in a batch.
        if first_page {
            self.reads.read(ino, self.clock.today());
        }
        if signs {
            self.sign_reads(&mut reply.get_mut().chunks);
        }
        Ok(reply)
    }

    async fn register_server(
        &self,
        r: Request<RegisterServerRequest>,
    ) -> Result<Response<RegisterServerReply>, Status> {
        let key_id = caller_key(&r);
        let r = r.into_inner();
        let reply = self
            .run("register", move |t, now| {
                Ok(RegisterServerReply {
                    server_id: registry::register(t, &r, now, key_id.as_ref())?,
                    token_key: Vec::new(),
                })
            })
            .await
            .map(|mut reply| {
                // The key it checks shard tokens with: only for the
                // certificate the id is bound to (register refused others).
                let id = reply.get_ref().server_id;
                reply.get_mut().token_key = self.tokens.key_bytes(id).to_vec();
                reply
            })?;
        tracing::info!(
            server_id = reply.get_ref().server_id,
            "chunk server registered"
        );
        Ok(reply)
    }

    async fn heartbeat(&self, r: Request<HeartbeatRequest>) -> Result<Response<Empty>, Status> {
        let key_id = caller_key(&r);
        let mut r = r.into_inner();
        let (server_id, workers) = (r.server_id, std::mem::take(&mut r.workers));
        let reply = self
            .run("heartbeat", move |t, now| {
                registry::heartbeat(t, &r, now, key_id.as_ref()).map(|_| Empty {})
            })
            .await?;
        // Only from the server the certificate is bound to (the heartbeat
        // checked it); what it may say is bounded there.
        self.maintenance.note_server_workers(server_id, workers);
        Ok(reply)
    }

    async fn tier_status(&self, _r: Request<Empty>) -> Result<Response<TierStatusReply>, Status> {
        let today = self.clock.today();
        self.read("tier_status", move |t, _| crate::access::status(t, today))
            .await
    }

    async fn read_cold_chunk(
        &self,
        r: Request<ColdChunkRequest>,
    ) -> Result<Response<ColdChunkReply>, Status> {
        self.cold_chunk(r).await
    }

    async fn get_dictionary(
        &self,
        r: Request<DictionaryRequest>,
    ) -> Result<Response<DictionaryRecord>, Status> {
        let (confined, id) = (caps::of(&r).subtree.is_some(), r.into_inner().id);
        self.read("dictionary", move |t, _| {
            crate::dictionary::for_client(t, id, confined)
        })
        .await
    }

    async fn workers(&self, _r: Request<Empty>) -> Result<Response<WorkersReply>, Status> {
        Ok(Response::new(WorkersReply {
            workers: self.maintenance.cluster_workers(),
        }))
    }

    async fn list_servers(&self, _r: Request<Empty>) -> Result<Response<ListServersReply>, Status> {
        let liveness = self.liveness;
        let repair = Some(self.maintenance.status());
        self.read("list_servers", move |t, now| {
            Ok(ListServersReply {
                servers: registry::list(t, &liveness, now)?,
                repair,
            })
        })
        .await
    }

    async fn stats(&self, _r: Request<Empty>) -> Result<Response<StatsReply>, Status> {
        let liveness = self.liveness;
        self.read("stats", move |t, now| {
            gauges::volume_stats(t, &liveness, now)
        })
        .await
        .map(|mut reply| {
            let (took, op) = *self.longest.lock();
            reply.get_mut().longest_transaction_us = took.as_micros() as u64;
            reply.get_mut().longest_transaction_op = op.to_string();
            let (transactions, retries) = crate::store::transaction_counts();
            reply.get_mut().transactions = transactions;
            reply.get_mut().transaction_retries = retries;
            reply
        })
    }
}

/// Refuses a request carrying more than [`MAX_CHUNKS_PER_REQUEST`] of
/// something (a client's requests stay far below it).
fn at_most(what: &str, count: usize) -> Result<(), Status> {
    if count > MAX_CHUNKS_PER_REQUEST {
        return Err(DfsError::new(
            libc::E2BIG,
            format!("{count} {what}: at most {MAX_CHUNKS_PER_REQUEST}"),
        )
        .into());
    }
    Ok(())
}

/// The certificate key of the caller of `r` (TLS connections only).
fn caller_key<T>(r: &Request<T>) -> Option<[u8; 32]> {
    dfs_core::tls::PeerInfo::of(r).and_then(|p| p.key_id)
}
