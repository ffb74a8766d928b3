//! Connections from the metadata server to chunk servers, for the work it
//! drives on their data (rebuild, scrub repair, garbage collection, fsck).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dfs_core::error::DfsError;
use dfs_core::fingerprint::Fingerprint;
use dfs_core::rpc::{boxed_transport, Connector, RpcTransport};
use dfs_proto::chunks_client::ChunksClient;
use dfs_proto::{
    CheckShardsRequest, ListShardsRequest, PutShardsRequest, Shard, ShardHealth, ShardInfo,
    ShardKey, MAX_MESSAGE_BYTES,
};

/// Shards listed or checked per request.
pub const LIST_PAGE: u32 = 1000;

/// Connects lazily over TCP (`http://ADDRESS`, TLS as `security` says,
/// expecting a chunk server's certificate), failing a connect after 5 s
/// and a call after 60 s, so a dead server never stalls the work for long.
pub fn tcp_connector(security: dfs_core::tls::Security) -> Connector {
    Arc::new(move |address: &str| {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| {
                DfsError::new(
                    libc::EINVAL,
                    format!("bad chunk server address `{address}`: {e}"),
                )
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        Ok(boxed_transport(endpoint.connect_with_connector_lazy(
            security.connector(dfs_core::tls::Role::Server),
        )))
    })
}

/// One client per chunk server, made on first use and replaced when the
/// server registers at a new address.
pub struct ServerPool {
    connector: Connector,
    clients: parking_lot::Mutex<HashMap<u32, (String, ChunksClient<RpcTransport>)>>,
}

impl ServerPool {
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            clients: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self, id: u32, address: &str) -> Result<ChunksClient<RpcTransport>, DfsError> {
        let mut clients = self.clients.lock();
        if let Some((known, client)) = clients.get(&id) {
            if known == address {
                return Ok(client.clone());
            }
        }
        let client = ChunksClient::new((self.connector)(address)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.insert(id, (address.to_string(), client.clone()));
        Ok(client)
    }
}

/// Every shard a server holds, listed in pages.
pub async fn list_all(client: &mut ChunksClient<RpcTransport>) -> Result<Vec<ShardInfo>, DfsError> {
    let mut out = Vec::new();
    let mut after = Vec::new();
    loop {
        let page = client
            .list_shards(ListShardsRequest {
                after: after.clone(),
                limit: LIST_PAGE,
            })
            .await
            .map_err(DfsError::from)?
            .into_inner();
        out.extend(page.shards);
        if page.next.is_empty() {
            return Ok(out);
        }
        after = page.next;
    }
}

/// The health of each of `keys` on one server, in order.
pub async fn check(
    client: &mut ChunksClient<RpcTransport>,
    keys: &[ShardKey],
    verify: bool,
) -> Result<Vec<ShardHealth>, DfsError> {
    let mut out = Vec::with_capacity(keys.len());
    for part in keys.chunks(LIST_PAGE as usize) {
        let reply = client
            .check_shards(CheckShardsRequest {
                shards: part.to_vec(),
                verify,
            })
            .await
            .map_err(DfsError::from)?
            .into_inner();
        if reply.health.len() != part.len() {
            return Err(DfsError::new(
                libc::EIO,
                format!(
                    "chunk server answered {} shard states for {} shards",
                    reply.health.len(),
                    part.len()
                ),
            ));
        }
        out.extend(
            reply
                .health
                .into_iter()
                .map(|h| ShardHealth::try_from(h).unwrap_or(ShardHealth::Missing)),
        );
    }
    Ok(out)
}

/// Stores shards of one chunk on one server.
pub async fn put<D: Into<bytes::Bytes>>(
    client: &mut ChunksClient<RpcTransport>,
    fp: &Fingerprint,
    shards: Vec<(u32, D)>,
) -> Result<(), DfsError> {
    let request = PutShardsRequest {
        shards: shards
            .into_iter()
            .map(|(index, data)| Shard {
                token: Default::default(),
                fingerprint: fp.to_vec(),
                index,
                data: data.into(),
            })
            .collect(),
    };
    client
        .put_shards(request)
        .await
        .map_err(DfsError::from)
        .map(|_| ())
}
