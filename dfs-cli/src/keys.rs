//! `dfs keys add|list|remove`: S3 access keys of dfs-gateway, kept by
//! dfs-meta (`dfs_meta::access_keys`).

use anyhow::Context;
use clap::Subcommand;
use dfs_proto::access_keys_client::AccessKeysClient;
use dfs_proto::{AccessKeyRecord, AccessKeyRequest, Empty};
use serde::Serialize;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Makes a key for a POSIX user and prints it with its secret (shown
    /// this once; `list` leaves secrets out).
    Add {
        /// HOST:PORT of a metadata server.
        #[arg(long)]
        meta: String,
        /// The user requests signed with this key act as.
        #[arg(long)]
        uid: u32,
        /// Their group.
        #[arg(long)]
        gid: u32,
        /// Supplementary groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<u32>,
        /// The access key id [default: 20 random characters].
        #[arg(long)]
        access_key: Option<String>,
        /// The secret [default: 40 random characters].
        #[arg(long)]
        secret_key: Option<String>,
        /// Requests a second the gateway allows this key [default: the
        /// gateway's --key-request-rate].
        #[arg(long, default_value_t = 0)]
        request_rate: u32,
        /// Bytes a second up and down [default: the gateway's --key-byte-rate].
        #[arg(long, default_value_t = 0)]
        byte_rate: u64,
        /// Who or what the key is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Every key: id, user, limits, age (no secrets).
    List {
        /// HOST:PORT of a metadata server.
        #[arg(long)]
        meta: String,
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Removes a key: requests signed with it are refused once gateways'
    /// caches of it expire (a minute by default, dfs-gateway
    /// --key-cache-secs).
    Remove {
        /// HOST:PORT of a metadata server.
        #[arg(long)]
        meta: String,
        access_key: String,
    },
}

impl KeysCommand {
    pub fn meta(&self) -> &str {
        match self {
            KeysCommand::Add { meta, .. }
            | KeysCommand::List { meta, .. }
            | KeysCommand::Remove { meta, .. } => meta,
        }
    }
}

#[derive(Serialize)]
struct KeyRow {
    access_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    secret_key: String,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    request_rate: u32,
    byte_rate: u64,
    created_ns: i64,
    description: String,
}

impl From<AccessKeyRecord> for KeyRow {
    fn from(r: AccessKeyRecord) -> Self {
        Self {
            access_key: r.access_key,
            secret_key: r.secret_key,
            uid: r.uid,
            gid: r.gid,
            groups: r.groups,
            request_rate: r.request_rate,
            byte_rate: r.byte_rate,
            created_ns: r.created_ns,
            description: r.description,
        }
    }
}

fn rate(v: u64) -> String {
    if v == 0 {
        "default".to_string()
    } else {
        v.to_string()
    }
}

pub async fn run(command: KeysCommand, channel: tonic::transport::Channel) -> anyhow::Result<()> {
    let mut client = AccessKeysClient::new(channel);
    match command {
        KeysCommand::Add {
            uid,
            gid,
            groups,
            access_key,
            secret_key,
            request_rate,
            byte_rate,
            description,
            json,
            ..
        } => {
            let made = client
                .add(AccessKeyRecord {
                    access_key: access_key.unwrap_or_default(),
                    secret_key: secret_key.unwrap_or_default(),
                    uid,
                    gid,
                    groups,
                    created_ns: 0,
                    description,
                    request_rate,
                    byte_rate,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
                .context("cannot add the key")?
                .into_inner();
            if json {
                println!("{}", serde_json::to_string(&KeyRow::from(made))?);
            } else {
                println!("access key: {}", made.access_key);
                println!("secret key: {}", made.secret_key);
                println!(
                    "user: uid {} gid {} groups {:?}",
                    made.uid, made.gid, made.groups
                );
            }
        }
        KeysCommand::List { json, .. } => {
            let keys = client
                .list(Empty {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
                .context("cannot list keys")?
                .into_inner()
                .keys;
            let rows: Vec<KeyRow> = keys.into_iter().map(KeyRow::from).collect();
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!(
                    "{:<22} {:>7} {:>7} {:>10} {:>12}  description",
                    "access key", "uid", "gid", "req/s", "bytes/s"
                );
                for r in rows {
                    println!(
                        "{:<22} {:>7} {:>7} {:>10} {:>12}  {}",
                        r.access_key,
                        r.uid,
                        r.gid,
                        rate(u64::from(r.request_rate)),
                        rate(r.byte_rate),
                        r.description
                    );
                }
            }
        }
        KeysCommand::Remove { access_key, .. } => {
            client
                .remove(AccessKeyRequest {
                    access_key: access_key.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
                .with_context(|| format!("cannot remove key {access_key}"))?;
            println!("removed {access_key}");
        }
    }
    Ok(())
}
