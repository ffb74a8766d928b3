//! The dedup side of the chunk RPCs: lookups and commits scoped by who
//! uploads (`ChunkRecord.owner`), with other identities' unchecked uploads
//! checked through `maintenance::verify` before anyone else relies on them.

use std::sync::Arc;

use dfs_core::fingerprint::Fingerprint;
use dfs_proto::{
    ChunkRecord, CommitChunksRequest, InodeRecord, LookupChunksReply, LookupChunksRequest, Standing,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{at_most, to_response, Access, MetaService, INLINE_VERIFY_IN_PLACE};
use crate::chunkmap;
use crate::error::MetaError;

/// Bytes of the uploader's public key id kept in `ChunkRecord.owner`:
/// telling identities apart, not proving one (the certificate did that).
const OWNER_BYTES: usize = 16;

/// Who is writing, for `ChunkRecord.owner`: the start of the key id of the
/// caller's certificate (empty: no certificate, plaintext or in-process).
pub(super) fn owner_of<T>(request: &Request<T>) -> Vec<u8> {
    dfs_core::tls::PeerInfo::of(request)
        .and_then(|peer| peer.key_id)
        .map(|id| id[..OWNER_BYTES].to_vec())
        .unwrap_or_default()
}

impl MetaService {
    /// `LookupChunks` for the writer `owner`.
    pub(super) async fn lookup_chunks_as(
        &self,
        owner: Vec<u8>,
        r: LookupChunksRequest,
    ) -> Result<Response<LookupChunksReply>, Status> {
        let fingerprints = Arc::new(r.fingerprints);
        at_most("fingerprints per LookupChunks", fingerprints.len())?;
        let found = {
            let fingerprints = fingerprints.clone();
            self.read("lookup_chunks", move |t, _| {
                chunkmap::lookup_chunks(t, &fingerprints)
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
        Ok(Response::new(LookupChunksReply { known, records }))
    }

    /// `CommitChunks` for the writer `owner`.
    pub(super) async fn commit_chunks_as(
        &self,
        owner: Vec<u8>,
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
        let commit = |r: Arc<CommitChunksRequest>, owner: Arc<Vec<u8>>| {
            self.execute_raw("commit", Access::ReadWrite, move |t, now| {
                chunkmap::commit(t, &r, now, &owner)
            })
            .instrument(span.clone())
        };
        let owner = Arc::new(owner);
        let mut result = commit(r.clone(), owner.clone()).await?;
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
            result = commit(r, owner).await?;
        }
        let reply = to_response("commit", result)?;
        if truncate {
            // A large cut leaves its tail to the purge worker.
            self.purge_wake.notify_one();
        }
        Ok(reply)
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
