//! Observability end to end, over real processes:
//! - one search is one trace: a 3-node cluster and its coordinator export
//!   spans over OTLP/gRPC to a collector served in this test; the spans of
//!   a search the test starts (with its own W3C `traceparent`) come from
//!   the coordinator and from the nodes holding the shards, in one trace,
//!   each node span a child of a coordinator span;
//! - `/metrics` of a running process exposes every documented family.
//!
//! Its own test binary: it sets the OTLP environment its child processes
//! inherit.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use shoal_proto::v1::points_client::PointsClient;
use shoal_proto::v1::*;
use shoal_tests::procs::{spawn_ready, ProcCluster};
use shoal_tests::workload::{channel, create, DIM};
use shoal_tests::vector;

#[derive(Default, Clone)]
struct Collector {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(&self, req: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// One collected span: (service.name, service.instance.id, span id,
/// parent span id, name).
type Span = (String, String, Vec<u8>, Vec<u8>, String);

fn spans_of(c: &Collector, trace_id: &[u8]) -> Vec<Span> {
    let attr = |r: &Option<opentelemetry_proto::tonic::resource::v1::Resource>, key: &str| {
        r.as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == key))
            .and_then(|a| a.value.as_ref()?.value.as_ref().map(|v| if let Value::StringValue(s) = v { s.clone() } else { String::new() }))
            .unwrap_or_default()
    };
    let mut out = vec![];
    for req in c.requests.lock().unwrap().iter() {
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for s in ss.spans.iter().filter(|s| s.trace_id == trace_id) {
                    out.push((attr(&rs.resource, "service.name"), attr(&rs.resource, "service.instance.id"), s.span_id.clone(), s.parent_span_id.clone(), s.name.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn one_search_is_one_trace_across_coordinator_and_nodes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let collector = Collector::default();
    let server = tokio::spawn(tonic::transport::Server::builder().add_service(TraceServiceServer::new(collector.clone())).serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
    // Inherited by every process the harness starts.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"));
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");

    let cluster = ProcCluster::start(3).await.unwrap();
    let addr = cluster.coordinator.addr.clone();
    create(&addr, "t", 2, 3).await;
    let mut points = PointsClient::new(channel(&addr).await);
    let batch: Vec<PointStruct> = (0..200u64).map(|i| PointStruct { id: Some(i.into()), vector: vector(i, DIM), payload: None, sparse: Default::default(), vectors: Default::default() }).collect();
    points.upsert(UpsertPointsRequest { collection: "t".into(), points: batch }).await.unwrap();

    // The test is the trace's root: it sends its own traceparent.
    let trace_id: [u8; 16] = rand::random();
    let root_span: [u8; 8] = rand::random();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut req = tonic::Request::new(SearchPointsRequest { collection: "t".into(), vector: vector(7, DIM), top_k: 5, ..Default::default() });
    req.metadata_mut().insert("traceparent", format!("00-{}-{}-01", hex(&trace_id), hex(&root_span)).parse().unwrap());
    let hits = points.search(req).await.unwrap().into_inner().results;
    assert_eq!(hits.len(), 5);

    // Spans arrive in batches (200 ms here): wait for both shards' node
    // spans.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = spans_of(&collector, &trace_id);
        let nodes = spans.iter().filter(|s| s.0 == "shoal-node").count();
        if nodes >= 2 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let total: usize = collector.requests.lock().unwrap().iter().flat_map(|r| &r.resource_spans).flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
    println!("{total} spans collected in all, {} in the search's trace", spans.len());
    for s in &spans {
        println!("{} {} {} parent={} span={}", s.0, s.1, s.4, hex(&s.3), hex(&s.2));
    }
    let coord: Vec<&Span> = spans.iter().filter(|s| s.0 == "shoal-coordinator").collect();
    let nodes: Vec<&Span> = spans.iter().filter(|s| s.0 == "shoal-node").collect();
    assert!(coord.iter().any(|s| s.3 == root_span && s.4 == "shoal.v1.Points/Search"), "the coordinator's search span continues the caller's trace: {spans:?}");
    assert!(nodes.len() >= 2, "one node span per shard searched: {spans:?}");
    let coord_ids: BTreeSet<&Vec<u8>> = coord.iter().map(|s| &s.2).collect();
    for n in &nodes {
        assert_eq!(n.4, "shoal.internal.v1.Shard/Search", "{n:?}");
        assert!(coord_ids.contains(&n.3), "node span {n:?} is a child of a coordinator span");
    }
    let per_node: BTreeMap<&String, usize> = nodes.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(&s.1).or_default() += 1;
        m
    });
    println!("trace {}: {} coordinator spans, node spans per node {per_node:?}", hex(&trace_id), coord.len());
    server.abort();
}

/// GET `url` (http://host:port/path) with a raw HTTP/1.1 request.
fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_endpoint_exposes_every_family() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = ["dev", "--listen", "127.0.0.1:0", "--in-memory", "--sample", "300", "--metrics-listen", "127.0.0.1:0", "--data-dir"].iter().map(|s| s.to_string()).chain([dir.path().display().to_string()]).collect();
    let (mut child, url) = spawn_ready(&args, "shoal metrics ready: metrics=", "warn").unwrap();
    // The sample loads after the endpoint is up: wait for its points.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let body = http_get(&url);
        let points: f64 = body.lines().filter(|l| l.starts_with("shoal_shard_points{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
        if points >= 300.0 || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for family in [
        "shoal_rpc_requests_total{",
        "shoal_rpc_duration_seconds_bucket{",
        "shoal_raft_term{group=\"meta\"}",
        "shoal_raft_last_log_index{",
        "shoal_raft_applied_index{",
        "shoal_raft_is_leader{",
        "shoal_raft_replication_lag{",
        "shoal_shard_points{collection=\"sample\"",
        "shoal_shard_unindexed_points{",
        "shoal_index_memory_bytes ",
        "shoal_process_resident_bytes ",
        "shoal_node_info{",
        "shoal_gpu_available ",
    ] {
        assert!(text.contains(family), "/metrics lacks {family}:\n{text}");
    }
    // Every metric the Grafana dashboard queries is one the process serves
    // (event counters show once their first event happened).
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/shoal-dashboard.json")).unwrap()).unwrap();
    let after_first_event = ["shoal_snapshot_builds_total", "shoal_snapshot_installs_total", "shoal_snapshot_install_bytes_total"];
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("shoal_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                queried += 1;
                if !after_first_event.contains(&name.as_str()) {
                    assert!(text.contains(&format!("\n{name}")), "dashboard panel {:?} queries {name}, which /metrics does not serve", panel["title"]);
                }
            }
        }
    }
    assert!(queried >= 12, "the dashboard queries Shoal's metrics ({queried})");
    let upserts: u64 = text.lines().filter(|l| l.starts_with("shoal_rpc_requests_total{code=\"0\",rpc=\"shoal.v1.Points/Upsert\"}")).filter_map(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok()).sum();
    assert!(upserts >= 1, "the sample's upserts are counted:\n{text}");
}
