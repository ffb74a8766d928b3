//! Open files: registering a handle's state, loading its chunk map
//! (close-to-open), reloading it when another client committed, the last
//! close, and the leases that keep a file unlinked while open alive.

use super::closed_maps;
use super::known_names::NameChange;
use super::*;

impl Dfs {
    pub fn open_file(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.open_files.lock().get(&ino).cloned()
    }

    /// The whole chunk map, read in pages. Pages are separate transactions:
    /// if the file's data version changes between them (a commit landed),
    /// the read starts over, so the map is never a mix of two versions.
    /// `unless`: the data version of a map the caller keeps (0: none);
    /// `None` when the file's is still that.
    pub(super) async fn fetch_chunk_map(
        &self,
        ino: u64,
        unless: u64,
    ) -> Result<Option<(ChunkMap, u64, u64)>, DfsError> {
        const ATTEMPTS: usize = 20;
        'attempt: for attempt in 0..ATTEMPTS {
            let mut map = ChunkMap::default();
            let mut from = 0u64;
            let mut version = None;
            loop {
                let reply = self
                    .cluster
                    .meta
                    .get_chunk_map(ChunkMapRequest {
                        ino,
                        from_offset: from,
                        limit: 10_000,
                        unless_data_version: if attempt == 0 { unless } else { 0 },
                    })
                    .await?;
                if reply.unchanged {
                    return Ok(None);
                }
                if *version.get_or_insert(reply.data_version) != reply.data_version {
                    tracing::debug!(
                        ino,
                        "file changed while its chunk map was read; reading again"
                    );
                    continue 'attempt;
                }
                if reply.chunks.iter().any(|c| !c.shard_tokens.is_empty()) {
                    self.cluster.saw_tokens();
                }
                let (size, more) = (reply.size, reply.more);
                for c in reply.chunks {
                    from = c.offset + u64::from(c.len);
                    map.chunks.insert(c.offset, c);
                }
                if !more {
                    return Ok(Some((map, size, reply.data_version)));
                }
            }
        }
        Err(DfsError::retryable(
            libc::EAGAIN,
            format!("inode {ino} keeps changing while its chunk map is read"),
        ))
    }

    /// Opens `ino` for I/O. All handles of one inode on this client share
    /// one state (and its buffered writes). The entry is registered before
    /// the chunk map is read, and read under its lock, so an open racing a
    /// last close either shares the closing state (already flushed) or
    /// starts after it is gone; never from a map older than that close's
    /// commit. A shared state with nothing buffered is re-read when another
    /// client committed since (close-to-open consistency).
    pub async fn open(&self, ino: u64) -> Result<Arc<OpenFile>, DfsError> {
        self.open_known(ino, None).await
    }

    /// Opens a file this client has just created (`data_version` from the
    /// create's reply): its chunk map is empty by definition, so nothing is
    /// read from the metadata server.
    pub async fn open_created(&self, attr: &InodeRecord) -> Result<Arc<OpenFile>, DfsError> {
        self.open_known(attr.ino, Some(attr)).await
    }

    pub(super) async fn open_known(
        &self,
        ino: u64,
        created: Option<&InodeRecord>,
    ) -> Result<Arc<OpenFile>, DfsError> {
        if created.is_none() {
            // Close-to-open: what other clients committed before this open
            // must show, so no answer from before it is used after it.
            self.cluster.meta.forget_recent_file(ino);
        }
        let of = {
            let mut files = self.open_files.lock();
            let of = files
                .entry(ino)
                .or_insert_with(|| {
                    Arc::new(OpenFile {
                        ino,
                        state: tokio::sync::Mutex::new(FileState::placeholder(ino)),
                        opens: AtomicU64::new(0),
                    })
                })
                .clone();
            // Open counts change only under the map's lock.
            of.opens.fetch_add(1, Ordering::SeqCst);
            of
        };
        let result = {
            let mut st = self.lock(&of).await;
            match created {
                Some(attr) if !st.loaded => {
                    st.loaded = true;
                    st.data_version = attr.data_version;
                    st.known_attr = Some(attr.clone());
                    Ok(())
                }
                _ => self.refresh(&mut st).await.map(|_| ()),
            }
        };
        if let Err(e) = result {
            self.drop_open(&of).await;
            return Err(e);
        }
        Ok(of)
    }

    /// Loads the chunk map into a placeholder, or reloads a clean shared
    /// state whose inode changed since. Returns true when a map was
    /// (re)loaded.
    pub async fn refresh(&self, st: &mut FileState) -> Result<bool, DfsError> {
        self.settle(st).await;
        if st.loaded {
            if !st.is_clean() || st.orphaned {
                // Our own pending writes are what this client must see.
                return Ok(false);
            }
            let ino = st.ino;
            // A map made from this client's own upload carries no read
            // tokens: where servers want them, reading from it would ask
            // dfs-meta chunk by chunk and read nothing ahead (a file read
            // right after it was written, its last close not yet in).
            // The map as dfs-meta signs it, once, instead.
            if self.cluster.tokens_in_use() && st.map.has_unsigned_chunks() {
                tracing::debug!(
                    ino,
                    "loading a signed chunk map for this client's own upload"
                );
            } else {
                let attr = self
                    .cluster
                    .meta
                    .get_attr(dfs_proto::InoRequest { ino })
                    .await?;
                let unchanged = attr.data_version == st.data_version;
                st.learn(Some(attr));
                if unchanged {
                    return Ok(false);
                }
                tracing::debug!(
                    ino,
                    "file changed on another client; reloading its chunk map"
                );
            }
        }
        // A map this client kept from the file's last close: used if the
        // file did not change since (`closed_maps`).
        let kept = if st.loaded {
            None
        } else {
            // Hollow: only while the cache holds every inline chunk.
            self.closed_maps.take(st.ino).await.filter(|kept| {
                kept.map.chunks.values().all(|c| {
                    !c.chunk.as_ref().is_some_and(closed_maps::is_hollow)
                        || Fingerprint::from_slice(&c.fingerprint)
                            .is_ok_and(|fp| self.cache.contains(&fp))
                })
            })
        };
        let unless = kept.as_ref().map_or(0, |k| k.data_version);
        let (map, size, version) = match (self.fetch_chunk_map(st.ino, unless).await?, kept) {
            (Some(fetched), _) => fetched,
            (None, Some(kept)) => (kept.map, kept.size, kept.data_version),
            (None, None) => return Err(DfsError::io("chunk map unchanged, but none was kept")),
        };
        st.map = map;
        st.size = size;
        st.committed_size = size;
        st.data_version = version;
        st.loaded = true;
        Ok(true)
    }

    /// Called on the last close of a handle: flushes, and forgets the
    /// state when nobody has the file open any more.
    pub async fn release(&self, of: &Arc<OpenFile>) -> Result<(), DfsError> {
        let result = {
            let mut st = self.lock(of).await;
            self.flush(&mut st).await
        };
        self.drop_open(of).await;
        result
    }

    /// Drops one open of `of`; the last one removes the state. Bytes still
    /// buffered then (a flush that failed, a file unlinked elsewhere) are
    /// gone with it and leave the dirty count, and an inode this client
    /// kept alive after unlinking it is released.
    pub(super) async fn drop_open(&self, of: &Arc<OpenFile>) {
        let last = {
            let mut files = self.open_files.lock();
            let last = of.opens.fetch_sub(1, Ordering::SeqCst) == 1;
            if last && files.get(&of.ino).is_some_and(|f| Arc::ptr_eq(f, of)) {
                files.remove(&of.ino);
            }
            last
        };
        if !last {
            return;
        }
        let mut st = self.lock(of).await;
        // Maps of small files only (every chunk inline): a map with
        // shards holds read tokens that expire, and reading a big file
        // through stale ones costs a refusal and a lookup a chunk.
        if st.loaded
            && st.buffer.is_empty()
            && st.is_clean()
            && !st.orphaned
            && !st.unlinked_kept
            && st.data_version != u64::MAX
            && st
                .map
                .chunks
                .values()
                .all(|c| c.chunk.as_ref().is_some_and(|r| r.is_inline()))
        {
            let closed = closed_maps::ClosedMap {
                map: std::mem::take(&mut st.map),
                size: st.committed_size,
                data_version: st.data_version,
            };
            self.closed_maps.keep(st.ino, closed).await;
        }
        if !st.buffer.is_empty() {
            tracing::warn!(
                ino = st.ino,
                bytes = st.buffer.bytes(),
                orphaned = st.orphaned,
                "last close drops bytes that were never committed"
            );
        }
        self.track_dirty(st.buffer.bytes(), 0);
        st.buffer.clear();
        if std::mem::take(&mut st.unlinked_kept) {
            let ino = st.ino;
            let result = self
                .cluster
                .meta
                .forget_unlinked(dfs_proto::InoRequest { ino })
                .await;
            if let Err(e) = result {
                tracing::warn!(ino, error = %e, "cannot release an unlinked file's inode");
            }
        }
    }

    /// Renews the leases of files this client unlinked while it has them
    /// open: the metadata server removes kept inodes whose lease ran out
    /// (their client died), so a live client renews them every minute.
    pub async fn renew_unlinked_leases(&self) {
        let files: Vec<Arc<OpenFile>> = self.open_files.lock().values().cloned().collect();
        let mut inos = Vec::new();
        for of in files {
            // A state busy (a long flush) may be a kept one: renewing an
            // inode that is not kept changes nothing, so include it.
            let kept = of.state.try_lock().map_or(true, |st| st.unlinked_kept);
            if kept {
                inos.push(of.ino);
            }
        }
        if inos.is_empty() {
            return;
        }
        let count = inos.len();
        let result = self
            .cluster
            .meta
            .keep_unlinked(dfs_proto::KeepUnlinkedRequest { inos })
            .await;
        if let Err(e) = result {
            tracing::warn!(files = count, error = %e, "cannot renew the leases of unlinked open files");
        }
    }

    /// The open state of the inode `name` in `parent` names, if this client
    /// has it open: removing its last link must then keep the inode until
    /// the last close, as a local file system does. The state is returned
    /// with one more open, so a close racing the unlink cannot forget it
    /// before it is marked; the caller drops that open after marking. Costs
    /// a lookup only while this client has files open.
    pub(super) async fn open_state_named(&self, parent: u64, name: &[u8]) -> Option<Arc<OpenFile>> {
        if self.open_files.lock().is_empty() {
            return None;
        }
        let request = dfs_proto::LookupRequest {
            parent,
            name: name.to_vec(),
        };
        let attr = self.cluster.meta.lookup(request).await.ok()?;
        let files = self.open_files.lock();
        let of = files.get(&attr.ino)?;
        of.opens.fetch_add(1, Ordering::SeqCst);
        Some(of.clone())
    }

    /// After an unlink or rename that sent `keep_ino`: marks the state so
    /// its last close releases the kept inode, then drops the extra open
    /// [`Self::open_state_named`] took (which may be that last close).
    pub(super) async fn finish_keep(&self, kept: Option<Arc<OpenFile>>, removed: bool) {
        let Some(of) = kept else { return };
        if removed {
            of.state.lock().await.unlinked_kept = true;
        }
        self.drop_open(&of).await;
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), DfsError> {
        let kept = self.open_state_named(parent, name).await;
        let request = dfs_proto::RemoveRequest {
            parent,
            name: name.to_vec(),
            keep_ino: kept.as_ref().map_or(0, |of| of.ino),
            client_id: 0,
        };
        let sent = std::time::Instant::now();
        let result = self.cluster.meta.unlink(request).await;
        self.note_names(parent, result.is_ok(), NameChange::Removed(name), sent);
        self.finish_keep(kept, result.is_ok()).await;
        result.map(|_| ())
    }

    pub async fn rename(&self, mut request: dfs_proto::RenameRequest) -> Result<(), DfsError> {
        let kept = self
            .open_state_named(request.new_parent, &request.new_name)
            .await;
        request.keep_ino = kept.as_ref().map_or(0, |of| of.ino);
        if request.client_id == 0 {
            request.client_id = self.names.lease_client();
        }
        let exchange = request.flags & dfs_proto::RENAME_EXCHANGE != 0;
        let (parent, new_parent) = (request.parent, request.new_parent);
        let (name, new_name) = (request.name.clone(), request.new_name.clone());
        let sent = std::time::Instant::now();
        let result = self.cluster.meta.rename(request).await;
        let ok = result.is_ok();
        if exchange {
            self.note_names(parent, ok, NameChange::Unchanged, sent);
            if new_parent != parent {
                self.note_names(new_parent, ok, NameChange::Unchanged, sent);
            }
        } else if new_parent == parent {
            let (from, to) = (&name[..], &new_name[..]);
            self.note_names(parent, ok, NameChange::Renamed { from, to }, sent);
        } else {
            self.note_names(parent, ok, NameChange::Removed(&name), sent);
            self.note_names(new_parent, ok, NameChange::Added(&new_name), sent);
        }
        let replaced = result.is_ok() && !exchange;
        self.finish_keep(kept, replaced).await;
        result.map(|_| ())
    }
}
