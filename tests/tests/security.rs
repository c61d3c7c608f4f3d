//! Attacks on a real cluster of `shoal` processes with TLS and
//! authentication on (docs/security.md). Each would have succeeded before
//! TLS and authentication existed: the internal port took any caller and
//! the public API had no credentials.
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_client::{Client, ClientError, CollectionBuilder, ConnectOptions, Credentials, Point, SearchBuilder};
use shoal_common::identity::Identity;
use shoal_common::pki::{write_private, DevCa};
use shoal_common::tls::{Expect, TlsContext, TlsFiles};
use shoal_node::raft::TypeConfig;
use shoal_proto::internal::v1::meta_client::MetaClient;
use shoal_proto::internal::v1::raft_client::RaftClient;
use shoal_proto::internal::v1::shard_client::ShardClient;
use shoal_proto::internal::v1::*;
use shoal_proto::v1::Metric;
use shoal_tests::procs::ProcCluster;
use tonic::Code;

const RO: &str = "ro-key-0123456789abcdef";
const RW: &str = "rw-key-0123456789abcdef";
const ADMIN: &str = "admin-key-0123456789abcdef";
const SECRET: &str = "jwt-secret-0123456789abcdef0123456789";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn jwt(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

async fn client(addr: &str, token: Option<&str>) -> Client {
    let mut o: ConnectOptions = shoal_tests::tls::client_options();
    if let Some(t) = token {
        o.credentials = Credentials::bearer(t).unwrap();
    }
    Client::connect_with(addr, &o).await.unwrap()
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Err(ClientError::Status(s)) => s.code(),
        other => panic!("expected a status, got {other:?}"),
    }
}

/// A channel to `addr` presenting the certificate in `files` (or no TLS at
/// all with `None`).
async fn channel_as(addr: &str, files: Option<TlsFiles>) -> Option<tonic::transport::Channel> {
    let tls = files.map(|f| TlsContext::load(f).unwrap());
    shoal_common::tls::connect(addr, tls, Expect::Any, Duration::from_secs(2)).await.ok()
}

fn raft_req<T: serde::Serialize>(group: &str, rpc: &T) -> RaftRequest {
    RaftRequest { group: group.into(), payload: postcard::to_stdvec(rpc).unwrap() }
}

fn append(term: u64, leader: u64) -> openraft::raft::AppendEntriesRequest<TypeConfig> {
    openraft::raft::AppendEntriesRequest { vote: openraft::Vote::new_committed(term, leader), prev_log_id: None, entries: vec![], leader_commit: None }
}

/// Every internal call an outsider might try: join, read the map, Raft,
/// read shard data, install a snapshot, fetch a backup. Returns the
/// results' codes (`Ok` for a call that went through).
async fn internal_calls(ch: &tonic::transport::Channel) -> Vec<(&'static str, Result<(), Code>)> {
    let mut out = vec![];
    let mut meta = MetaClient::new(ch.clone());
    let mut raft = RaftClient::new(ch.clone());
    let mut shard = ShardClient::new(ch.clone());
    let c = |r: Result<(), tonic::Status>| r.map_err(|s| s.code());
    out.push(("GetClusterMap", c(meta.get_cluster_map(GetClusterMapRequest {}).await.map(drop))));
    out.push(("RegisterNode", c(meta.register_node(RegisterNodeRequest { node_id: 9, address: "127.0.0.1:1".into(), incarnation: 1 }).await.map(drop))));
    out.push(("AppendEntries", c(raft.append_entries(raft_req("meta", &append(1 << 40, 9))).await.map(drop))));
    let snap = openraft::raft::InstallSnapshotRequest::<TypeConfig> { vote: openraft::Vote::new_committed(1 << 40, 9), meta: Default::default(), offset: 0, data: vec![1; 16], done: true };
    out.push(("InstallSnapshot", c(raft.install_snapshot(raft_req("meta", &snap)).await.map(drop))));
    let get = ShardGetRequest { shard: Some(ShardRef { collection: "a".into(), shard_id: 0, epoch: 0 }), ids: vec![1u64.into()], with_payload: true, with_vector: true, consistency: 0 };
    out.push(("Shard/Get", c(shard.get(get).await.map(drop))));
    out.push(("ReadBackup", c(meta.read_backup(ReadBackupRequest { name: "b".into(), shard_id: 0, cursor: 0, max_points: 10 }).await.map(drop))));
    out
}

fn write_keys(path: &Path, text: &str) {
    // Through a rename, as a Secret update is: a reader never sees half.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < within, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server certificate `addr` presents to a new connection (DER).
async fn served_cert(addr: &str, ca: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider)).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots).with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Public API: credentials, roles, collection scopes, token checks, key and
/// certificate rotation without a restart, and the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_public_api_needs_credentials_and_keeps_each_to_its_role() {
    shoal_tests::tls::force_on();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("api-keys");
    write_keys(&keys, &format!("read-only {RO} reader\nread-write {RW} writer\nadmin {ADMIN} ops\n"));
    let secret = dir.path().join("jwt-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let flags: Vec<String> = ["--api-keys-file", keys.to_str().unwrap(), "--jwt-secret-file", secret.to_str().unwrap(), "--audit-log", audit.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    let cluster = ProcCluster::start_opts(3, &[], &flags).await.unwrap();
    let addr = cluster.coordinator.addr.clone();

    // Without credentials: UNAUTHENTICATED, for reads and writes.
    let anon = client(&addr, None).await;
    assert_eq!(code(anon.list_collections().await), Code::Unauthenticated);
    assert_eq!(code(anon.create_collection(CollectionBuilder::new("x", 4, Metric::L2).build()).await), Code::Unauthenticated);
    assert_eq!(code(client(&addr, Some("not-a-key-0123456789")).await.list_collections().await), Code::Unauthenticated);

    let admin = client(&addr, Some(ADMIN)).await;
    for name in ["a", "b"] {
        admin.create_collection(CollectionBuilder::new(name, 4, Metric::L2).shards(2).build()).await.unwrap();
    }
    let rw = client(&addr, Some(RW)).await;
    let ro = client(&addr, Some(RO)).await;
    let points = |base: u64| (base..base + 10).map(|i| Point::new(i, vec![i as f32, 1.0, 2.0, 3.0]).payload(serde_json::json!({"k": i, "tag": "t", "n": {"x": i}}))).collect::<Vec<_>>();
    rw.upsert("a", points(0)).await.unwrap();
    // Read-only reads, never writes; read-write manages no collections.
    assert_eq!(ro.search(SearchBuilder::new("a", vec![1.0, 1.0, 2.0, 3.0], 3)).await.unwrap().len(), 3);
    assert_eq!(code(ro.upsert("a", points(100)).await), Code::PermissionDenied);
    assert_eq!(code(ro.delete_all("a").await), Code::PermissionDenied);
    assert_eq!(code(rw.create_collection(CollectionBuilder::new("c", 4, Metric::L2).build()).await), Code::PermissionDenied);
    assert_eq!(code(rw.delete_collection("b").await), Code::PermissionDenied);
    assert_eq!(code(rw.cluster_status().await), Code::PermissionDenied);
    assert!(admin.cluster_status().await.is_ok());

    // A token for `a` reads and writes `a`, and cannot touch `b`.
    let tok = jwt(SECRET, serde_json::json!({"sub": "app-a", "exp": now() + 300, "role": "read-write", "collections": ["a"]}));
    let ja = client(&addr, Some(&tok)).await;
    ja.upsert("a", points(20)).await.unwrap();
    assert!(ja.search(SearchBuilder::new("a", vec![1.0; 4], 3)).await.is_ok());
    assert_eq!(code(ja.search(SearchBuilder::new("b", vec![1.0; 4], 3)).await), Code::PermissionDenied);
    assert_eq!(code(ja.upsert("b", points(0)).await), Code::PermissionDenied);
    assert_eq!(code(ja.get("b", vec![1u64.into()], true, false).await), Code::PermissionDenied);
    assert_eq!(code(ja.count("b", None).await), Code::PermissionDenied);
    assert_eq!(code(ja.search_batch("b", vec![SearchBuilder::new("b", vec![1.0; 4], 3)]).await), Code::PermissionDenied);
    let listed: Vec<String> = ja.list_collections().await.unwrap().into_iter().filter_map(|c| c.config.map(|c| c.name)).collect();
    assert_eq!(listed, vec!["a".to_string()], "a scoped token lists only its collections");
    // Over a search stream too, message by message.
    let (tx, mut rxs) = ja.search_stream().await.unwrap();
    tx.send(1, SearchBuilder::new("b", vec![1.0; 4], 3)).await.unwrap();
    let (_, r) = rxs.next().await.unwrap().unwrap();
    assert!(matches!(r, Err(ClientError::Status(ref s)) if s.code() == Code::PermissionDenied), "{r:?}");
    // Expired, wrongly signed, or unsigned-algorithm tokens: refused.
    let expired = jwt(SECRET, serde_json::json!({"exp": now() - 60, "role": "admin"}));
    assert_eq!(code(client(&addr, Some(&expired)).await.list_collections().await), Code::Unauthenticated);
    let forged = jwt("another-secret-0123456789abcdef012345", serde_json::json!({"exp": now() + 300, "role": "admin"}));
    assert_eq!(code(client(&addr, Some(&forged)).await.list_collections().await), Code::Unauthenticated);

    // Write by filter: audited.
    let f = shoal_client::filter::from_json(&serde_json::json!({"must": [{"key": "k", "match": 3}]})).unwrap();
    rw.delete_filter("a", f).await.unwrap();

    // A rotated key works without a restart; the removed one stops.
    let new_admin = "admin-key-ROTATED-0123456789abcdef";
    write_keys(&keys, &format!("read-write {RW} writer\nadmin {new_admin} ops-2\n"));
    let rotated = client(&addr, Some(new_admin)).await;
    eventually("the rotated admin key working", Duration::from_secs(15), || async { rotated.list_collections().await.is_ok() }).await;
    assert_eq!(code(client(&addr, Some(RO)).await.list_collections().await), Code::Unauthenticated, "a removed key is refused");

    // A rotated certificate is served to new connections without a restart.
    let pki = shoal_tests::tls::pki();
    let before = served_cert(&addr, &pki.ca_file()).await;
    pki.issue("coordinator", Some(&Identity::Coordinator));
    eventually("the new coordinator certificate being served", Duration::from_secs(15), || async { served_cert(&addr, &pki.ca_file()).await != before }).await;
    assert!(client(&addr, Some(new_admin)).await.list_collections().await.is_ok(), "clients trust the rotated certificate (same CA)");

    // The audit log, read back: who, what, when, from where, the result.
    admin.delete_collection("b").await.expect_err("the old admin key is gone");
    rotated.delete_collection("b").await.unwrap();
    // A thread of its own writes the lines: wait for the last one.
    let read = || -> Vec<serde_json::Value> { std::fs::read_to_string(&audit).unwrap().lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect() };
    eventually("the last audit line", Duration::from_secs(10), || async { read().iter().any(|l| l["action"] == "/shoal.v1.Collections/Delete" && l["result"] == "OK") }).await;
    let lines = read();
    let find = |action: &str, who: &str, result: &str| lines.iter().find(|l| l["action"] == action && l["who"] == who && l["result"] == result).cloned();
    let created = find("/shoal.v1.Collections/Create", "api-key:ops", "OK").expect("collection creation audited");
    assert_eq!(created["collection"], "a");
    assert!(created["from"].as_str().unwrap().starts_with("127.0.0.1:"), "{created}");
    assert!(created["ts"].as_str().unwrap().starts_with("20"), "{created}");
    assert!(find("/shoal.v1.Collections/Delete", "api-key:ops-2", "OK").is_some_and(|l| l["collection"] == "b"));
    assert!(find("/shoal.v1.Points/Delete", "api-key:writer", "OK").is_some_and(|l| l["detail"].as_str().unwrap().contains("delete by filter")));
    assert!(find("/shoal.v1.Points/Upsert", "api-key:reader", "PERMISSION_DENIED").is_some(), "denials are audited");
    assert!(find("/shoal.v1.Collections/List", "-", "UNAUTHENTICATED").is_some(), "missing credentials are audited");
    assert!(find("/shoal.v1.Points/Search", "jwt:app-a", "PERMISSION_DENIED").is_some_and(|l| l["collection"] == "b"));
    assert!(!std::fs::read_to_string(&audit).unwrap().contains(RW), "no secret in the audit log");
}

/// The internal plane: outsiders (no certificate, or one from another CA)
/// can do nothing; insiders only what their identity allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_internal_plane_takes_only_cluster_certificates_and_checks_who_speaks() {
    shoal_tests::tls::force_on();
    let pki = shoal_tests::tls::pki();
    let cluster = ProcCluster::start(3).await.unwrap();
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    shoal_tests::workload::create(&cluster.coordinator.addr, "a", 3, 1).await;

    // A certificate for node 2 from another CA, and no certificate at all.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = DevCa::new("rogue CA").unwrap().issue(Some(&Identity::Node(2)), &["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(rogue_dir.path().join("node.pem"), &rogue.cert_pem).unwrap();
    write_private(&rogue_dir.path().join("node.key"), &rogue.key_pem).unwrap();
    let rogue_files = TlsFiles { cert: rogue_dir.path().join("node.pem"), key: rogue_dir.path().join("node.key"), ca: pki.ca_file(), public_client_ca: None };
    for a in &addrs {
        // The handshake fails, so not even a channel opens (or every call
        // on it fails).
        for (who, files) in [("another CA", Some(rogue_files.clone())), ("no TLS", None)] {
            if let Some(ch) = channel_as(a, files).await {
                for (call, r) in internal_calls(&ch).await {
                    assert!(r.is_err(), "{who}: {call} at {a} went through");
                }
            }
        }
        // TLS without a client certificate: refused at the handshake.
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(pki.ca_file()).unwrap()));
        let ep = tonic::transport::Endpoint::from_shared(format!("https://{a}")).unwrap().tls_config(tls).unwrap();
        if let Ok(ch) = ep.connect().await {
            for (call, r) in internal_calls(&ch).await {
                assert!(r.is_err(), "no client certificate: {call} at {a} went through");
            }
        }
    }
    // The control: the operator's certificate reads the map.
    let op = shoal_tests::tls::channel_with(&addrs[0], Duration::from_secs(5)).await.unwrap();
    let map = MetaClient::new(op.clone()).get_cluster_map(GetClusterMapRequest {}).await.unwrap().into_inner();
    assert_eq!(map.nodes.len(), 3);

    // A process with a certificate from another CA cannot join.
    let n4 = DevCa::new("rogue 2").unwrap().issue(Some(&Identity::Node(4)), &["127.0.0.1"]).unwrap();
    std::fs::write(rogue_dir.path().join("n4.pem"), &n4.cert_pem).unwrap();
    write_private(&rogue_dir.path().join("n4.key"), &n4.key_pem).unwrap();
    let args: Vec<String> = vec![
        "node".into(),
        "--node-id".into(),
        "4".into(),
        "--data-dir".into(),
        rogue_dir.path().join("n4").display().to_string(),
        "--internal-listen".into(),
        "127.0.0.1:0".into(),
        "--join".into(),
        addrs.join(","),
        "--tls-cert".into(),
        rogue_dir.path().join("n4.pem").display().to_string(),
        "--tls-key".into(),
        rogue_dir.path().join("n4.key").display().to_string(),
        "--tls-ca".into(),
        pki.ca_file().display().to_string(),
    ];
    let (mut n4, _) = shoal_tests::procs::spawn_ready(&args, "shoal node ready: internal=", "warn").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let map = MetaClient::new(op.clone()).get_cluster_map(GetClusterMapRequest {}).await.unwrap().into_inner();
    assert_eq!(map.nodes.iter().map(|n| n.id).collect::<BTreeSet<_>>(), BTreeSet::from([1, 2, 3]), "the rogue node joined");
    let _ = n4.kill();
    let _ = n4.wait();

    // Node 2's own valid certificate.
    let n2 = TlsContext::load(pki.files("node-2")).unwrap();
    let as_n2 = |a: String| {
        let n2 = n2.clone();
        async move { shoal_common::tls::connect(&a, Some(n2), Expect::Node, Duration::from_secs(2)).await.unwrap() }
    };
    let n3_addr = map.nodes.iter().find(|n| n.id == 3).unwrap().address.clone();
    // It cannot register node 3 at another address, directly or as if
    // forwarding (the leader finds node 2's certificate at that address).
    for a in &addrs {
        let mut m = MetaClient::new(as_n2(a.clone()).await);
        let s = m.register_node(RegisterNodeRequest { node_id: 3, address: addrs[1].clone(), incarnation: 1 }).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        let mut fwd = tonic::Request::new(RegisterNodeRequest { node_id: 3, address: addrs[1].clone(), incarnation: 1 });
        fwd.metadata_mut().insert(shoal_proto::FORWARDED_KEY, "1".parse().unwrap());
        let r = m.register_node(fwd).await;
        assert!(r.is_err(), "a forged forwarded registration went through at {a}");
    }
    let map = MetaClient::new(op.clone()).get_cluster_map(GetClusterMapRequest {}).await.unwrap().into_inner();
    assert_eq!(map.nodes.iter().find(|n| n.id == 3).unwrap().address, n3_addr, "node 3's address moved");

    // It cannot speak for another node, nor lead a group it is not in.
    let mut r3 = RaftClient::new(as_n2(n3_addr.clone()).await);
    let s = r3.append_entries(raft_req("meta", &append(1 << 40, 1))).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let coll = map.collections.iter().find(|c| c.config.as_ref().is_some_and(|c| c.name == "a")).unwrap();
    let outside = coll.shards.iter().find(|s| !s.replicas.contains(&2)).expect("a shard without node 2");
    let group = shoal_node::engine::group_name("a", outside.shard_id);
    let holder = map.nodes.iter().find(|n| n.id == outside.replicas[0]).unwrap().address.clone();
    let mut rh = RaftClient::new(as_n2(holder).await);
    let s = rh.append_entries(raft_req(&group, &append(1 << 40, 2))).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("not a member"), "{s:?}");
    let vote = openraft::raft::VoteRequest::<u64> { vote: openraft::Vote::new(1 << 40, 2), last_log_id: None };
    assert_eq!(rh.vote(raft_req(&group, &vote)).await.unwrap_err().code(), Code::PermissionDenied);

    // A coordinator's certificate reaches shards and the map, never Raft,
    // registrations or backups.
    let co = TlsContext::load(pki.files("coordinator")).unwrap();
    let ch = shoal_common::tls::connect(&addrs[0], Some(co), Expect::Node, Duration::from_secs(2)).await.unwrap();
    assert!(MetaClient::new(ch.clone()).get_cluster_map(GetClusterMapRequest {}).await.is_ok());
    for (call, r) in internal_calls(&ch).await {
        if matches!(call, "RegisterNode" | "AppendEntries" | "InstallSnapshot" | "ReadBackup") {
            assert_eq!(r, Err(Code::PermissionDenied), "coordinator: {call}");
        }
    }
    // The cluster still works.
    let c = shoal_tests::tls::client(&cluster.coordinator.addr).await;
    c.upsert("a", (0..20u64).map(|i| Point::new(i, vec![i as f32; shoal_tests::workload::DIM]).payload(serde_json::json!({"i": i, "s": "x"}))).collect()).await.unwrap();
    assert_eq!(c.search(SearchBuilder::new("a", vec![1.0; shoal_tests::workload::DIM], 5)).await.unwrap().len(), 5);
    drop(cluster);
}
