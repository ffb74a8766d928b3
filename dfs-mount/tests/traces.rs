//! Traces across processes (issue 20): an OTLP collector in this test
//! (the OpenTelemetry trace service on tonic) receives the spans of
//! dfs-meta, nine chunk servers and a mount, all exporting with
//! `--otlp-endpoint`. Writing and closing one file must be one trace with
//! spans from the mount, dfs-meta and at least six chunk servers: the W3C
//! trace context crossed every gRPC hop.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;

/// One span as received: who sent it, its trace, its name and attributes.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    instance: String,
    trace_id: Vec<u8>,
    name: String,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = text(
                &resource_spans
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            );
            let service = resource.get("service.name").cloned().unwrap_or_default();
            let instance = resource
                .get("service.instance.id")
                .cloned()
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Received {
                        service: service.clone(),
                        instance: instance.clone(),
                        trace_id: span.trace_id,
                        name: span.name,
                        attributes: text(&span.attributes),
                    });
                }
            }
        }
        self.spans.lock().expect("lock").extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the collector on a free port from a runtime of its own.
fn start_collector() -> (Collector, u16, tokio::runtime::Runtime) {
    let collector = Collector::default();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let service = TraceServiceServer::new(collector.clone());
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (collector, port, runtime)
}

/// The traces received so far: trace id → spans.
fn traces(collector: &Collector) -> HashMap<Vec<u8>, Vec<Received>> {
    let mut by_trace: HashMap<Vec<u8>, Vec<Received>> = HashMap::new();
    for span in collector.spans.lock().expect("lock").iter() {
        by_trace
            .entry(span.trace_id.clone())
            .or_default()
            .push(span.clone());
    }
    by_trace
}

/// Whether a trace holds spans of the mount, dfs-meta and at least six
/// distinct chunk servers.
fn crosses_the_cluster(spans: &[Received]) -> bool {
    let has = |service: &str| spans.iter().any(|s| s.service == service);
    let servers: HashSet<&str> = spans
        .iter()
        .filter(|s| s.service == "dfs-server")
        .map(|s| s.instance.as_str())
        .collect();
    has("dfs-mount") && has("dfs-meta") && servers.len() >= 6
}

#[test]
fn one_file_written_and_closed_is_one_trace_across_the_cluster() {
    let (collector, port, _collector_runtime) = start_collector();
    let endpoint = format!("http://127.0.0.1:{port}");
    let server_endpoint = endpoint.clone();
    let cluster = TestCluster::start_full(
        3,
        3,
        move |_| {
            vec![
                "--otlp-endpoint".into(),
                server_endpoint.clone(),
                "--trace-sample".into(),
                "1".into(),
            ]
        },
        vec![
            "--otlp-endpoint".into(),
            endpoint.clone(),
            "--trace-sample".into(),
            "1".into(),
        ],
    );
    cluster.wait_servers_up(9);
    let m = TestMount::start(
        &cluster.meta_addr(),
        &[&format!("otlp={endpoint},trace_sample=1")],
    );
    // Incompressible, so its chunks are erasure-coded onto nine servers.
    let data = random_bytes(300 << 10, 7);
    std::fs::write(m.path.join("traced"), &data).expect("write and close");

    let deadline = Instant::now() + Duration::from_secs(60);
    let (trace_id, spans) = loop {
        let found = traces(&collector)
            .into_iter()
            .find(|(_, spans)| crosses_the_cluster(spans));
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no trace crossed the mount, dfs-meta and six chunk servers; received: {:?}",
            traces(&collector)
                .values()
                .map(|spans| spans
                    .iter()
                    .map(|s| format!("{}:{}", s.service, s.name))
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let servers: HashSet<&str> = spans
        .iter()
        .filter(|s| s.service == "dfs-server")
        .map(|s| s.instance.as_str())
        .collect();
    let names: HashSet<String> = spans
        .iter()
        .map(|s| format!("{}:{}", s.service, s.name))
        .collect();
    println!(
        "trace {}: {} spans, {} chunk servers, {:?}",
        trace_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        spans.len(),
        servers.len(),
        names
    );
    // The trace is the file's close: a FUSE request of the mount whose
    // flush uploaded shards (PutShards on the servers) and committed its
    // chunk map (CommitChunks on dfs-meta).
    assert!(
        spans
            .iter()
            .any(|s| s.service == "dfs-mount" && s.name == "flush"),
        "{names:?}"
    );
    assert!(
        spans.iter().any(|s| s.service == "dfs-meta"
            && s.attributes.get("rpc.method").map(String::as_str) == Some("CommitChunks")),
        "{names:?}"
    );
    assert!(
        spans.iter().any(|s| s.service == "dfs-server"
            && s.attributes.get("rpc.method").map(String::as_str) == Some("PutShards")),
        "{names:?}"
    );
    assert!(std::fs::read(m.path.join("traced")).expect("read") == data);
}
