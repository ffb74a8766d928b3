//! Attacks on a running cluster over its real ports, each of which must be
//! refused, with the volume intact afterwards (every file reads back the
//! same, `dfs fsck --verify` clean). Prints how many were tried and how
//! many refused. Issue 19; what is not attacked here yet is listed in
//! SECURITY.md.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use dfs_core::tls::{Role, Security, Tls};
use dfs_core::DfsError;
use dfs_proto::chunks_client::ChunksClient;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::*;
use tonic::transport::Channel;

/// Issues a certificate with the test CA into `dir` (as `dfs ca issue`
/// does for an administrator) and loads it.
fn issue(dir: &Path, role: &str, name: &str, extra: &[&str]) -> Security {
    let out = dfs_cmd("dfs")
        .args(["ca", "issue", "--role", role, name, "--file", name, "--ca"])
        .arg(tls_dir())
        .arg("--out")
        .arg(dir)
        .args(extra)
        .output()
        .expect("dfs ca issue");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls = Tls::load_files(
        &dir.join("ca.crt"),
        &dir.join(format!("{name}.crt")),
        &dir.join(format!("{name}.key")),
        Role::parse(role).expect("role"),
    )
    .expect("load");
    Security::Tls(Arc::new(tls))
}

/// A certificate of the given role from a CA that is not the cluster's.
fn stranger(dir: &Path, role: Role) -> Security {
    let ca = dir.join("other-ca");
    let run = |args: &[&str]| {
        let out = dfs_cmd("dfs").args(args).output().expect("dfs ca");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !ca.join("ca.crt").exists() {
        run(&["ca", "init", &ca.display().to_string()]);
    }
    run(&[
        "ca",
        "issue",
        "--role",
        role.as_str(),
        "stranger",
        "--ca",
        &ca.display().to_string(),
    ]);
    Security::Tls(Arc::new(Tls::load(&ca, role).expect("load")))
}

async fn channel(security: &Security, address: &str, peer: Role) -> Result<Channel, String> {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .connect_with_connector(security.connector(peer))
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Tallies attacks: each must be refused, with the errno expected when
/// it gets as far as an answer.
#[derive(Default)]
struct Tally {
    tried: usize,
    refused: usize,
    let_through: Vec<String>,
}

impl Tally {
    fn expect_refused<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        result: Result<T, tonic::Status>,
        errno: i32,
    ) {
        self.tried += 1;
        match result {
            Err(status) => {
                let e = DfsError::from(status);
                if e.errno == errno {
                    self.refused += 1;
                } else {
                    self.let_through.push(format!(
                        "{what}: refused with errno {} ({}), expected {errno}",
                        e.errno, e.message
                    ));
                }
            }
            Ok(v) => self.let_through.push(format!("{what}: answered {v:?}")),
        }
    }

    /// An attack refused at the handshake or on the first request: any
    /// failure counts.
    fn expect_no_service(&mut self, what: &str, outcome: Result<(), String>) {
        self.tried += 1;
        match outcome {
            Err(_) => self.refused += 1,
            Ok(()) => self.let_through.push(format!("{what}: served")),
        }
    }
}

#[test]
fn attacks_are_refused_and_the_volume_stays_intact() {
    // The default minimum GC grace, not the tests' zero; shard tokens
    // that expire within the test (the mount refreshes its own).
    let cluster = TestCluster::start_full(
        3,
        3,
        |_| vec!["--token-clock-skew".into(), "0".into()],
        vec![
            "--min-gc-grace".into(),
            "600".into(),
            "--token-lifetime".into(),
            TOKEN_LIFETIME_SECS.to_string(),
        ],
    );
    cluster.wait_servers_up(9);
    let meta = cluster.meta_addr();
    // Data an attacker would like to reach, written through a real mount.
    let local = tempfile::tempdir().expect("tempdir");
    make_tree(local.path(), 40);
    let mut m = TestMount::start(&meta, &[]);
    sh(&format!(
        "cp -a {}/. {}/",
        local.path().display(),
        m.path.display()
    ));
    sh(&format!("sync -f {}", m.path.display()));
    let status = cluster.status();
    let server = status["servers"][0]["address"]
        .as_str()
        .expect("address")
        .to_string();
    // That server's id and uuid (its data directory's `server.id`).
    let server_id = status["servers"][0]["id"].as_u64().expect("id") as u32;
    let spec = cluster
        .specs
        .iter()
        .find(|s| server.ends_with(&format!(":{}", s.port)))
        .expect("the server's spec");
    let server_uuid = std::fs::read_to_string(spec.data.join("server.id"))
        .expect("server.id")
        .trim()
        .to_string();

    let certs = tempfile::tempdir().expect("tempdir");
    let client = issue(certs.path(), "client", "c", &[]);
    let server_cert = issue(certs.path(), "server", "s", &[]);
    let admin = issue(certs.path(), "admin", "a", &[]);
    let read_only = issue(certs.path(), "client", "ro", &["--read-only"]);
    let unprivileged = issue(certs.path(), "client", "up", &["--unprivileged"]);
    let mallory = issue(certs.path(), "client", "mallory", &[]);
    // Contents Mallory poisons, then the victim writes: one chunk each
    // (below the smallest cut), too big to go inline, incompressible.
    let poison_never_stored = random_bytes(24 << 10, 0x6d61);
    let poison_garbage = random_bytes(24 << 10, 0x6d62);

    let servers = cluster.status()["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            let id = s["id"].as_u64().expect("id") as u32;
            (id, s["address"].as_str().expect("address").to_string())
        })
        .collect::<Vec<_>>();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut t = Tally::default();
    rt.block_on(async {
        use libc::{EACCES, EPERM, EROFS};
        // No certificate, or one from another CA: no service at all.
        for (what, security, peer, address) in [
            (
                "plaintext to dfs-meta",
                Security::Plaintext,
                Role::Meta,
                &meta,
            ),
            (
                "plaintext to a chunk server",
                Security::Plaintext,
                Role::Server,
                &server,
            ),
            (
                "another CA's client to dfs-meta",
                stranger(certs.path(), Role::Client),
                Role::Meta,
                &meta,
            ),
            (
                "another CA's meta to a chunk server",
                stranger(certs.path(), Role::Meta),
                Role::Server,
                &server,
            ),
        ] {
            let outcome = match channel(&security, address, peer).await {
                Ok(ch) => probe(ch, peer).await,
                Err(e) => Err(e),
            };
            t.expect_no_service(what, outcome);
        }

        // A client certificate reaching for operator and server powers.
        let mut as_client =
            MetaClient::new(channel(&client, &meta, Role::Meta).await.expect("client"));
        t.expect_refused(
            "client: gc",
            as_client
                .gc(GcRequest {
                    orphans: true,
                    ..GcRequest::default()
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "client: fsck",
            as_client.fsck(FsckRequest::default()).await,
            EACCES,
        );
        t.expect_refused(
            "client: register a server",
            as_client
                .register_server(RegisterServerRequest {
                    uuid: "0e0c3c1e-0000-4000-8000-00000000beef".into(),
                    address: "127.0.0.1:9".into(),
                    ..RegisterServerRequest::default()
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "client: heartbeat",
            as_client.heartbeat(HeartbeatRequest::default()).await,
            EACCES,
        );
        t.expect_refused(
            "client: report bad shards",
            as_client
                .report_bad_shards(ReportBadShardsRequest::default())
                .await,
            EACCES,
        );
        let mut client_to_server = ChunksClient::new(
            channel(&client, &server, Role::Server)
                .await
                .expect("client"),
        );
        t.expect_refused(
            "client: delete shards",
            client_to_server
                .delete_shards(DeleteShardsRequest {
                    written_before_ns: i64::MAX,
                    ..DeleteShardsRequest::default()
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "client: list shards",
            client_to_server
                .list_shards(ListShardsRequest::default())
                .await,
            EACCES,
        );
        t.expect_refused(
            "client: check shards",
            client_to_server
                .check_shards(CheckShardsRequest::default())
                .await,
            EACCES,
        );

        // A chunk server's certificate reaching for the namespace.
        let mut as_server = MetaClient::new(
            channel(&server_cert, &meta, Role::Meta)
                .await
                .expect("server"),
        );
        t.expect_refused(
            "server: lookup",
            as_server
                .lookup(LookupRequest {
                    parent: 1,
                    name: b"src".to_vec(),
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "server: read a directory",
            as_server
                .read_dir(ReadDirRequest {
                    ino: 1,
                    ..ReadDirRequest::default()
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "server: chunk map",
            as_server
                .get_chunk_map(ChunkMapRequest {
                    ino: 1,
                    ..ChunkMapRequest::default()
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "server: create",
            as_server
                .create(CreateRequest {
                    parent: 1,
                    name: b"evil".to_vec(),
                    kind: FileKind::Regular as i32,
                    mode: 0o644,
                    ..CreateRequest::default()
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "server: gc",
            as_server.gc(GcRequest::default()).await,
            EACCES,
        );
        // Another chunk server's certificate (its own key) taking over a
        // live server's id, keeping it alive, or reporting its shards bad.
        t.expect_refused(
            "server: register with a live server's uuid",
            as_server
                .register_server(RegisterServerRequest {
                    uuid: server_uuid.clone(),
                    address: "127.0.0.1:9".into(),
                    zone: "zone-0".into(),
                    rack: "rack-0-0".into(),
                    ..RegisterServerRequest::default()
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "server: heartbeat for another server",
            as_server
                .heartbeat(HeartbeatRequest {
                    server_id,
                    ..HeartbeatRequest::default()
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "server: report another server's shards bad",
            as_server
                .report_bad_shards(ReportBadShardsRequest {
                    server_id,
                    shards: vec![ShardKey {
                        token: Default::default(),
                        fingerprint: vec![7; 32],
                        index: 0,
                    }],
                })
                .await,
            EACCES,
        );
        let mut server_to_server = ChunksClient::new(
            channel(&server_cert, &server, Role::Server)
                .await
                .expect("server"),
        );
        t.expect_refused(
            "server: put shards",
            server_to_server
                .put_shards(PutShardsRequest::default())
                .await,
            EACCES,
        );

        // An operator's certificate is not a client's.
        let mut as_admin =
            MetaClient::new(channel(&admin, &meta, Role::Meta).await.expect("admin"));
        t.expect_refused(
            "admin: create",
            as_admin
                .create(CreateRequest {
                    parent: 1,
                    name: b"evil".to_vec(),
                    kind: FileKind::Regular as i32,
                    mode: 0o644,
                    ..CreateRequest::default()
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "admin: gc with zero grace",
            as_admin
                .gc(GcRequest {
                    grace_ns: 0,
                    clock_skew_ns: 0,
                    orphans: true,
                    orphan_grace_ns: 0,
                })
                .await,
            libc::EINVAL,
        );
        t.expect_refused(
            "admin: commit chunks",
            as_admin
                .commit_chunks(CommitChunksRequest {
                    ino: 1,
                    ..CommitChunksRequest::default()
                })
                .await,
            EACCES,
        );

        // A read-only client reads and changes nothing.
        let mut ro = MetaClient::new(channel(&read_only, &meta, Role::Meta).await.expect("ro"));
        ro.lookup(LookupRequest {
            parent: 1,
            name: b"f0".to_vec(),
        })
        .await
        .map(|_| ())
        .or_else(|s| {
            if DfsError::from(s).errno == libc::ENOENT {
                Ok(())
            } else {
                Err("a read-only lookup failed")
            }
        })
        .expect("read-only lookup");
        t.expect_refused(
            "read-only: create",
            ro.create(CreateRequest {
                parent: 1,
                name: b"evil".to_vec(),
                kind: FileKind::Regular as i32,
                mode: 0o644,
                ..CreateRequest::default()
            })
            .await,
            EROFS,
        );
        t.expect_refused(
            "read-only: setattr",
            ro.set_attr(SetAttrRequest {
                ino: 1,
                mode: Some(0o777),
                ..SetAttrRequest::default()
            })
            .await,
            EROFS,
        );
        t.expect_refused(
            "read-only: unlink",
            ro.unlink(RemoveRequest {
                parent: 1,
                name: b"src".to_vec(),
                ..RemoveRequest::default()
            })
            .await,
            EROFS,
        );
        let mut ro_to_server = ChunksClient::new(
            channel(&read_only, &server, Role::Server)
                .await
                .expect("ro"),
        );
        t.expect_refused(
            "read-only: put shards",
            ro_to_server.put_shards(PutShardsRequest::default()).await,
            EROFS,
        );

        // An unprivileged client makes nothing privileged.
        let mut up = MetaClient::new(channel(&unprivileged, &meta, Role::Meta).await.expect("up"));
        t.expect_refused(
            "unprivileged: set-user-ID file",
            up.create(CreateRequest {
                parent: 1,
                name: b"suid".to_vec(),
                kind: FileKind::Regular as i32,
                mode: 0o4755,
                ..CreateRequest::default()
            })
            .await,
            EPERM,
        );
        t.expect_refused(
            "unprivileged: device node",
            up.create(CreateRequest {
                parent: 1,
                name: b"sda".to_vec(),
                kind: FileKind::BlockDevice as i32,
                mode: 0o666,
                rdev: 0x800,
                ..CreateRequest::default()
            })
            .await,
            EPERM,
        );
        t.expect_refused(
            "unprivileged: chmod u+s",
            up.set_attr(SetAttrRequest {
                ino: 1,
                mode: Some(0o4755),
                ..SetAttrRequest::default()
            })
            .await,
            EPERM,
        );
        t.expect_refused(
            "unprivileged: chmod u+s carried by a commit",
            up.commit_chunks(CommitChunksRequest {
                ino: 1,
                attrs: Some(SetAttrRequest {
                    mode: Some(0o4755),
                    ..SetAttrRequest::default()
                }),
                ..CommitChunksRequest::default()
            })
            .await,
            EPERM,
        );
        t.expect_refused(
            "unprivileged: security.capability",
            up.set_xattr(XattrRequest {
                ino: 1,
                name: b"security.capability".to_vec(),
                value: vec![1; 20],
                ..XattrRequest::default()
            })
            .await,
            EPERM,
        );

        // Oversized requests and requests with too many entries, from
        // certificates that may make them: refused before they are read.
        t.expect_refused(
            "client: a 20 MiB xattr request",
            as_client
                .set_xattr(XattrRequest {
                    ino: 1,
                    name: b"user.big".to_vec(),
                    value: vec![0; 20 << 20],
                    ..XattrRequest::default()
                })
                .await,
            libc::EMSGSIZE,
        );
        t.expect_refused(
            "client: 20,000 fingerprints in one lookup",
            as_client
                .lookup_chunks(LookupChunksRequest {
                    fingerprints: vec![vec![1; 32]; 20_000],
                })
                .await,
            libc::E2BIG,
        );
        t.expect_refused(
            "client: an 80 MiB shard upload",
            client_to_server
                .put_shards(PutShardsRequest {
                    shards: vec![Shard {
                        token: Default::default(),
                        fingerprint: vec![3; 32],
                        index: 0,
                        data: vec![0; 80 << 20].into(),
                    }],
                })
                .await,
            libc::EMSGSIZE,
        );
        let mut meta_to_server = ChunksClient::new(
            channel(
                &issue(certs.path(), "meta", "m", &[]),
                &server,
                Role::Server,
            )
            .await
            .expect("meta"),
        );
        t.expect_refused(
            "meta: 20,000 shards in one delete",
            meta_to_server
                .delete_shards(DeleteShardsRequest {
                    shards: vec![
                        ShardKey {
                            token: Default::default(),
                            fingerprint: vec![4; 32],
                            index: 0
                        };
                        20_000
                    ],
                    written_before_ns: 1,
                    uploaded_by: Vec::new(),
                })
                .await,
            libc::EINVAL,
        );

        // Dedup poisoning: Mallory, a client with its own certificate,
        // commits records for two chunks it expects others to write: one
        // for shards it never stored, one for garbage it did store. Judged
        // below, when the victim (another certificate) writes them.
        let mut mal = MetaClient::new(channel(&mallory, &meta, Role::Meta).await.expect("mallory"));
        let dir = mal
            .create(CreateRequest {
                parent: 1,
                name: b".mallory".to_vec(),
                kind: FileKind::Directory as i32,
                mode: 0o755,
                ..CreateRequest::default()
            })
            .await
            .expect("mallory's directory")
            .into_inner()
            .ino;
        let volume = mal
            .get_volume_config(Empty {})
            .await
            .expect("volume")
            .into_inner();
        for (name, content, store_garbage) in [
            ("never-stored", &poison_never_stored, false),
            ("garbage", &poison_garbage, true),
        ] {
            let record = poisoned_record(&volume, content.len(), &servers);
            let fp = dfs_core::Fingerprint::of(content).to_vec();
            // Nobody stored the chunk yet: dfs-meta grants Mallory put
            // tokens for it, as it would anyone about to upload it.
            let grant = mal
                .lookup_chunks(LookupChunksRequest {
                    fingerprints: vec![fp.clone()],
                })
                .await
                .expect("lookup")
                .into_inner()
                .grants
                .pop()
                .expect("a put grant");
            if store_garbage {
                // Under every shard index, on every server: wherever the
                // victim's upload would go, a key holds garbage, which a
                // client's put may not replace. Only dfs-meta deleting
                // Mallory's uploads once it finds her entry bad (the
                // victim's lookup or commit) lets the victim store it.
                for (server, address) in &servers {
                    let mut to = ChunksClient::new(
                        channel(&mallory, address, Role::Server)
                            .await
                            .expect("to server"),
                    );
                    let token = grant
                        .servers
                        .iter()
                        .position(|id| id == server)
                        .map(|i| grant.tokens[i].clone())
                        .expect("a token for the server");
                    let shards = (0..record.shard_servers.len())
                        .map(|index| Shard {
                            token: token.clone(),
                            fingerprint: fp.clone(),
                            index: index as u32,
                            data: vec![0x5a; record.shard_len as usize].into(),
                        })
                        .collect();
                    to.put_shards(PutShardsRequest { shards })
                        .await
                        .expect("garbage stored");
                }
            }
            let ino = mal
                .create(CreateRequest {
                    parent: dir,
                    name: name.as_bytes().to_vec(),
                    kind: FileKind::Regular as i32,
                    mode: 0o644,
                    ..CreateRequest::default()
                })
                .await
                .expect("mallory's file")
                .into_inner()
                .ino;
            mal.commit_chunks(CommitChunksRequest {
                ino,
                replaced: vec![ByteRange {
                    start: 0,
                    end: u64::MAX,
                }],
                chunks: vec![NewChunk {
                    offset: 0,
                    len: content.len() as u32,
                    fingerprint: fp,
                    uploaded: Some(record),
                }],
                new_size: content.len() as u64,
                mtime_ns: 1,
                truncate: false,
                attrs: None,
                create: None,
            })
            .await
            .expect("Mallory may commit to its own file");
        }
    });

    // The victim writes the poisoned contents: its dedup must not skip the
    // upload. Refused when each reads back whole through a fresh mount.
    for (name, content) in [
        ("never-stored", &poison_never_stored),
        ("garbage", &poison_garbage),
    ] {
        std::fs::write(local.path().join(name), content).expect("local copy");
        std::fs::write(m.path.join(name), content).expect("victim's write");
    }
    sh(&format!("sync -f {}", m.path.display()));
    m.unmount();
    let mut m = TestMount::start(&meta, &[]);
    for (name, content) in [
        ("never-stored", &poison_never_stored),
        ("garbage", &poison_garbage),
    ] {
        t.tried += 1;
        match std::fs::read(m.path.join(name)) {
            Ok(got) if got == *content => t.refused += 1,
            Ok(_) => t.let_through.push(format!(
                "dedup poisoning ({name}): the victim's file reads other bytes"
            )),
            Err(e) => t
                .let_through
                .push(format!("dedup poisoning ({name}): the victim's file: {e}")),
        }
        // Mallory's own file now names the real chunk.
        let theirs = std::fs::read(m.path.join(".mallory").join(name)).expect("mallory's file");
        assert!(
            theirs == *content,
            "Mallory's {name} does not read as the chunk"
        );
    }
    // The victim's entries are good: dfs-meta checks them when another
    // identity (Mallory) looks them up, and then offers them for dedup.
    let fingerprints: Vec<Vec<u8>> = [&poison_never_stored, &poison_garbage]
        .iter()
        .map(|c| dfs_core::Fingerprint::of(c).to_vec())
        .collect();
    let known = rt.block_on(async {
        let mut mal = MetaClient::new(channel(&mallory, &meta, Role::Meta).await.expect("mallory"));
        mal.lookup_chunks(LookupChunksRequest { fingerprints })
            .await
            .expect("lookup")
            .into_inner()
            .known
    });
    assert_eq!(
        known,
        vec![true, true],
        "checked entries are offered to every identity"
    );

    rt.block_on(overwrite_attack(
        &mut t,
        &mallory,
        &meta,
        &servers,
        local.path(),
        &m.path,
    ));
    subtree_attacks(&mut t, &rt, certs.path(), &meta, &client, local.path(), &m);
    let meta_cert = issue(certs.path(), "meta", "m2", &[]);
    rt.block_on(malformed_messages(
        &mut t,
        &[
            (Role::Client, &client),
            (Role::Admin, &admin),
            (Role::Server, &server_cert),
            (Role::Meta, &meta_cert),
        ],
        &meta,
        &server,
    ));

    // Shard tokens: a chunk map's tokens read its shards from their own
    // servers, nothing else does.
    rt.block_on(async {
        use libc::{EACCES, EKEYEXPIRED};
        let mut mal = MetaClient::new(channel(&mallory, &meta, Role::Meta).await.expect("mallory"));
        let ino = mal
            .lookup(LookupRequest {
                parent: 1,
                name: b"never-stored".to_vec(),
            })
            .await
            .expect("lookup")
            .into_inner()
            .ino;
        let mapped = mal
            .get_chunk_map(ChunkMapRequest {
                ino,
                ..ChunkMapRequest::default()
            })
            .await
            .expect("chunk map")
            .into_inner()
            .chunks
            .remove(0);
        let fp = mapped.fingerprint.clone();
        let rec = mapped.chunk.clone().expect("record");
        assert_eq!(mapped.shard_tokens.len(), rec.shard_servers.len());
        let address = |id: u32| {
            servers
                .iter()
                .find(|(s, _)| *s == id)
                .map(|(_, a)| a.clone())
                .expect("server")
        };
        let to = |i: usize| {
            let address = address(rec.shard_servers[i]);
            let mallory = mallory.clone();
            async move {
                ChunksClient::new(
                    channel(&mallory, &address, Role::Server)
                        .await
                        .expect("to server"),
                )
            }
        };
        let read = |i: usize, token: Vec<u8>| ShardKey {
            fingerprint: fp.clone(),
            index: i as u32,
            token,
        };
        // The honest read works: the refusals below are the tokens'.
        to(0)
            .await
            .get_shard(read(0, mapped.shard_tokens[0].clone()))
            .await
            .expect("a read with its token");
        t.expect_refused(
            "client: get a shard without a token",
            to(0).await.get_shard(read(0, Vec::new())).await,
            EACCES,
        );
        let mut forged = mapped.shard_tokens[0].clone();
        forged[20] ^= 1;
        t.expect_refused(
            "client: get a shard with a forged token",
            to(0).await.get_shard(read(0, forged)).await,
            EACCES,
        );
        t.expect_refused(
            "client: get a shard with another server's token",
            to(1)
                .await
                .get_shard(read(1, mapped.shard_tokens[0].clone()))
                .await,
            EACCES,
        );
        let reads = to(2)
            .await
            .get_shards(GetShardsRequest {
                shards: vec![read(2, mapped.shard_tokens[3].clone())],
            })
            .await
            .expect("get_shards")
            .into_inner()
            .shards;
        t.tried += 1;
        if reads.len() == 1 && reads[0].errno == EACCES && reads[0].data.is_empty() {
            t.refused += 1;
        } else {
            t.let_through.push(format!(
                "client: batched read with another shard's token: {reads:?}"
            ));
        }
        t.expect_refused(
            "client: put a shard without a token",
            to(0)
                .await
                .put_shards(PutShardsRequest {
                    shards: vec![Shard {
                        fingerprint: fp.clone(),
                        index: 0,
                        data: vec![0; rec.shard_len as usize].into(),
                        token: Vec::new(),
                    }],
                })
                .await,
            EACCES,
        );
        t.expect_refused(
            "client: put a shard with a read token",
            to(0)
                .await
                .put_shards(PutShardsRequest {
                    shards: vec![Shard {
                        fingerprint: fp.clone(),
                        index: 0,
                        data: vec![0; rec.shard_len as usize].into(),
                        token: mapped.shard_tokens[0].clone(),
                    }],
                })
                .await,
            EACCES,
        );
        // A stored chunk gets no put token: nothing to overwrite it with.
        let grants = mal
            .lookup_chunks(LookupChunksRequest {
                fingerprints: vec![fp.clone()],
            })
            .await
            .expect("lookup")
            .into_inner()
            .grants;
        t.tried += 1;
        if grants.iter().all(|g| g.tokens.is_empty()) {
            t.refused += 1;
        } else {
            t.let_through
                .push("client: put tokens granted for a stored chunk".into());
        }
        // Past its lifetime (the servers here allow no clock skew).
        tokio::time::sleep(std::time::Duration::from_secs(TOKEN_LIFETIME_SECS + 1)).await;
        t.expect_refused(
            "client: get a shard with an expired token",
            to(0)
                .await
                .get_shard(read(0, mapped.shard_tokens[0].clone()))
                .await,
            EKEYEXPIRED,
        );
    });

    println!(
        "attacks: {} tried, {} refused{}",
        t.tried,
        t.refused,
        if t.let_through.is_empty() {
            String::new()
        } else {
            format!("; let through: {:#?}", t.let_through)
        }
    );
    assert!(t.let_through.is_empty(), "{:#?}", t.let_through);
    assert_eq!(t.tried, t.refused);

    // The volume is as it was: every file, and fsck reading every shard.
    let diff = std::process::Command::new("diff")
        .args(["-r", "-x", ".mallory"])
        .arg(local.path())
        .arg(&m.path)
        .output()
        .expect("diff");
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    m.unmount();
    let (clean, report) = cluster.dfs_json(&["fsck", "--verify"]);
    assert!(clean, "fsck after the attacks: {report}");
}

/// Mallory asks for put tokens for a chunk nobody has stored yet (which
/// dfs-meta grants anyone about to upload it), waits until a victim's
/// mount has stored and committed it, then uses them to put garbage over
/// the victim's shards: refused with EEXIST, since a client may store a
/// chunk's shards but never replace stored ones with other bytes. The
/// file is written to `local` too, for the final comparison.
async fn overwrite_attack(
    t: &mut Tally,
    mallory: &Security,
    meta: &str,
    servers: &[(u32, String)],
    local: &Path,
    mount: &Path,
) {
    let mut mal = MetaClient::new(channel(mallory, meta, Role::Meta).await.expect("mallory"));
    // Tokens live TOKEN_LIFETIME_SECS here: on a machine too slow to
    // write a file in that time, try again with fresh ones.
    for attempt in 0..3u64 {
        // One chunk (under the smallest cut), too big to be stored inline.
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ attempt;
        let content: Vec<u8> = (0..20_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let fp = dfs_core::Fingerprint::of(&content).to_vec();
        let grant = mal
            .lookup_chunks(LookupChunksRequest {
                fingerprints: vec![fp.clone()],
            })
            .await
            .expect("lookup")
            .into_inner()
            .grants
            .pop()
            .expect("a put grant for a chunk nobody stored");
        let name = format!("overwritten-{attempt}");
        std::fs::write(local.join(&name), &content).expect("local copy");
        let mut file = std::fs::File::create(mount.join(&name)).expect("victim's create");
        std::io::Write::write_all(&mut file, &content).expect("victim's write");
        file.sync_all().expect("victim's fsync");
        drop(file);
        let ino = mal
            .lookup(LookupRequest {
                parent: 1,
                name: name.into_bytes(),
            })
            .await
            .expect("lookup")
            .into_inner()
            .ino;
        let rec = mal
            .get_chunk_map(ChunkMapRequest {
                ino,
                ..ChunkMapRequest::default()
            })
            .await
            .expect("chunk map")
            .into_inner()
            .chunks
            .remove(0)
            .chunk
            .expect("record");
        assert!(!rec.is_inline(), "the chunk is on chunk servers");
        let server = rec.shard_servers[0];
        let token = grant
            .servers
            .iter()
            .position(|&id| id == server)
            .map(|i| grant.tokens[i].clone())
            .expect("a token for the server");
        let address = &servers
            .iter()
            .find(|(id, _)| *id == server)
            .expect("server")
            .1;
        let mut to = ChunksClient::new(
            channel(mallory, address, Role::Server)
                .await
                .expect("to server"),
        );
        let put = to
            .put_shards(PutShardsRequest {
                shards: vec![Shard {
                    token,
                    fingerprint: fp,
                    index: 0,
                    data: vec![0x5a; rec.shard_len as usize].into(),
                }],
            })
            .await;
        if matches!(&put, Err(s) if DfsError::from(s.clone()).errno == libc::EKEYEXPIRED) {
            continue;
        }
        t.expect_refused(
            "client: put garbage over a committed shard with an earlier put token",
            put,
            libc::EEXIST,
        );
        return;
    }
    panic!("the put tokens expired before the victim's file was written, three times");
}

/// A client certificate confined to `/src` (`--subtree`): its root is
/// `/src`, through gRPC and through a real mount, and no inode outside can
/// be named. `m` is an unconfined mount of the volume, `local` its mirror
/// (what the confined mount writes is written there too).
fn subtree_attacks(
    t: &mut Tally,
    rt: &tokio::runtime::Runtime,
    certs: &Path,
    meta: &str,
    unconfined: &Security,
    local: &Path,
    m: &TestMount,
) {
    for root in [local, &m.path] {
        std::fs::create_dir(root.join("src")).expect("src");
        std::fs::write(root.join("src/inside.txt"), b"inside\n").expect("inside");
    }
    let dir = certs.join("sub");
    let confined = issue(&dir, "client", "client", &["--subtree", "/src"]);
    rt.block_on(async {
        use libc::EACCES;
        let mut sub = MetaClient::new(channel(&confined, meta, Role::Meta).await.expect("sub"));
        let admin = MetaClient::new(channel(unconfined, meta, Role::Meta).await.expect("c"));
        let ino_of = |parent: u64, name: &str| {
            let mut admin = admin.clone();
            let name = name.as_bytes().to_vec();
            async move {
                admin
                    .lookup(LookupRequest { parent, name })
                    .await
                    .expect("lookup")
                    .into_inner()
                    .ino
            }
        };
        let outside_dir = ino_of(1, "d0").await;
        let outside_file = ino_of(1, "never-stored").await;
        // What it may see: /src as its root.
        let root = sub.get_attr(InoRequest { ino: 1 }).await.expect("root");
        assert_eq!(root.get_ref().ino, 1, "the subtree shows as the root");
        let inside = sub
            .lookup(LookupRequest {
                parent: 1,
                name: b"inside.txt".to_vec(),
            })
            .await
            .expect("a file inside")
            .into_inner()
            .ino;
        let at = |ino: u64| InoRequest { ino };
        t.expect_refused(
            "subtree: getattr of a file outside",
            sub.get_attr(at(outside_file)).await,
            EACCES,
        );
        t.expect_refused(
            "subtree: getattr of a directory outside",
            sub.get_attr(at(outside_dir)).await,
            EACCES,
        );
        t.expect_refused(
            "subtree: list a directory outside",
            sub.read_dir(ReadDirRequest {
                ino: outside_dir,
                ..ReadDirRequest::default()
            })
            .await,
            EACCES,
        );
        t.expect_refused(
            "subtree: lookup in a directory outside",
            sub.lookup(LookupRequest {
                parent: outside_dir,
                name: b"e0".to_vec(),
            })
            .await,
            EACCES,
        );
        t.expect_refused(
            "subtree: chunk map (and shard tokens) of a file outside",
            sub.get_chunk_map(ChunkMapRequest {
                ino: outside_file,
                ..ChunkMapRequest::default()
            })
            .await,
            EACCES,
        );
        t.expect_refused(
            "subtree: chmod a file outside",
            sub.set_attr(SetAttrRequest {
                ino: outside_file,
                mode: Some(0o777),
                ..SetAttrRequest::default()
            })
            .await,
            EACCES,
        );
        t.expect_refused(
            "subtree: create in a directory outside",
            sub.create(CreateRequest {
                parent: outside_dir,
                name: b"planted".to_vec(),
                kind: FileKind::Regular as i32,
                mode: 0o644,
                ..CreateRequest::default()
            })
            .await,
            EACCES,
        );
        t.expect_refused(
            "subtree: unlink in a directory outside",
            sub.unlink(RemoveRequest {
                parent: outside_dir,
                name: b"e0".to_vec(),
                ..RemoveRequest::default()
            })
            .await,
            EACCES,
        );
        t.expect_refused(
            "subtree: hard-link a file outside into the subtree",
            sub.link(LinkRequest {
                ino: outside_file,
                new_parent: 1,
                new_name: b"stolen".to_vec(),
                client_id: 0,
            })
            .await,
            EACCES,
        );
        t.expect_refused(
            "subtree: move a file out",
            sub.rename(RenameRequest {
                parent: 1,
                name: b"inside.txt".to_vec(),
                new_parent: outside_dir,
                new_name: b"escaped".to_vec(),
                ..RenameRequest::default()
            })
            .await,
            EACCES,
        );
        t.expect_refused(
            "subtree: move a directory in from outside",
            sub.rename(RenameRequest {
                parent: outside_dir,
                name: b"e0".to_vec(),
                new_parent: 1,
                new_name: b"e0".to_vec(),
                ..RenameRequest::default()
            })
            .await,
            EACCES,
        );
        let xattr = |ino: u64| XattrRequest {
            ino,
            name: b"user.planted".to_vec(),
            value: b"x".to_vec(),
            ..XattrRequest::default()
        };
        t.expect_refused(
            "subtree: set an xattr outside",
            sub.set_xattr(xattr(outside_file)).await,
            EACCES,
        );
        t.expect_refused(
            "subtree: list xattrs outside",
            sub.list_xattr(at(outside_file)).await,
            EACCES,
        );
        t.expect_refused(
            "subtree: truncate a file outside (CommitChunks)",
            sub.commit_chunks(CommitChunksRequest {
                ino: outside_file,
                replaced: vec![ByteRange {
                    start: 0,
                    end: u64::MAX,
                }],
                truncate: true,
                attrs: None,
                ..CommitChunksRequest::default()
            })
            .await,
            EACCES,
        );
        t.expect_refused(
            "subtree: keep a file outside alive",
            sub.keep_unlinked(KeepUnlinkedRequest {
                inos: vec![inside, outside_file],
            })
            .await,
            EACCES,
        );
        t.expect_refused(
            "subtree: lock a file outside",
            sub.get_lock(SetLockRequest {
                ino: outside_file,
                end: u64::MAX,
                ..SetLockRequest::default()
            })
            .await,
            EACCES,
        );
    });
    // A real mount with it: /src is all it sees, and what it writes is
    // in /src for everyone else at once.
    let tls = format!("tls={}", dir.display());
    let mut confined_mount = TestMount::start(meta, &[&tls]);
    let names: Vec<String> = std::fs::read_dir(&confined_mount.path)
        .expect("list the confined root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["inside.txt".to_string()]);
    let written = random_bytes(200_000, 0x5375);
    std::fs::create_dir(confined_mount.path.join("new")).expect("mkdir in the subtree");
    std::fs::write(confined_mount.path.join("new/file"), &written).expect("write");
    std::fs::rename(
        confined_mount.path.join("inside.txt"),
        confined_mount.path.join("new/inside.txt"),
    )
    .expect("rename within the subtree");
    confined_mount.unmount();
    assert_eq!(
        std::fs::read(m.path.join("src/new/file")).expect("read through the whole volume"),
        written
    );
    std::fs::create_dir(local.join("src/new")).expect("mirror");
    std::fs::write(local.join("src/new/file"), &written).expect("mirror");
    std::fs::rename(
        local.join("src/inside.txt"),
        local.join("src/new/inside.txt"),
    )
    .expect("mirror");
}

/// Bytes that are no protobuf message of any method, sent to every RPC of
/// both services over their real TLS ports, each with a certificate whose
/// role may call it (so the bytes reach the decoder): each must be
/// answered with an error, never a panic or a hang, and the services must
/// still answer afterwards (the volume is checked whole at the end).
async fn malformed_messages(t: &mut Tally, certs: &[(Role, &Security)], meta: &str, server: &str) {
    use common::raw::{methods, RawCodec};
    use tonic::codegen::http::uri::PathAndQuery;
    let bodies: [(&str, Vec<u8>); 3] = [
        // A field key whose varint never ends.
        ("an endless varint", vec![0xff; 64]),
        // Field 1, length-delimited, longer than the message.
        ("a field longer than its message", vec![0x0a, 0x7f, 1, 2, 3]),
        // Field 1 with wire type 7, which does not exist.
        ("an unknown wire type", vec![0x0f, 0]),
    ];
    for path in methods() {
        let allowed = dfs_core::tls::authorize::allowed_roles(&path);
        let Some((role, security)) = certs.iter().find(|(r, _)| allowed.contains(r)) else {
            continue;
        };
        let (address, peer) = if path.starts_with("/dfs.v1.Chunks/") {
            (server, Role::Server)
        } else {
            (meta, Role::Meta)
        };
        let ch = channel(security, address, peer).await.expect("channel");
        for (what, body) in &bodies {
            t.tried += 1;
            let mut grpc = tonic::client::Grpc::new(ch.clone());
            let answer = tokio::time::timeout(std::time::Duration::from_secs(20), async {
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                grpc.unary(
                    tonic::Request::new(body.clone()),
                    PathAndQuery::try_from(path.as_str()).expect("path"),
                    RawCodec,
                )
                .await
            })
            .await;
            match answer {
                Ok(Err(status)) if !status.message().contains("panicked") => t.refused += 1,
                other => t.let_through.push(format!(
                    "{path} ({role} certificate), {what}: answered {other:?}"
                )),
            }
        }
    }
}

/// Seconds the cluster's shard tokens stay good.
const TOKEN_LIFETIME_SECS: u64 = 4;

/// A record of a chunk of `len` incompressible bytes, Reed-Solomon coded
/// the way the volume codes it, on the first servers of `servers`: what an
/// honest upload would commit, without (necessarily) the shards.
fn poisoned_record(volume: &VolumeConfig, len: usize, servers: &[(u32, String)]) -> ChunkRecord {
    let (data, parity) = (volume.data_shards, volume.parity_shards);
    let shards = (data + parity) as usize;
    assert!(
        servers.len() >= shards,
        "{} servers for {shards} shards",
        servers.len()
    );
    ChunkRecord {
        raw_len: len as u32,
        stored_len: len as u32,
        codec: Codec::None as i32,
        layout: Some(Layout {
            data_shards: data,
            parity_shards: parity,
            replicas: 0,
            inline: false,
            packed: false,
        }),
        shard_servers: servers[..shards].iter().map(|(id, _)| *id).collect(),
        shard_len: len.div_ceil(data as usize) as u32,
        ..ChunkRecord::default()
    }
}

/// One request of the service at `peer` over `ch`: `Ok` if it was served.
async fn probe(ch: Channel, peer: Role) -> Result<(), String> {
    match peer {
        Role::Server => ChunksClient::new(ch)
            .get_shards(GetShardsRequest::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => MetaClient::new(ch)
            .stat_fs(Empty {})
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}
