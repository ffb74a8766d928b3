//! Logs and traces of every dfs process (issue 20).
//!
//! Logs go through a `tracing_subscriber` fmt layer, as text or one JSON
//! object a line (`--log-format json`, for journald and log shippers).
//! Traces are the same `tracing` spans exported over OTLP/gRPC
//! (`--otlp-endpoint`, off by default) through `tracing-opentelemetry`.
//! The W3C trace context (`traceparent`) crosses every gRPC request: the
//! client transport ([`inject`], in [`crate::rpc::boxed_transport`])
//! writes the caller's span into the request headers, and the servers'
//! RPC layer ([`server_span`]) opens its span as that span's child, so a
//! file's close is one trace through the mount, dfs-meta and the chunk
//! servers.
//!
//! Sampling is decided once, at a trace's root, by `--trace-sample`;
//! children and remote children follow. Spans of unsampled traces are
//! still recorded, and one that ends with an error is exported anyway:
//! errors are always sampled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceFlags, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
    SpanData, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use super::TelemetryError;

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields, spans.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format `{other}`: use text or json")),
        }
    }
}

/// The share of traces sampled when `--otlp-endpoint` is given and no
/// ratio is: enough to see where time goes on a busy mount, without
/// exporting a span for every `stat`.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.1;

/// `--log-format`, `--otlp-endpoint` and `--trace-sample` of the daemons.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct TraceArgs {
    /// How log lines on stderr are written.
    #[arg(
        long = "log-format",
        value_enum,
        default_value_t = LogFormat::Text,
        help_heading = "Observability"
    )]
    pub log_format: LogFormat,
    /// Export traces over OTLP/gRPC to URL (a Jaeger or OpenTelemetry
    /// collector, e.g. http://127.0.0.1:4317). Off by default.
    #[arg(
        long = "otlp-endpoint",
        value_name = "URL",
        value_parser = parse_endpoint,
        help_heading = "Observability"
    )]
    pub otlp_endpoint: Option<String>,
    /// Share of traces this process starts that are exported (0 to 1).
    /// Traces started elsewhere follow their caller's choice; spans that
    /// end in an error are always exported.
    #[arg(
        long = "trace-sample",
        value_name = "RATIO",
        default_value_t = DEFAULT_SAMPLE_RATIO,
        value_parser = parse_ratio,
        help_heading = "Observability"
    )]
    pub trace_sample: f64,
}

impl Default for TraceArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            trace_sample: DEFAULT_SAMPLE_RATIO,
        }
    }
}

/// A sampling ratio: a number from 0 to 1.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{text}` is not a ratio from 0 to 1")),
    }
}

/// An OTLP/gRPC endpoint: an http:// or https:// URL with a host.
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    let uri: tonic::codegen::http::Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not a URL like http://127.0.0.1:4317"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(text.to_string()),
        _ => Err(format!(
            "`{text}`: an OTLP endpoint is an http:// or https:// URL like http://127.0.0.1:4317"
        )),
    }
}

/// Who this process is, in every span it exports: `service.name` (the
/// program) and `service.instance.id` (which one: a listen address, a
/// mount point).
#[derive(Clone, Debug)]
pub struct ProcessIdentity {
    pub service: &'static str,
    pub instance: String,
}

/// Where log lines go: stderr unless a caller (the mount's `-o log=`)
/// says otherwise.
pub struct LogOutput {
    pub writer: BoxMakeWriter,
    /// Colours, for a person at a terminal only.
    pub ansi: bool,
    /// stderr is journald's (systemd sets `JOURNAL_STREAM`): it dates
    /// every line itself, so text lines carry no timestamp of their own.
    pub journal: bool,
}

impl LogOutput {
    pub fn stderr() -> Self {
        Self {
            writer: BoxMakeWriter::new(std::io::stderr),
            ansi: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            journal: std::env::var_os("JOURNAL_STREAM").is_some(),
        }
    }
}

/// The fmt layer for `format`, unfiltered: the caller adds its filter.
pub fn log_layer(format: LogFormat, output: LogOutput) -> Box<dyn Layer<Registry> + Send + Sync> {
    match format {
        LogFormat::Text if output.journal => tracing_subscriber::fmt::layer()
            .without_time()
            .with_ansi(false)
            .with_writer(output.writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(output.ansi)
            .with_writer(output.writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(output.writer)
            .boxed(),
    }
}

/// `RUST_LOG`, or `info`.
pub fn default_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())
}

/// A daemon's logging and tracing: `RUST_LOG`-filtered log lines on
/// stderr in `args.log_format`, and traces if `args.otlp_endpoint` is set.
pub fn init_daemon(
    identity: ProcessIdentity,
    args: &TraceArgs,
) -> Result<TracingGuard, TelemetryError> {
    let logs = log_layer(args.log_format, LogOutput::stderr())
        .with_filter(default_filter())
        .boxed();
    init(identity, args, logs)
}

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces: context is carried only then.
pub fn tracing_on() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Installs the global subscriber: `logs` as given (already filtered)
/// and, with an endpoint, the OpenTelemetry layer. Keep the guard until
/// the process ends: dropping it sends the spans still queued.
pub fn init(
    identity: ProcessIdentity,
    args: &TraceArgs,
    logs: Box<dyn Layer<Registry> + Send + Sync>,
) -> Result<TracingGuard, TelemetryError> {
    // A process that cannot export traces still runs, and logs, and says so.
    let provider = match &args.otlp_endpoint {
        Some(endpoint) => match tracer_provider(&identity, endpoint, args.trace_sample) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("{}: {e}; running without traces", identity.service);
                None
            }
        },
        None => None,
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("dfs"))
            .with_filter(tracing_subscriber::filter::filter_fn(exported))
    });
    // Without an exporter the registry gets the log layer alone: an absent
    // layer (`None`) in the stack made every callsite count as wanted, so
    // the HTTP/2 library's trace-level spans were made, entered and closed
    // on every poll of a connection (15% of the mount's CPU in a lookup
    // loop).
    let installed = match otel {
        Some(otel) => tracing_subscriber::registry()
            .with(logs)
            .with(otel)
            .try_init(),
        None => tracing_subscriber::registry().with(logs).try_init(),
    };
    installed.map_err(|e| TelemetryError::Install(e.to_string()))?;
    if let (Some(endpoint), Some(_)) = (&args.otlp_endpoint, &provider) {
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!(
            %endpoint,
            sample = args.trace_sample,
            "exporting traces over OTLP"
        );
    }
    Ok(TracingGuard { provider })
}

/// Spans and events that become trace data: dfs's own, down to debug
/// (a FUSE request, a flush, a shard batch), never the HTTP/2 and gRPC
/// libraries' (thousands per request).
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let ours = meta.target().starts_with("dfs");
    ours && *meta.level() <= tracing::Level::DEBUG
}

/// Exports traces over OTLP/gRPC to `endpoint`. The exporter's tonic
/// channel lives on a small runtime of its own, so that it works in
/// every process whatever runtime (or none) its main thread runs.
fn tracer_provider(
    identity: &ProcessIdentity,
    endpoint: &str,
    ratio: f64,
) -> Result<SdkTracerProvider, TelemetryError> {
    let runtime = export_runtime()?;
    let _entered = runtime.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError::Install(format!("OTLP exporter for {endpoint}: {e}")))?;
    let batches = BatchSpanProcessor::builder(exporter).build();
    let resource = Resource::builder()
        .with_service_name(identity.service)
        .with_attribute(KeyValue::new(
            "service.instance.id",
            identity.instance.clone(),
        ))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(RecordUnsampled(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(ratio),
        ))))
        .with_span_processor(ErrorsAlwaysSampled(batches))
        .build())
}

fn export_runtime() -> Result<&'static tokio::runtime::Runtime, TelemetryError> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| TelemetryError::Install(format!("OTLP export runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Sends the spans still queued when dropped.
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("traces: the last spans were not sent: {e}");
            }
        }
    }
}

/// The ratio sampler, except that what it would drop is recorded without
/// the sampled flag, so that [`ErrorsAlwaysSampled`] can still send a
/// span that ends in an error.
#[derive(Clone, Debug)]
struct RecordUnsampled(Sampler);

impl ShouldSample for RecordUnsampled {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        span_kind: &opentelemetry::trace::SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let mut result =
            self.0
                .should_sample(parent_context, trace_id, name, span_kind, attributes, links);
        if result.decision == SamplingDecision::Drop {
            result.decision = SamplingDecision::RecordOnly;
        }
        result
    }
}

/// Passes sampled spans on, and unsampled ones whose status is an error
/// flagged as sampled.
#[derive(Debug)]
struct ErrorsAlwaysSampled<P>(P);

impl<P: SpanProcessor> SpanProcessor for ErrorsAlwaysSampled<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx)
    }

    fn on_end(&self, mut span: SpanData) {
        if !span.span_context.is_sampled() {
            if !matches!(span.status, opentelemetry::trace::Status::Error { .. }) {
                return;
            }
            let was = &span.span_context;
            span.span_context = SpanContext::new(
                was.trace_id(),
                was.span_id(),
                was.trace_flags() | TraceFlags::SAMPLED,
                was.is_remote(),
                was.trace_state().clone(),
            );
        }
        self.0.on_end(span)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource)
    }
}

struct HeaderWriter<'a>(&'a mut HeaderMap);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderReader<'a>(&'a HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes the current span's trace context into a request's headers
/// (`traceparent`, `tracestate`). Nothing when traces are off.
pub fn inject(headers: &mut HeaderMap) {
    if !tracing_on() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderWriter(headers));
}

/// The span a server runs one RPC in, child of the caller's span named
/// in the request's headers; disabled when traces are off.
pub fn server_span(headers: &HeaderMap, service: &str, method: &str) -> tracing::Span {
    // A heartbeat every two seconds from every chunk server would be a
    // trace of its own each: noise that buries the requests that matter.
    if !tracing_on() || method == "Heartbeat" {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: "dfs::rpc",
        "rpc",
        otel.name = format!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.errno = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderReader(headers));
    // A request without a context starts a trace of its own.
    let _ = span.set_parent(parent);
    span
}

/// Records an RPC's outcome on its span: the errno, and an error status
/// (always exported) unless the errno is one a caller expects.
pub fn record_outcome(span: &tracing::Span, errno: i32) {
    if errno == 0 || span.is_none() {
        return;
    }
    span.record("rpc.errno", errno);
    if !super::routine_errno(errno) {
        span.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_checked() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("all").is_err());
        assert!(parse_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(parse_endpoint("https://collector.example:4317").is_ok());
        assert!(parse_endpoint("127.0.0.1:4317").is_err());
        assert!(parse_endpoint("ftp://x").is_err());
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn only_our_spans_are_exported() {
        use tracing::callsite::Identifier;
        use tracing::metadata::Kind;
        struct Site;
        impl tracing::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                unimplemented!()
            }
        }
        static SITE: Site = Site;
        let meta = |target: &'static str, level| {
            tracing::Metadata::new(
                "span",
                target,
                level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], Identifier(&SITE)),
                Kind::SPAN,
            )
        };
        assert!(exported(&meta("dfs_mount::fs", tracing::Level::DEBUG)));
        assert!(exported(&meta("dfs::rpc", tracing::Level::INFO)));
        assert!(!exported(&meta("dfs_mount::fs", tracing::Level::TRACE)));
        assert!(!exported(&meta("h2::proto", tracing::Level::INFO)));
    }

    /// Hands finished spans to the test.
    #[derive(Debug, Default, Clone)]
    struct Collect(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl SpanProcessor for Collect {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            if span.span_context.is_sampled() {
                self.0.lock().unwrap().push(span.name.to_string());
            }
        }
        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }

    /// The spans exported, by name, at sampling ratio `ratio`, of a
    /// trace that ends well and one that logs an error.
    fn exported_at(ratio: f64) -> Vec<String> {
        let collect = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(RecordUnsampled(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            ))))
            .with_span_processor(ErrorsAlwaysSampled(collect.clone()))
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("quiet").in_scope(|| tracing::info!("all well"));
            tracing::info_span!("failing").in_scope(|| tracing::error!("broken"));
        });
        let names = collect.0.lock().unwrap().clone();
        names
    }

    #[test]
    fn errors_are_exported_from_unsampled_traces() {
        assert_eq!(exported_at(0.0), ["failing"]);
        assert_eq!(exported_at(1.0), ["quiet", "failing"]);
    }

    #[test]
    fn context_round_trips_through_headers() {
        let propagator = TraceContextPropagator::new();
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let cx = propagator.extract(&HeaderReader(&headers));
        let mut out = HeaderMap::new();
        propagator.inject_context(&cx, &mut HeaderWriter(&mut out));
        assert_eq!(out["traceparent"], headers["traceparent"]);
    }
}
