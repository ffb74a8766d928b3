//! The dedup side of the chunk RPCs: lookups and commits scoped by who
//! uploads (`ChunkRecord.owner`), with other identities' unchecked uploads
//! checked through `maintenance::verify` before anyone else relies on them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_proto::{
    ChunkRecord, ColdChunkReply, ColdChunkRequest, CommitChunksRequest, CreateRequest, FileKind,
    InodeRecord, LookupChunksReply, LookupChunksRequest, SetAttrRequest, Standing,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{at_most, to_response, Access, MetaService, INLINE_VERIFY_IN_PLACE};
use crate::caps;
use crate::chunkmap;
use crate::confine::Scope;
use crate::error::MetaError;
use crate::maintenance::verify::Verdict;
use crate::namespace;
use crate::registry;
use dfs_core::shard_token::ShardOp;
use dfs_core::time::now_ns;
use dfs_core::tls::Caps;
use dfs_proto::{MappedChunk, PutGrant};

/// Who is writing, for `ChunkRecord.owner` (see `PeerInfo::owner_id`).
pub(super) fn owner_of<T>(request: &Request<T>) -> Vec<u8> {
    dfs_core::tls::PeerInfo::owner_id(request)
}

/// How long a shard token stays good: a chunk map (or an upload) older
/// than this is refreshed by the client when a server refuses it.
pub(super) const TOKEN_LIFETIME_NS: i64 = 10 * 60 * 1_000_000_000;
/// The "server" a cold chunk's read token is for: dfs-meta itself (chunk
/// servers are numbered from 1).
pub(super) const COLD_READER: u32 = 0;
/// The servers put tokens are granted for, as read at a time.
pub(super) type ServerList = (std::time::Instant, Arc<Vec<u32>>);

/// How long the list of servers put tokens are granted for is reused.
const TOKEN_SERVERS_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the caller gets shard tokens: a client with a certificate.
/// Chunk servers check tokens only from such clients (plaintext and
/// in-process callers are not authenticated at all), so nobody else needs
/// them.
pub(super) fn wants_tokens<T>(request: &Request<T>) -> bool {
    dfs_core::tls::PeerInfo::of(request)
        .and_then(|peer| peer.identity.as_ref())
        .is_some_and(|identity| identity.role == dfs_core::tls::Role::Client)
}

impl MetaService {
    /// Adds to each mapped chunk stored as shards a read token per shard,
    /// for the server that holds it.
    pub(super) fn sign_reads(&self, chunks: &mut [MappedChunk]) {
        let expires = now_ns().saturating_add(self.token_lifetime_ns);
        // A chunk that recurs in the file (a repeated block) is signed
        // once: its entry, and so its servers, are the same every time.
        let mut signed: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
        for mapped in chunks {
            let Some(rec) = mapped.chunk.as_ref().filter(|rec| !rec.is_inline()) else {
                continue;
            };
            if rec.is_packed() {
                // Read through dfs-meta (`ReadColdChunk`), with one token.
                mapped.shard_tokens =
                    vec![self
                        .tokens
                        .sign(COLD_READER, ShardOp::Get, &mapped.fingerprint, expires)];
                continue;
            }
            if let Some(tokens) = signed.get(&mapped.fingerprint) {
                mapped.shard_tokens = tokens.clone();
                continue;
            }
            let tokens: Vec<Vec<u8>> = rec
                .shard_servers
                .iter()
                .map(|&id| {
                    self.tokens
                        .sign(id, ShardOp::Get, &mapped.fingerprint, expires)
                })
                .collect();
            signed.insert(mapped.fingerprint.clone(), tokens.clone());
            mapped.shard_tokens = tokens;
        }
    }

    /// The registered servers that are not down: where a client may
    /// upload. Read at most once a second.
    async fn token_servers(&self) -> Result<Arc<Vec<u32>>, Status> {
        if let Some((read, servers)) = self.token_servers.lock().as_ref() {
            if read.elapsed() < TOKEN_SERVERS_FOR {
                return Ok(servers.clone());
            }
        }
        let liveness = self.liveness;
        let servers: Vec<u32> = self
            .read("token_servers", move |t, now| {
                Ok(registry::list(t, &liveness, now)?
                    .into_iter()
                    .filter(|s| s.state() != dfs_proto::ServerState::Down)
                    .filter_map(|s| s.record.map(|r| r.id))
                    .collect())
            })
            .await?
            .into_inner();
        let servers = Arc::new(servers);
        *self.token_servers.lock() = Some((std::time::Instant::now(), servers.clone()));
        Ok(servers)
    }

    /// `LookupChunks` for the writer `owner`.
    pub(super) async fn lookup_chunks_as(
        &self,
        owner: Vec<u8>,
        signs: bool,
        r: LookupChunksRequest,
    ) -> Result<Response<LookupChunksReply>, Status> {
        let fingerprints = Arc::new(r.fingerprints);
        at_most("fingerprints per LookupChunks", fingerprints.len())?;
        let (found, dead_since) = {
            let fingerprints = fingerprints.clone();
            self.read("lookup_chunks", move |t, _| {
                chunkmap::lookup_chunks_and_deaths(t, &fingerprints)
            })
            .await?
            .into_inner()
        };
        // Dedup is offered against an entry only to its uploader until it
        // is checked (maintenance::verify): check the others' now.
        let good = self
            .check_foreign_uploads(&owner, &fingerprints, &found)
            .await;
        let known: Vec<bool> = fingerprints
            .iter()
            .zip(&found)
            .map(
                |(fp, rec)| match rec.as_ref().map(|r| r.standing_for(&owner)) {
                    Some(Standing::Usable) => true,
                    Some(Standing::Unchecked) => {
                        Fingerprint::from_slice(fp).is_ok_and(|fp| good.contains(&fp))
                    }
                    _ => false,
                },
            )
            .collect();
        let records = found
            .into_iter()
            .zip(&known)
            .map(|(rec, &known)| rec.filter(|_| known).unwrap_or_default())
            .collect();
        // Chunks to upload: a put token for each server that may take them.
        let grants = if signs && known.iter().any(|k| !k) {
            let servers = self.token_servers().await?;
            let expires = now_ns().saturating_add(self.token_lifetime_ns);
            let skew_ns = self.maintenance.clock_skew_ns();
            fingerprints
                .iter()
                .zip(&known)
                .zip(&dead_since)
                .map(|((fp, &known), &dead_since)| {
                    if known {
                        return PutGrant::default();
                    }
                    // A dead chunk's shards stay until garbage collection
                    // deletes them; an upload coded otherwise (another
                    // codec) may replace them, as that deletion would.
                    let replace_before = if dead_since > 0 {
                        dead_since.saturating_sub(skew_ns).max(1)
                    } else {
                        0
                    };
                    PutGrant {
                        servers: servers.to_vec(),
                        tokens: servers
                            .iter()
                            .map(|&id| self.tokens.sign_put(id, fp, expires, replace_before))
                            .collect(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(LookupChunksReply {
            known,
            records,
            grants,
        }))
    }

    /// `CommitChunks` for the writer `owner`, with its caps (confined to
    /// their subtree).
    pub(super) async fn commit_chunks_as(
        &self,
        owner: Vec<u8>,
        caps: Caps,
        r: CommitChunksRequest,
    ) -> Result<Response<InodeRecord>, Status> {
        at_most("chunks per CommitChunks", r.chunks.len())?;
        at_most("replaced ranges per CommitChunks", r.replaced.len())?;
        let span = tracing::debug_span!("commit", ino = r.ino, chunks = r.chunks.len());
        let truncate = r.truncate;
        // Inline chunks are checked against their fingerprints before the
        // transaction; a small file's in place, more on a blocking thread.
        let checked = if chunkmap::inline_raw_bytes(&r) <= INLINE_VERIFY_IN_PLACE {
            chunkmap::verify_inline(&r).map(|()| r)
        } else {
            tokio::task::spawn_blocking(move || chunkmap::verify_inline(&r).map(|()| r))
                .await
                .map_err(|e| Status::internal(format!("inline check panicked: {e}")))?
        };
        let r = match checked {
            Ok(r) => Arc::new(r),
            Err(e) => return to_response("commit", Err(e)),
        };
        if let Some(attrs) = &r.attrs {
            // Refused before anything is written, as SetAttr refuses it.
            if let Err(e) = caps::check_mode(&caps, FileKind::Regular, attrs.mode) {
                return to_response("commit", Err(e));
            }
        }
        if let Some(create) = &r.create {
            if let Err(e) = Self::check_carried_create(&caps, r.ino, create) {
                return to_response("commit", Err(e));
            }
        }
        let subtree: Option<Arc<str>> = caps.subtree.map(Arc::from);
        let today = self.clock.today();
        let commit =
            |r: Arc<CommitChunksRequest>, owner: Arc<Vec<u8>>, checked: Arc<HashSet<Vec<u8>>>| {
                let subtree = subtree.clone();
                self.execute_raw("commit", Access::ReadWrite, move |t, now| {
                    let scope = Scope::resolve(t, subtree.as_deref())?;
                    // The file's own create first, answered to the kernel
                    // before it was sent (`creates`): made here, with the
                    // data, it costs no round trip of its own.
                    let mut dirs = Vec::new();
                    if let Some(create) = &r.create {
                        let create = CreateRequest {
                            parent: scope.ino(t, create.parent)?,
                            ..create.clone()
                        };
                        super::creates::create_picked(t, &create, now)?;
                        dirs.push(crate::inodes::get_inode(t, create.parent)?);
                        scope.show_all(&mut dirs);
                    }
                    // The root a confined caller names is the subtree's
                    // directory, which has no chunk map either.
                    if scope.ino(t, r.ino)? != r.ino {
                        return Err(MetaError::IsDir);
                    }
                    let mut inode = chunkmap::commit_checked(t, &r, now, &owner, &checked, today)?;
                    if let Some(attrs) = &r.attrs {
                        // After the data: an explicit mtime wins over the
                        // commit's, as utimensat after write(2) does.
                        let attrs = SetAttrRequest {
                            ino: r.ino,
                            ..*attrs
                        };
                        inode = namespace::set_attr(t, &attrs, now)?;
                    }
                    scope.show(&mut inode);
                    Ok((inode, dirs))
                })
                .instrument(span.clone())
            };
        let owner = Arc::new(owner);
        let mut checked = Arc::new(HashSet::new());
        let mut result = commit(r.clone(), owner.clone(), checked.clone()).await?;
        if let Err(MetaError::Unchecked(fingerprints)) = &result {
            // Entries another identity uploaded: check them (this commit
            // then uses the good ones and replaces the bad) and commit again.
            let fingerprints = Arc::new(fingerprints.clone());
            let found = {
                let fingerprints = fingerprints.clone();
                self.execute_raw("lookup_chunks", Access::Read, move |t, _| {
                    chunkmap::lookup_chunks(t, &fingerprints)
                })
                .await?
                // Unread, nothing is checked: the commit answers a retry.
                .unwrap_or_default()
            };
            self.check_foreign_uploads(&owner, &fingerprints, &found)
                .await;
            result = commit(r.clone(), owner.clone(), checked.clone()).await?;
        }
        if let Err(MetaError::ReplacesFailed(fingerprints)) = &result {
            // This commit's uploads replace entries found bad, whose shards
            // dfs-meta deleted by uploader: read them back before they
            // become the entries. Those not whole are uploaded again.
            let (good, lost) = self.check_replacements(&r, fingerprints).await;
            if !lost.is_empty() {
                return to_response("commit", Err(MetaError::MissingChunks(lost)));
            }
            checked = Arc::new(good);
            result = commit(r, owner, checked).await?;
        }
        let reply = super::with_changed_dirs(to_response("commit", result)?);
        if truncate {
            // A large cut leaves its tail to the purge worker.
            self.purge_wake.notify_one();
        }
        Ok(reply)
    }

    /// Reads back this commit's uploads of `fingerprints`: returns those
    /// found to be their chunks, and those that are not (or cannot be
    /// told now), which the client must upload again.
    async fn check_replacements(
        &self,
        r: &CommitChunksRequest,
        fingerprints: &[Vec<u8>],
    ) -> (HashSet<Vec<u8>>, Vec<Vec<u8>>) {
        let mut good = HashSet::new();
        let mut lost = Vec::new();
        for fp in fingerprints {
            let upload = r
                .chunks
                .iter()
                .find(|c| &c.fingerprint == fp)
                .and_then(|c| c.uploaded.clone());
            let verdict = match (Fingerprint::from_slice(fp), upload) {
                (Ok(parsed), Some(rec)) => self.maintenance.verify_chunk(&parsed, &rec).await,
                _ => Verdict::Bad("no upload in the request".into()),
            };
            if verdict == Verdict::Good {
                good.insert(fp.clone());
            } else {
                tracing::info!(chunk = %hex::encode(fp), ?verdict, "an upload replacing a bad entry is not whole; asking for it again");
                lost.push(fp.clone());
            }
        }
        (good, lost)
    }

    /// Checks the entries among `found` (the index entries of
    /// `fingerprints`, as read) that another identity than `owner`
    /// uploaded and nobody has checked, recording each verdict. Returns
    /// those found to be their chunk. Rare: only the first time a chunk
    /// written under one certificate is written under another.
    async fn check_foreign_uploads(
        &self,
        owner: &[u8],
        fingerprints: &[Vec<u8>],
        found: &[Option<ChunkRecord>],
    ) -> std::collections::HashSet<Fingerprint> {
        let mut seen = std::collections::HashSet::new();
        let unchecked: Vec<(Fingerprint, ChunkRecord)> = fingerprints
            .iter()
            .zip(found)
            .filter_map(|(fp, rec)| {
                let rec = rec.as_ref()?;
                let fp = Fingerprint::from_slice(fp).ok()?;
                (rec.standing_for(owner) == Standing::Unchecked && seen.insert(fp))
                    .then(|| (fp, rec.clone()))
            })
            .collect();
        if unchecked.is_empty() {
            return std::collections::HashSet::new();
        }
        tracing::debug!(chunks = unchecked.len(), "checking other clients' uploads");
        self.maintenance
            .verify_and_record(unchecked)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "recording upload checks failed");
                std::collections::HashSet::new()
            })
    }
}

impl MetaService {
    /// `ReadColdChunk`: a packed chunk's raw bytes, from its frame on the
    /// cold store (`cold::recall`), for a client holding the read token
    /// its chunk map carried.
    pub(super) async fn cold_chunk(
        &self,
        r: Request<ColdChunkRequest>,
    ) -> Result<Response<ColdChunkReply>, Status> {
        let signs = wants_tokens(&r);
        let r = r.into_inner();
        if signs {
            self.tokens
                .check(
                    COLD_READER,
                    ShardOp::Get,
                    &r.fingerprint,
                    &r.token,
                    now_ns(),
                )
                .map_err(|e| {
                    Status::from(DfsError::new(e.errno(), format!("cold chunk read: {e}")))
                })?;
        }
        let fp = Fingerprint::from_slice(&r.fingerprint)
            .map_err(|e| Status::from(DfsError::new(libc::EINVAL, e.to_string())))?;
        let Some(recall) = self.maintenance.recall().cloned() else {
            return Err(Status::from(DfsError::from(MetaError::ColdStore(
                "no cold store is configured (dfs-meta --cold-store)".into(),
            ))));
        };
        let key = crate::keys::hash(&r.fingerprint);
        let rec = self
            .read("cold_chunk", move |t, _| {
                crate::store::get_record::<ChunkRecord>(t, &key)
            })
            .await?
            .into_inner();
        let Some(rec) = rec.filter(|rec| rec.is_packed()) else {
            // Moved since the chunk map was read: the client reads it again.
            return Err(Status::from(DfsError::new(
                libc::ESTALE,
                format!("chunk {fp} is not in a pack any more"),
            )));
        };
        match recall.chunk(&fp, &rec).await {
            Ok(data) => Ok(Response::new(ColdChunkReply { data })),
            // Not an error of the volume: the reader tries again later.
            Err(e @ crate::cold::ColdError::Restoring { .. }) => {
                Err(Status::from(DfsError::new(libc::EAGAIN, e.to_string())))
            }
            Err(e) => {
                tracing::error!(chunk = %fp, error = %e, "cold chunk read failed");
                Err(Status::from(DfsError::new(libc::EIO, e.to_string())))
            }
        }
    }
}
