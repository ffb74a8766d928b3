//! The chunk-server registry (`S id`, `U uuid`) and the volume record (`V`).
//!
//! A server keeps a UUID in its data directory; registering with the same
//! UUID again (after a restart, maybe at a new address) keeps its id, so
//! shard locations recorded in the dedup index stay valid.

use std::time::Duration;

use dfs_proto::{
    HeartbeatRequest, RegisterServerRequest, ServerRecord, ServerState, ServerStatus, StatFsReply,
    VolumeConfig,
};

use crate::error::{MetaError, Result};
use crate::keys;
use crate::store::{decode_counter, KvTxn};
use crate::store::{get_record, put_record};

const COUNTER_NEXT_SERVER: &str = "next_server";

/// When a server counts as suspect or down, by the age of its last heartbeat.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    pub suspect_after: Duration,
    pub down_after: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            suspect_after: Duration::from_secs(6),
            down_after: Duration::from_secs(30),
        }
    }
}

impl Liveness {
    pub fn state(&self, age: Duration) -> ServerState {
        if age >= self.down_after {
            ServerState::Down
        } else if age >= self.suspect_after {
            ServerState::Suspect
        } else {
            ServerState::Up
        }
    }
}

/// Registers (or registers again) the server `req` names. `key_id` is the
/// caller's certificate key ([`dfs_core::tls::identity::public_key_id`];
/// `None` over plaintext or in-process): the first registration with one
/// binds the id to it, and a later one with another key is refused, so a
/// certificate of some other server cannot take over a live server's id
/// (and the shards rebuilt for it).
pub fn register(
    txn: &mut dyn KvTxn,
    req: &RegisterServerRequest,
    now_ns: i64,
    key_id: Option<&[u8; 32]>,
) -> Result<u32> {
    if req.uuid.is_empty() || req.uuid.len() > 128 {
        return Err(MetaError::Invalid(
            "server uuid must be 1 to 128 bytes".into(),
        ));
    }
    if req.address.is_empty() {
        return Err(MetaError::Invalid("server address is empty".into()));
    }
    let uuid_key = keys::server_uuid(&req.uuid);
    let id = match txn.get(&uuid_key)? {
        Some(v) => {
            let bytes: [u8; 4] = v
                .as_slice()
                .try_into()
                .map_err(|_| MetaError::Corrupt("server id".into()))?;
            u32::from_be_bytes(bytes)
        }
        None => {
            let key = keys::counter(COUNTER_NEXT_SERVER);
            let next = decode_counter(txn.get(&key)?.as_deref()).max(1);
            txn.set(&key, &(next + 1).to_le_bytes());
            let id =
                u32::try_from(next).map_err(|_| MetaError::Corrupt("server counter".into()))?;
            txn.set(&uuid_key, &id.to_be_bytes());
            id
        }
    };
    let old = get_record::<ServerRecord>(txn, &keys::server(id))?.unwrap_or_default();
    check_key(&old, key_id)?;
    let record = ServerRecord {
        id,
        uuid: req.uuid.clone(),
        address: req.address.clone(),
        zone: req.zone.clone(),
        rack: req.rack.clone(),
        capacity_bytes: req.capacity_bytes,
        used_bytes: req.used_bytes,
        shard_count: old.shard_count,
        shard_bytes: old.shard_bytes,
        last_heartbeat_ns: now_ns,
        // A reconnection of the same process keeps its registration time:
        // only a restart makes its shards worth reconciling again.
        registered_ns: if old.boot_id == req.boot_id && req.boot_id != 0 && old.registered_ns != 0 {
            old.registered_ns
        } else {
            now_ns
        },
        reconciled_ns: old.reconciled_ns,
        boot_id: req.boot_id,
        key_id: match key_id {
            Some(key) if old.key_id.is_empty() => key.to_vec(),
            _ => old.key_id,
        },
    };
    put_record(txn, &keys::server(id), &record);
    Ok(id)
}

/// Refuses a caller whose certificate key is not the one `record` is
/// bound to. Callers without a key (plaintext, in-process) are not checked:
/// there is nothing to check them by.
fn check_key(record: &ServerRecord, key_id: Option<&[u8; 32]>) -> Result<()> {
    match key_id {
        Some(key) if !record.key_id.is_empty() && record.key_id != key.as_slice() => {
            Err(MetaError::AccessDenied(format!(
                "chunk server {} ({}) registered with another certificate key; \
                 a reissued certificate must keep the key (`dfs ca issue --key`)",
                record.id, record.uuid
            )))
        }
        _ => Ok(()),
    }
}

/// Whether the caller (by its certificate key) is server `id`.
pub fn check_server_key(txn: &mut dyn KvTxn, id: u32, key_id: Option<&[u8; 32]>) -> Result<()> {
    let rec = get_record::<ServerRecord>(txn, &keys::server(id))?.ok_or(MetaError::NotFound)?;
    check_key(&rec, key_id)
}

pub fn heartbeat(
    txn: &mut dyn KvTxn,
    req: &HeartbeatRequest,
    now_ns: i64,
    key_id: Option<&[u8; 32]>,
) -> Result<()> {
    let key = keys::server(req.server_id);
    let mut rec = get_record::<ServerRecord>(txn, &key)?.ok_or(MetaError::NotFound)?;
    check_key(&rec, key_id)?;
    rec.capacity_bytes = req.capacity_bytes;
    rec.used_bytes = req.used_bytes;
    rec.shard_count = req.shard_count;
    rec.shard_bytes = req.shard_bytes;
    rec.last_heartbeat_ns = now_ns;
    put_record(txn, &key, &rec);
    Ok(())
}

/// Records that server `id`'s shards were reconciled with the index for
/// its registration `registered_ns` (unless it registered again since).
pub fn mark_reconciled(txn: &mut dyn KvTxn, id: u32, registered_ns: i64) -> Result<()> {
    let key = keys::server(id);
    let Some(mut rec) = get_record::<ServerRecord>(txn, &key)? else {
        return Ok(());
    };
    if rec.registered_ns == registered_ns && rec.reconciled_ns != registered_ns {
        rec.reconciled_ns = registered_ns;
        put_record(txn, &key, &rec);
    }
    Ok(())
}

/// What `statfs` shows: the inode count, and the capacity and use of the
/// servers that are not down.
pub fn stat_fs(txn: &mut dyn KvTxn, liveness: &Liveness, now_ns: i64) -> Result<StatFsReply> {
    let mut reply = StatFsReply {
        files: crate::namespace::inode_count(txn)?,
        ..Default::default()
    };
    for s in list(txn, liveness, now_ns)? {
        if s.state() == ServerState::Down {
            continue;
        }
        if let Some(r) = s.record {
            reply.capacity_bytes += r.capacity_bytes;
            reply.used_bytes += r.used_bytes;
        }
    }
    Ok(reply)
}

pub fn list(txn: &mut dyn KvTxn, liveness: &Liveness, now_ns: i64) -> Result<Vec<ServerStatus>> {
    let (begin, end) = keys::tag_range(keys::SERVER);
    let mut out = Vec::new();
    for (_, value) in txn.range(&begin, &end, 0, false)? {
        let record: ServerRecord = prost::Message::decode(value.as_slice())?;
        // Heartbeats sent while the store failed could not be recorded:
        // the server's age counts from the store's last failure at most.
        let heard_ns = record
            .last_heartbeat_ns
            .max(crate::store::last_store_trouble_ns());
        let age_ns = now_ns.saturating_sub(heard_ns).max(0);
        let age = Duration::from_nanos(age_ns as u64);
        out.push(ServerStatus {
            state: liveness.state(age) as i32,
            heartbeat_age_ms: age_ns / 1_000_000,
            record: Some(record),
        });
    }
    Ok(out)
}

/// The volume's settings; written once, when the store is first opened.
pub fn volume_config(txn: &mut dyn KvTxn) -> Result<VolumeConfig> {
    get_record(txn, &keys::volume())?
        .ok_or_else(|| MetaError::Corrupt("volume record missing".into()))
}

/// The volume's shard token secret, made (from `fresh`) the first time a
/// metadata server opens the store; every dfs-meta of the volume reads the
/// same one.
pub fn token_secret(txn: &mut dyn KvTxn, fresh: &[u8]) -> Result<Vec<u8>> {
    if let Some(secret) = txn.get(&keys::token_secret())? {
        return Ok(secret);
    }
    txn.set(&keys::token_secret(), fresh);
    Ok(fresh.to_vec())
}

pub fn init_volume(txn: &mut dyn KvTxn, config: &VolumeConfig) -> Result<VolumeConfig> {
    if let Some(existing) = get_record::<VolumeConfig>(txn, &keys::volume())? {
        return Ok(existing);
    }
    put_record(txn, &keys::volume(), config);
    Ok(*config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_restart_starts_a_new_registration() {
        use crate::store::{transact, MemStore};
        let store = MemStore::default();
        let req = |boot_id| RegisterServerRequest {
            uuid: "u-1".into(),
            address: "127.0.0.1:1".into(),
            boot_id,
            ..Default::default()
        };
        let record = |store: &MemStore| {
            transact(store, |t| get_record::<ServerRecord>(t, &keys::server(1)))
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let reg = |now, boot| {
            transact(&store, |t| register(t, &req(boot), now, None)).expect("register");
        };
        reg(100, 7);
        assert_eq!(record(&store).registered_ns, 100);
        transact(&store, |t| mark_reconciled(t, 1, 100)).expect("mark");
        // Same process reconnecting (a metadata restart, a network blip).
        reg(200, 7);
        let r = record(&store);
        assert_eq!((r.registered_ns, r.reconciled_ns), (100, 100));
        // A restart of the server: reconcile again.
        reg(300, 8);
        let r = record(&store);
        assert_eq!((r.registered_ns, r.reconciled_ns), (300, 100));
        // A stale mark (an older registration) does not count.
        transact(&store, |t| mark_reconciled(t, 1, 100)).expect("mark");
        assert_eq!(record(&store).reconciled_ns, 100);
    }

    #[test]
    fn an_id_stays_with_the_key_it_first_registered_with() {
        use crate::store::{transact, MemStore};
        let store = MemStore::default();
        let req = RegisterServerRequest {
            uuid: "u-7".into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let (mine, theirs) = ([1u8; 32], [2u8; 32]);
        let id = transact(&store, |t| register(t, &req, 1, Some(&mine))).expect("first");
        // The same key again (a restart, a reissued certificate): fine.
        assert_eq!(
            transact(&store, |t| register(t, &req, 2, Some(&mine))).expect("again"),
            id
        );
        // Another certificate claiming the id: refused, record unchanged.
        let taken = transact(&store, |t| register(t, &req, 3, Some(&theirs)));
        assert!(
            matches!(taken, Err(MetaError::AccessDenied(_))),
            "{taken:?}"
        );
        let beat = HeartbeatRequest {
            server_id: id,
            ..Default::default()
        };
        assert!(transact(&store, |t| heartbeat(t, &beat, 4, Some(&theirs))).is_err());
        transact(&store, |t| heartbeat(t, &beat, 4, Some(&mine))).expect("own heartbeat");
        assert!(transact(&store, |t| check_server_key(t, id, Some(&theirs))).is_err());
        // Plaintext and in-process callers carry no key to check.
        transact(&store, |t| check_server_key(t, id, None)).expect("no key");
    }

    #[test]
    fn liveness_thresholds() {
        let l = Liveness::default();
        assert_eq!(l.state(Duration::from_secs(1)), ServerState::Up);
        assert_eq!(l.state(Duration::from_secs(10)), ServerState::Suspect);
        assert_eq!(l.state(Duration::from_secs(31)), ServerState::Down);
    }
}
