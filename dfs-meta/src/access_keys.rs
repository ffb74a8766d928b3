//! S3 access keys of the gateway (`dfs-gateway`), kept under `Y access_key`
//! as `AccessKeyRecord`s.
//!
//! A key stands for one POSIX user (uid, gid, supplementary groups): the
//! gateway checks each request's signature with the key's secret and then
//! acts with that user's permissions, as a mount does for a process.
//! SigV4 needs the secret itself on the verifying side (the signing key is
//! derived from it per day, region and service), so it is stored as it is;
//! only admins (add, list without secrets, remove) and clients whose
//! certificate carries the `gateway` cap (get) may reach it.

use std::sync::Arc;

use dfs_core::error::DfsError;
use dfs_core::time::now_ns;
use dfs_proto::access_keys_server::{AccessKeys, AccessKeysServer};
use dfs_proto::{AccessKeyList, AccessKeyRecord, AccessKeyRequest, Empty};
use prost::Message;
use rand::Rng;
use tonic::{Request, Response, Status};

use crate::error::{MetaError, Result};
use crate::keys;
use crate::store::{get_record, read_only, transact, KvTxn, MetaStore};

/// Characters of generated keys: what AWS's own keys use, upper case and
/// digits, and for secrets lower case too.
const KEY_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Lengths of generated keys and secrets (AWS: 20 and 40).
const KEY_LEN: usize = 20;
const SECRET_LEN: usize = 40;
/// Bounds on a key or secret given by the admin.
const MIN_LEN: usize = 3;
const MAX_LEN: usize = 128;

/// `Y access_key`.
pub fn key(access_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + access_key.len());
    k.push(keys::ACCESS_KEY);
    k.extend_from_slice(access_key.as_bytes());
    k
}

fn random_string(chars: &[u8], len: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| char::from(chars[rng.gen_range(0..chars.len())]))
        .collect()
}

/// What a key or secret may be made of: printable ASCII that needs no
/// quoting in an HTTP header or a shell (AWS's own alphabet and `-_.`).
fn check_text(what: &str, s: &str, extra: &[u8]) -> Result<()> {
    let ok = (MIN_LEN..=MAX_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok {
        Ok(())
    } else {
        Err(MetaError::Invalid(format!(
            "{what} must be {MIN_LEN} to {MAX_LEN} characters of A-Z a-z 0-9 {}",
            String::from_utf8_lossy(extra)
        )))
    }
}

/// Adds `record`, generating its key and secret where empty. An existing
/// key is not replaced: remove it first.
pub fn add(txn: &mut dyn KvTxn, mut record: AccessKeyRecord) -> Result<AccessKeyRecord> {
    if record.access_key.is_empty() {
        record.access_key = random_string(KEY_CHARS, KEY_LEN);
    }
    if record.secret_key.is_empty() {
        record.secret_key = random_string(SECRET_CHARS, SECRET_LEN);
    }
    // An access key goes into SigV4's Credential field, where `/` ends it.
    check_text("an access key", &record.access_key, b"-_.")?;
    check_text("a secret key", &record.secret_key, b"-_.+/=")?;
    if record.description.len() > 1024 {
        return Err(MetaError::Invalid(
            "a key's description is at most 1024 bytes".into(),
        ));
    }
    if record.groups.len() > 64 {
        return Err(MetaError::Invalid(
            "a key has at most 64 supplementary groups".into(),
        ));
    }
    let k = key(&record.access_key);
    if txn.get(&k)?.is_some() {
        return Err(MetaError::Exists);
    }
    record.created_ns = now_ns();
    txn.set(&k, &record.encode_to_vec());
    Ok(record)
}

/// Every key, secrets left out.
pub fn list(txn: &mut dyn KvTxn) -> Result<Vec<AccessKeyRecord>> {
    let (begin, end) = keys::tag_range(keys::ACCESS_KEY);
    let mut out = Vec::new();
    for (_, value) in txn.range(&begin, &end, 0, false)? {
        let mut record = AccessKeyRecord::decode(value.as_slice())?;
        record.secret_key.clear();
        out.push(record);
    }
    Ok(out)
}

pub fn remove(txn: &mut dyn KvTxn, access_key: &str) -> Result<()> {
    let k = key(access_key);
    if txn.get(&k)?.is_none() {
        return Err(MetaError::NotFound);
    }
    txn.clear(&k);
    Ok(())
}

pub fn get(txn: &mut dyn KvTxn, access_key: &str) -> Result<AccessKeyRecord> {
    get_record(txn, &key(access_key))?.ok_or(MetaError::NotFound)
}

/// The `AccessKeys` gRPC service, served beside `Meta` on the same port.
#[derive(Clone)]
pub struct AccessKeyService {
    store: Arc<dyn MetaStore>,
}

impl AccessKeyService {
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Self { store }
    }

    pub fn into_server(self) -> AccessKeysServer<Self> {
        AccessKeysServer::new(self)
    }

    async fn run<T: Send + 'static>(
        &self,
        write: bool,
        body: impl FnMut(&mut dyn KvTxn) -> Result<T> + Send + 'static,
    ) -> std::result::Result<Response<T>, Status> {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            if write {
                transact(store.as_ref(), body)
            } else {
                read_only(store.as_ref(), body)
            }
        })
        .await
        .map_err(|e| Status::internal(format!("access key request failed: {e}")))?;
        result
            .map(Response::new)
            .map_err(|e| DfsError::from(e).into())
    }
}

#[tonic::async_trait]
impl AccessKeys for AccessKeyService {
    async fn add(
        &self,
        r: Request<AccessKeyRecord>,
    ) -> std::result::Result<Response<AccessKeyRecord>, Status> {
        let record = r.into_inner();
        self.run(true, move |t| add(t, record.clone())).await
    }

    async fn list(
        &self,
        _r: Request<Empty>,
    ) -> std::result::Result<Response<AccessKeyList>, Status> {
        self.run(false, |t| Ok(AccessKeyList { keys: list(t)? }))
            .await
    }

    async fn remove(
        &self,
        r: Request<AccessKeyRequest>,
    ) -> std::result::Result<Response<Empty>, Status> {
        let name = r.into_inner().access_key;
        self.run(true, move |t| remove(t, &name).map(|()| Empty {}))
            .await
    }

    async fn get(
        &self,
        r: Request<AccessKeyRequest>,
    ) -> std::result::Result<Response<AccessKeyRecord>, Status> {
        // The role (client) was checked by the authorize layer; a secret
        // also needs the gateway cap. In-process and plaintext callers
        // carry no identity and are trusted, as everywhere.
        let identity = r
            .extensions()
            .get::<dfs_core::tls::PeerInfo>()
            .and_then(|p| p.identity.clone());
        if let Some(identity) = identity {
            if !identity.caps.gateway {
                return Err(DfsError::from(MetaError::AccessDenied(format!(
                    "{} may not read S3 access keys: its certificate lacks the gateway cap \
                     (`dfs ca issue --role client --gateway`)",
                    identity.name
                )))
                .into());
            }
        }
        let name = r.into_inner().access_key;
        self.run(false, move |t| get(t, &name)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn keys_are_added_listed_without_secrets_and_removed() {
        let store = MemStore::default();
        let made = transact(&store, |t| {
            add(
                t,
                AccessKeyRecord {
                    uid: 1000,
                    gid: 1000,
                    ..Default::default()
                },
            )
        })
        .unwrap();
        assert_eq!(made.access_key.len(), KEY_LEN);
        assert_eq!(made.secret_key.len(), SECRET_LEN);
        let again = transact(&store, |t| {
            add(
                t,
                AccessKeyRecord {
                    access_key: made.access_key.clone(),
                    ..Default::default()
                },
            )
        });
        assert!(matches!(again, Err(MetaError::Exists)));
        let listed = read_only(&store, list).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].secret_key.is_empty());
        let got = read_only(&store, |t| get(t, &made.access_key)).unwrap();
        assert_eq!(got.secret_key, made.secret_key);
        assert_eq!(got.uid, 1000);
        transact(&store, |t| remove(t, &made.access_key)).unwrap();
        assert!(matches!(
            read_only(&store, |t| get(t, &made.access_key)),
            Err(MetaError::NotFound)
        ));
        assert!(matches!(
            transact(&store, |t| remove(t, "nope")),
            Err(MetaError::NotFound)
        ));
    }

    #[test]
    fn bad_keys_are_refused() {
        let store = MemStore::default();
        for bad in ["ab", "with space", "quote\"", "a/b/c", &"x".repeat(200)] {
            let r = transact(&store, |t| {
                add(
                    t,
                    AccessKeyRecord {
                        access_key: bad.to_string(),
                        ..Default::default()
                    },
                )
            });
            assert!(matches!(r, Err(MetaError::Invalid(_))), "{bad}");
        }
    }
}
