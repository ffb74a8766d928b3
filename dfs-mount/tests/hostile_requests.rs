//! Random requests thrown at every RPC of the metadata and chunk services,
//! in process: the embedded volume's real services behind their
//! transports, reached by raw gRPC calls so that any bytes reach any
//! method. Requests are random protobuf fields (small numbers, limits,
//! names, fingerprint-sized and nested messages: most decode as the
//! method's request, with values no client would send) or plain garbage.
//! No request may panic a handler or take longer than its deadline, and
//! after each case the volume's invariants hold: `fsck` finds no reference
//! count that differs from the chunk maps' references and no chunk-map
//! entry without its index entry (a case is judged by what it adds: the
//! volume is shared). Issue 19.
//!
//! `DFS_HOSTILE_CASES` sets the number of cases (default below); the test
//! prints how many requests it sent and how they were answered.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BufMut;
use common::raw::{methods, RawCodec};
use dfs_core::rpc::RpcTransport;
use dfs_mount::embedded::{Embedded, LOCAL_SERVER_ADDRESS};
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{CreateRequest, FileKind, FsckRequest};
use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::encoding::{encode_key, encode_varint, WireType};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;

const DEFAULT_CASES: u32 = 2000;
/// Longest any one request may take: the slowest legitimate answer is a
/// lock request waiting 10 s for a conflicting lock to go.
const DEADLINE: Duration = Duration::from_secs(20);

/// A protobuf field's value on the wire.
#[derive(Debug, Clone)]
enum Value {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(Vec<u8>),
}

fn encode(fields: &[(u32, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, value) in fields {
        match value {
            Value::Varint(v) => {
                encode_key(*tag, WireType::Varint, &mut out);
                encode_varint(*v, &mut out);
            }
            Value::Fixed64(v) => {
                encode_key(*tag, WireType::SixtyFourBit, &mut out);
                out.put_u64_le(*v);
            }
            Value::Fixed32(v) => {
                encode_key(*tag, WireType::ThirtyTwoBit, &mut out);
                out.put_u32_le(*v);
            }
            Value::Bytes(b) => {
                encode_key(*tag, WireType::LengthDelimited, &mut out);
                encode_varint(b.len() as u64, &mut out);
                out.extend_from_slice(b);
            }
        }
    }
    out
}

/// Numbers a handler takes for inodes, offsets, lengths, counts, flags:
/// mostly small (the seeded inodes, the first bytes of a file), and the
/// edges.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..8,
        1 => 8u64..64,
        1 => 0u64..300_000,
        1 => Just(u64::MAX),
        1 => Just(i64::MAX as u64),
        1 => Just(u32::MAX as u64),
        1 => Just(1u64 << 32),
        1 => any::<u64>(),
    ]
}

/// Bytes for names, fingerprints, values and nested messages.
fn bytes(nested: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(Vec::new()),
        2 => prop::sample::select(vec![
            b"a".to_vec(),
            b"f1".to_vec(),
            b"..".to_vec(),
            b".".to_vec(),
            b"a/b".to_vec(),
            b"user.x".to_vec(),
            b"security.capability".to_vec(),
            b"system.posix_acl_access".to_vec(),
        ]),
        2 => prop::collection::vec(any::<u8>(), 32),
        1 => prop::collection::vec(any::<u8>(), 0..400),
        1 => Just(vec![b'n'; 300]),
        3 => nested,
    ]
}

fn fields(nested: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Vec<(u32, Value)>> {
    let value = prop_oneof![
        5 => number().prop_map(Value::Varint),
        1 => any::<u64>().prop_map(Value::Fixed64),
        1 => any::<u32>().prop_map(Value::Fixed32),
        5 => bytes(nested).prop_map(Value::Bytes),
    ];
    // Most fields of the requests are numbered 1 to 6.
    let tag = prop_oneof![5 => 1u32..4, 3 => 4u32..8, 1 => 8u32..16];
    prop::collection::vec((tag, value), 0..10)
}

/// An encoded message of random fields, nesting messages two deep (a
/// commit's chunks and their records, a put's shards).
fn message() -> BoxedStrategy<Vec<u8>> {
    let leaf = fields(Just(Vec::new()).boxed()).prop_map(|f| encode(&f));
    let inner = fields(leaf.boxed()).prop_map(|f| encode(&f));
    fields(inner.boxed()).prop_map(|f| encode(&f)).boxed()
}

#[derive(Debug, Clone)]
struct Call {
    method: usize,
    body: Vec<u8>,
}

fn call(methods: usize) -> impl Strategy<Value = Call> {
    let body = prop_oneof![
        8 => message(),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ];
    (0..methods, body).prop_map(|(method, body)| Call { method, body })
}

/// Every method of both services, as `/dfs.v1.Service/Method`, from the
/// protocol itself: a new RPC is thrown at without anyone listing it.
struct Rig {
    runtime: tokio::runtime::Runtime,
    embedded: Embedded,
    chunks: RpcTransport,
    methods: Vec<String>,
    /// How requests were answered: "ok" or the status code.
    answers: Mutex<BTreeMap<String, u64>>,
}

impl Rig {
    fn start(dir: &std::path::Path) -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let embedded = runtime
            .block_on(Embedded::start(dir))
            .expect("embedded volume");
        let chunks = (embedded.connector())(LOCAL_SERVER_ADDRESS).expect("chunk service");
        let rig = Self {
            runtime,
            embedded,
            chunks,
            methods: methods(),
            answers: Mutex::new(BTreeMap::new()),
        };
        rig.seed();
        rig
    }

    fn meta(&self) -> MetaClient<RpcTransport> {
        MetaClient::new(self.embedded.meta.clone())
    }

    /// Inodes for the random numbers to find: a directory, files, a link.
    fn seed(&self) {
        self.runtime.block_on(async {
            let mut meta = self.meta();
            for (name, kind) in [
                ("d", FileKind::Directory),
                ("f1", FileKind::Regular),
                ("f2", FileKind::Regular),
                ("l", FileKind::Symlink),
            ] {
                meta.create(CreateRequest {
                    parent: 1,
                    name: name.as_bytes().to_vec(),
                    kind: kind as i32,
                    mode: 0o755,
                    symlink_target: b"f1".to_vec(),
                    ..CreateRequest::default()
                })
                .await
                .expect("seed");
            }
        });
    }

    async fn send(&self, call: &Call) -> Result<(), String> {
        let path = &self.methods[call.method];
        let transport = if path.starts_with("/dfs.v1.Chunks/") {
            self.chunks.clone()
        } else {
            self.embedded.meta.clone()
        };
        let mut grpc = tonic::client::Grpc::new(transport);
        let answer = tokio::time::timeout(DEADLINE, async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            grpc.unary(
                tonic::Request::new(call.body.clone()),
                PathAndQuery::try_from(path.as_str())
                    .map_err(|e| Status::internal(e.to_string()))?,
                RawCodec,
            )
            .await
        })
        .await
        .map_err(|_| format!("{path} took longer than {DEADLINE:?}"))?;
        let label = match &answer {
            Ok(_) => "ok".to_string(),
            Err(status) if status.message().contains("decode") => "undecodable".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        *self.answers.lock().entry(label).or_default() += 1;
        match answer {
            // A handler that panicked on a blocking thread answers with the
            // panic's message; a record a random request made unreadable
            // answers "corrupt metadata record". Either is a bug.
            Err(status)
                if status.message().contains("panicked")
                    || status.message().contains("corrupt metadata record") =>
            {
                Err(format!("{path}: {status:?}"))
            }
            _ => Ok(()),
        }
    }

    async fn damage(&self) -> Result<(u64, u64), String> {
        let report = self
            .meta()
            .fsck(FsckRequest {
                verify: false,
                orphan_grace_ns: i64::MAX,
            })
            .await
            .map_err(|s| format!("fsck: {s}"))?
            .into_inner();
        Ok((
            report.refcount_mismatches + report.link_mismatches,
            report.missing_entries,
        ))
    }

    fn run_case(&self, calls: &[Call]) -> Result<(), TestCaseError> {
        self.runtime
            .block_on(async {
                let before = self.damage().await?;
                for call in calls {
                    self.send(call).await?;
                }
                let after = self.damage().await?;
                if after.0 > before.0 || after.1 > before.1 {
                    return Err(format!(
                        "fsck: {} reference-count mismatches and {} chunk-map entries without an index entry, from {before:?}",
                        after.0, after.1
                    ));
                }
                Ok(())
            })
            .map_err(TestCaseError::fail)
    }
}

#[test]
fn random_requests_to_every_handler_leave_the_volume_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = Arc::new(Rig::start(dir.path()));
    let cases = std::env::var("DFS_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop::collection::vec(call(rig.methods.len()), 1..16);
    let result = runner.run(&strategy, |calls| rig.run_case(&calls));
    let answers = rig.answers.lock().clone();
    let sent: u64 = answers.values().sum();
    println!(
        "hostile requests: {cases} cases, {sent} requests over {} methods; answers: {answers:?}",
        rig.methods.len()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(rig.methods.len() >= 38, "methods parsed: {:?}", rig.methods);
}
