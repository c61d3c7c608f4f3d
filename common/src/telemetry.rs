//! Observability shared by every Shoal server process (coordinators and
//! nodes). See docs/observability.md.
//!
//! - **Metrics.** One Prometheus registry per process ([`registry`]).
//!   [`RpcMetricsLayer`] on every gRPC server counts requests per method
//!   and status code and records their latency; processes add their own
//!   gauges ([`gauge_vec`]) and fill them when scraped. [`serve_metrics`]
//!   serves the text format on `GET /metrics`.
//! - **Traces.** [`init`] installs the tracing subscriber: text or JSON
//!   logs with a level filter, and, when an OTLP endpoint is configured, an
//!   OpenTelemetry layer exporting spans over OTLP/gRPC. [`server_span`]
//!   opens one span per incoming gRPC request that continues the caller's
//!   W3C `traceparent`; [`inject`] puts the current span's context on an
//!   outgoing request, so one search is one trace across processes.
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer as _;

/// The process's metrics registry.
pub fn registry() -> &'static Registry {
    static R: LazyLock<Registry> = LazyLock::new(Registry::new);
    &R
}

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    registry().register(Box::new(c.clone())).expect("metric names are unique");
    c
}

/// A gauge family registered in [`registry`].
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
}

/// A counter family registered in [`registry`].
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
}

static RPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| counter_vec("shoal_rpc_requests_total", "gRPC requests served, by method and gRPC status code", &["rpc", "code"]));
/// Searches answered over `SearchStream`, by gRPC status code: the stream
/// is one RPC in [`RPC_REQUESTS`], this counts its searches.
pub static STREAM_SEARCHES: LazyLock<IntCounterVec> = LazyLock::new(|| counter_vec("shoal_stream_searches_total", "searches answered over SearchStream, by gRPC status code", &["code"]));
static RPC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    // 100 µs to about 24 s.
    let buckets = prometheus::exponential_buckets(0.0001, 2.5, 14).expect("buckets");
    register(HistogramVec::new(HistogramOpts::new("shoal_rpc_duration_seconds", "gRPC request latency, by method").buckets(buckets), &["rpc"]).expect("valid histogram"))
});

/// Reloads of changed files, by what (`tls`, `keys`) and result (`ok`,
/// `error`).
pub static RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| counter_vec("shoal_reloads_total", "certificate and key files reloaded after they changed, by what and result", &["what", "result"]));
/// TLS handshakes that failed, by reason (`refused`, `timeout`).
pub static TLS_HANDSHAKE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| counter_vec("shoal_tls_handshake_failures_total", "incoming TLS handshakes that failed (bad or missing certificate, not TLS) or timed out", &["reason"]));
/// Internal calls refused by certificate identity, by gRPC code name.
pub static PEER_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| counter_vec("shoal_internal_refusals_total", "internal calls refused because of the caller's certificate identity, by gRPC code", &["code"]));
/// Audit lines, by outcome (`written`, `failed`).
pub static AUDIT_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| counter_vec("shoal_audit_events_total", "audit log lines, by whether they were written", &["outcome"]));

/// Health and reflection methods served beside Shoal's own.
const STANDARD_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The method label of a request path: the methods Shoal serves by name,
/// any other path as "other" (a fixed set of label values, whatever
/// paths callers send).
fn rpc_label(path: &str) -> &str {
    if shoal_proto::method_paths().contains(path) || STANDARD_METHODS.contains(&path) {
        path.trim_start_matches('/')
    } else {
        "other"
    }
}

/// Tower layer recording [`RPC_REQUESTS`] and [`RPC_SECONDS`] for every
/// request a gRPC server answers.
#[derive(Debug, Clone, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics(inner)
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S>(S);

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = rpc_label(req.uri().path()).to_string();
        let start = Instant::now();
        let fut = self.0.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(r) => (crate::layer::grpc_code(r) as i32).to_string(),
                Err(_) => "transport".to_string(),
            };
            RPC_REQUESTS.with_label_values(&[rpc.as_str(), code.as_str()]).inc();
            RPC_SECONDS.with_label_values(&[rpc.as_str()]).observe(start.elapsed().as_secs_f64());
            res
        })
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until
/// `shutdown`; `collect` runs before each scrape to refresh the process's
/// gauges.
/// With `tls`, the endpoint is HTTPS (server certificate only: Prometheus
/// and the probes present none).
pub async fn serve_metrics(listener: tokio::net::TcpListener, tls: Option<Arc<crate::tls::TlsContext>>, collect: Arc<dyn Fn() + Send + Sync>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let collect = collect.clone();
            async move {
                let text = tokio::task::spawn_blocking(move || {
                    collect();
                    render()
                })
                .await
                .unwrap_or_else(|e| format!("# collecting metrics failed: {e}\n"));
                ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }
        }),
    );
    axum::serve(crate::tls::axum_listener(listener, tls)?, app).with_graceful_shutdown(shutdown).await
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry().gather(), &mut buf) {
        return format!("# encoding metrics failed: {e}\n");
    }
    String::from_utf8(buf).unwrap_or_default()
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value.as_str())) {
            self.0.insert(k, v);
        }
    }
}

/// The span of one incoming gRPC request (tonic's `trace_fn`): named after
/// the method, a child of the W3C trace context the caller sent, if any.
pub fn server_span(req: &http::Request<()>) -> tracing::Span {
    let path = req.uri().path();
    // `otel.name` is the method's full name: no separate `rpc.method` field
    // (every field is formatted for the log context on each request).
    let span = tracing::info_span!("grpc", otel.name = %rpc_label(path), otel.kind = "server");
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    let _ = span.set_parent(parent);
    span
}

/// Adds the current span's trace context (`traceparent`) to an outgoing
/// request's metadata. A no-op when tracing export is off.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

/// [`inject`] for a request body about to be sent.
pub fn request<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    inject(r.metadata_mut());
    r
}

/// Runs an exporter's calls on the process's tokio runtime. OpenTelemetry's
/// batch processor exports from a plain thread, where the tonic exporter
/// (which needs a tokio reactor) would panic.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    handle: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let task = self.handle.spawn(async move { inner.export(batch).await });
        async move { task.await.unwrap_or_else(|e| Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(e.to_string()))) }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(e) = Arc::get_mut(&mut self.inner) {
            e.set_resource(resource);
        }
    }
}

/// How a process logs and traces.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// `service.name` of exported spans ("shoal-node", "shoal-coordinator").
    pub service: String,
    /// `service.instance.id` (the node id, or the listen address).
    pub instance: String,
    /// Log filter (`info`, `shoal_node=debug,openraft=warn` ...).
    pub filter: String,
    /// JSON logs, one object per line.
    pub json: bool,
    /// OTLP/gRPC endpoint (`http://collector:4317`); none: no export.
    pub otlp_endpoint: Option<String>,
    /// Which spans are exported ([`DEFAULT_TRACE_FILTER`] when empty).
    pub trace_filter: String,
}

/// Spans exported by default: Shoal's own at `info` (one per request and
/// the steps under it), other crates' only at `warn`.
pub const DEFAULT_TRACE_FILTER: &str = "warn,shoal_common=info,shoal_coordinator=info,shoal_node=info";

/// Flushes and stops span export when dropped (at the end of `main`).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter. Blocking.
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs the global subscriber (call once, inside the tokio runtime).
/// Spans go to the OTLP endpoint when one is configured; the W3C
/// propagator is installed either way.
pub fn init(cfg: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    // Colour only on a terminal: log files and container logs get plain
    // text (and each request's span fields are formatted without escapes).
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = if cfg.json { fmt.json().boxed() } else { fmt.boxed() };
    let mut provider = None;
    let otel = match cfg.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        None => None,
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).with_timeout(Duration::from_secs(5)).build()?;
            let exporter = OnRuntime { inner: Arc::new(exporter), handle: tokio::runtime::Handle::current() };
            let resource = Resource::builder().with_service_name(cfg.service.clone()).with_attribute(KeyValue::new("service.instance.id", cfg.instance.clone())).build();
            let p = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
            let tracer = p.tracer("shoal");
            provider = Some(p);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
    };
    // The log filter applies to logs only: spans are exported at their own
    // level (Shoal's request spans; libraries' spans only when they warn),
    // so quiet logs do not silence traces.
    let trace_filter = tracing_subscriber::EnvFilter::try_new(&cfg.trace_filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_TRACE_FILTER));
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel.map(|o| o.with_filter(trace_filter))).try_init()?;
    Ok(Telemetry { provider })
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_labels_are_bounded() {
        assert_eq!(rpc_label("/shoal.v1.Points/Search"), "shoal.v1.Points/Search");
        assert_eq!(rpc_label("/grpc.health.v1.Health/Check"), "grpc.health.v1.Health/Check");
        assert_eq!(rpc_label("/evil/../x"), "other");
        assert_eq!(rpc_label("/shoal.internal.v1.Raft/AppendEntries"), "shoal.internal.v1.Raft/AppendEntries");
        // Invented paths under Shoal's packages once each made a new label.
        assert_eq!(rpc_label("/shoal.v1.Points/Nope"), "other");
        assert_eq!(rpc_label("/shoal.x/1"), "other");
        assert_eq!(rpc_label("/grpc.health.v1.Health/Evil"), "other");
    }

    #[test]
    fn rendered_metrics_include_rpc_families() {
        RPC_REQUESTS.with_label_values(&["shoal.v1.Points/Search", "0"]).inc();
        RPC_SECONDS.with_label_values(&["shoal.v1.Points/Search"]).observe(0.001);
        STREAM_SEARCHES.with_label_values(&["0"]).inc();
        let text = render();
        assert!(text.contains("shoal_rpc_requests_total{code=\"0\",rpc=\"shoal.v1.Points/Search\"}"), "{text}");
        assert!(text.contains("shoal_stream_searches_total{code=\"0\"}"), "{text}");
        assert!(text.contains("shoal_rpc_duration_seconds_bucket"), "{text}");
    }
}
