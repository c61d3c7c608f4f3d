//! TLS for the process harness. With `SHOAL_TEST_TLS=1` (or after
//! [`force_on`]) every [`crate::procs::ProcCluster`] runs with TLS: each
//! node with its own certificate (`spiffe://shoal/node/<id>`), the
//! coordinator with a coordinator certificate, mutual TLS between them,
//! and the harness's own calls ([`channel`], [`client`]) made with the
//! operator certificate. One development CA serves the whole test process.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shoal_common::identity::Identity;
use shoal_common::pki::{write_private, DevCa};
use shoal_common::tls::{Expect, TlsContext, TlsFiles};
use tonic::transport::Channel;

/// Node certificates issued (ids 1..=MAX_NODE_CERTS).
pub const MAX_NODE_CERTS: u64 = 16;

static FORCED: AtomicBool = AtomicBool::new(false);
static AUTH: AtomicBool = AtomicBool::new(false);

/// The admin API key of harness coordinators with authentication on.
pub const ADMIN_KEY: &str = "harness-admin-key-0123456789abcdef";

/// Whether harness coordinators require API keys (`SHOAL_TEST_AUTH=1` or
/// after [`force_auth`]); the harness's calls then carry [`ADMIN_KEY`].
pub fn auth_enabled() -> bool {
    AUTH.load(Ordering::Relaxed) || std::env::var("SHOAL_TEST_AUTH").is_ok_and(|v| v == "1")
}

/// Turns API keys on for every coordinator this process starts from now on.
pub fn force_auth() {
    AUTH.store(true, Ordering::Relaxed);
}

/// The credentials of the harness's calls.
pub fn credentials() -> shoal_client::Credentials {
    if auth_enabled() {
        shoal_client::Credentials::bearer(ADMIN_KEY).expect("ASCII key")
    } else {
        shoal_client::Credentials::default()
    }
}

/// Whether harness clusters run with TLS.
pub fn enabled() -> bool {
    FORCED.load(Ordering::Relaxed) || std::env::var("SHOAL_TEST_TLS").is_ok_and(|v| v == "1")
}

/// Turns TLS on for every cluster this test process starts from now on.
pub fn force_on() {
    FORCED.store(true, Ordering::Relaxed);
}

/// The test process's CA and the files it issued.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: DevCa,
    operator: OnceLock<Arc<TlsContext>>,
}

impl TestPki {
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `--tls-*` flags for a process holding the certificate `name`.
    pub fn flags(&self, name: &str) -> Vec<String> {
        vec!["--tls-cert".into(), self.dir.join(format!("{name}.pem")).display().to_string(), "--tls-key".into(), self.dir.join(format!("{name}.key")).display().to_string(), "--tls-ca".into(), self.ca_file().display().to_string()]
    }

    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles { cert: self.dir.join(format!("{name}.pem")), key: self.dir.join(format!("{name}.key")), ca: self.ca_file(), public_client_ca: None }
    }

    /// Issues (or re-issues: a rotation) the certificate `name` for
    /// `identity`, valid for localhost and 127.0.0.1.
    pub fn issue(&self, name: &str, identity: Option<&Identity>) {
        let c = self.ca.issue(identity, &["localhost", "127.0.0.1"]).expect("issue a certificate");
        std::fs::write(self.dir.join(format!("{name}.pem")), c.cert_pem).expect("write certificate");
        write_private(&self.dir.join(format!("{name}.key")), &c.key_pem).expect("write key");
    }

    /// The operator's TLS context (the harness's own calls).
    pub fn operator(&self) -> Arc<TlsContext> {
        self.operator.get_or_init(|| TlsContext::load(self.files("operator")).expect("operator certificate")).clone()
    }
}

/// A new CA in a directory of its own, with certificates for nodes
/// 1..=[`MAX_NODE_CERTS`] (`node-N`), `coordinator` and `operator`.
pub fn new_pki() -> TestPki {
    let dir = tempfile::Builder::new().prefix("shoal-pki").tempdir().expect("temp dir").keep();
    let ca = DevCa::new("Shoal test CA").expect("CA");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write CA");
    let pki = TestPki { dir, ca, operator: OnceLock::new() };
    for id in 1..=MAX_NODE_CERTS {
        pki.issue(&format!("node-{id}"), Some(&Identity::Node(id)));
    }
    pki.issue("coordinator", Some(&Identity::Coordinator));
    pki.issue("operator", Some(&Identity::Operator));
    write_private(&pki.dir.join("api-keys"), &format!("admin {ADMIN_KEY} harness\n")).expect("write keys");
    pki
}

/// The test process's PKI.
pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(new_pki)
}

/// Flags for node `id` (empty with TLS off).
pub fn node_flags(id: u64) -> Vec<String> {
    if !enabled() {
        return vec![];
    }
    assert!(id <= MAX_NODE_CERTS, "the test PKI has certificates for nodes 1..={MAX_NODE_CERTS}");
    pki().flags(&format!("node-{id}"))
}

/// Flags for a coordinator (empty with TLS and authentication off).
pub fn coordinator_flags() -> Vec<String> {
    let mut f = if enabled() { pki().flags("coordinator") } else { vec![] };
    if auth_enabled() {
        f.extend(["--api-keys-file".to_string(), pki().dir.join("api-keys").display().to_string()]);
    }
    f
}

/// `--tls-*` flags for a `shoal` command run as the operator (`shoal
/// handoff`), empty with TLS off.
pub fn operator_flags() -> Vec<String> {
    if enabled() {
        pki().flags("operator")
    } else {
        vec![]
    }
}

/// The operator's context with TLS on.
pub fn operator() -> Option<Arc<TlsContext>> {
    enabled().then(|| pki().operator())
}

/// A channel to any Shoal endpoint at `addr` (TLS with the operator
/// certificate when on, the admin key when authentication is on), with a
/// per-call `timeout`.
pub async fn channel_with(addr: &str, timeout: Duration) -> anyhow::Result<shoal_client::AuthChannel> {
    let ep = tonic::transport::Endpoint::from_shared(shoal_common::tls::endpoint_uri(addr))?.connect_timeout(Duration::from_secs(1)).timeout(timeout);
    let ch: Channel = ep.connect_with_connector(shoal_common::tls::Connector::new(operator(), Expect::Any, Duration::from_secs(1))).await?;
    Ok(tonic::service::interceptor::InterceptedService::new(ch, credentials()))
}

/// The SDK's options for the harness (the CA with TLS on).
pub fn client_options() -> shoal_client::ConnectOptions {
    let mut o = shoal_client::ConnectOptions { credentials: credentials(), ..Default::default() };
    if enabled() {
        o.ca_pem = Some(std::fs::read(pki().ca_file()).expect("CA file"));
    }
    o
}

/// An SDK client of the coordinator at `addr`.
pub async fn client(addr: &str) -> shoal_client::Client {
    shoal_client::Client::connect_with(addr, &client_options()).await.expect("connect")
}

/// TLS and API keys for containers (the image runs as uid 65532): a
/// directory in the Secrets' layout (`--tls-dir`), issued by the test
/// process's CA, with keys readable by anyone (a test-only directory) and
/// the harness's admin key. Turns TLS and authentication on for the
/// harness.
pub fn container_dir(nodes: u64) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    force_on();
    force_auth();
    let dir = tempfile::Builder::new().prefix("shoal-ctls").tempdir().expect("temp dir").keep();
    shoal_common::pki::write_cluster_pki(&pki().ca, &dir, nodes, &["localhost", "127.0.0.1"], 0o644).expect("write certificates");
    // Overwritten in place: the file keeps its 0644.
    std::fs::write(dir.join("auth").join("api-keys"), format!("admin {ADMIN_KEY} harness\n")).expect("write keys");
    // Subdirectories are 0755 already; the temporary root is 0700.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}
