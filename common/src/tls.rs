//! TLS for every Shoal socket, through rustls (ring) and tonic's TLS
//! support, with certificates reloaded when their files change.
//!
//! One [`TlsContext`] per process is built from three PEM files (the
//! process's certificate chain, its key, and the cluster CA) and hands out
//! the rustls configurations every server and client of the process uses:
//!
//! - [`Plane::Internal`]: the nodes' internal API. Mutual TLS: a client
//!   must present a certificate from the cluster CA, and its identity
//!   ([`crate::identity`]) is what the internal services authorize.
//! - [`Plane::Public`]: the coordinators' public API. Clients verify the
//!   server; client certificates are asked for only when a public client
//!   CA is configured ([`TlsFiles::public_client_ca`]), and then required.
//! - [`Plane::Metrics`]: `/metrics` and the probes: server TLS only.
//! - [`TlsContext::client`]: outgoing connections (node to node,
//!   coordinator to node, CLI to node) present the process's certificate and
//!   trust the cluster CA only.
//!
//! Files are checked every few seconds ([`TlsContext::watch`]); a changed
//! certificate, key or CA takes effect for every new connection, so
//! cert-manager's rotation needs no restart. A file that fails to load
//! keeps the last good configuration and is reported.
//!
//! [`incoming`] accepts connections for a tonic or axum server (plain TCP
//! or TLS, handshakes off the accept loop, each under a deadline) and
//! [`Connector`] makes them for tonic channels: the only two places a Shoal
//! process opens a socket.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;

use crate::identity::Identity;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once per server; the accept loop waits
/// for one to finish beyond this (a flood of stalled handshakes holds at
/// most this many sockets and sessions).
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// How often certificate files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// TCP keepalive on every connection, accepted or made.
pub const TCP_KEEPALIVE: Duration = shoal_proto::transport::TCP_KEEPALIVE;
/// Largest certificate, key or CA file read (a PEM bundle).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {why}")]
    Pem { path: PathBuf, why: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The PEM files of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster CA: internal peers must chain to it.
    pub ca: PathBuf,
    /// CA of client certificates on the public API. When set, public
    /// clients must present one; when not, none is asked for.
    pub public_client_ca: Option<PathBuf>,
}

/// Which server a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Internal,
    Public,
    Metrics,
}

struct Loaded {
    stamp: crate::reload::Stamp,
    internal: Arc<ServerConfig>,
    public: Arc<ServerConfig>,
    metrics: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// The identity our own certificate names.
    identity: Option<Identity>,
}

/// A process's TLS configurations, reloaded when the files change.
pub struct TlsContext {
    files: TlsFiles,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext").field("files", &self.files).finish()
    }
}

/// ring, the provider tonic's `tls-ring` feature builds (aws-lc-rs would
/// add a cmake/NASM build to every fresh CI machine); ring's deprecation
/// concerns post-quantum key exchange, which no Shoal client asks for yet.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let err = |source| TlsError::Read { path: path.to_path_buf(), source };
    let mut buf = Vec::new();
    std::fs::File::open(path).map_err(err)?.take(MAX_PEM_BYTES + 1).read_to_end(&mut buf).map_err(err)?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::Pem { path: path.to_path_buf(), why: format!("larger than {MAX_PEM_BYTES} bytes") });
    }
    Ok(buf)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem { path: path.into(), why: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.into(), why: "no certificate in the file".into() });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::Pem { path: path.into(), why: format!("no usable private key: {e}") })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|e| TlsError::Pem { path: path.into(), why: format!("not a CA certificate: {e}") })?;
    }
    Ok(Arc::new(store))
}

fn stamp(files: &TlsFiles) -> crate::reload::Stamp {
    crate::reload::stamp(&[Some(&files.cert), Some(&files.key), Some(&files.ca), files.public_client_ca.as_deref()])
}

/// HTTP/2 only: every Shoal endpoint speaks gRPC (and the metrics endpoint
/// HTTP/1.1 as well).
fn alpn(h1: bool) -> Vec<Vec<u8>> {
    if h1 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec()]
    }
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let stamp = stamp(files);
    let chain = certs(&files.cert)?;
    let key = key(&files.key)?;
    let ca = roots(&files.ca)?;
    let identity = crate::identity::from_cert(&chain[0]);
    let cfg = |e: rustls::Error| TlsError::Config(e.to_string());
    let server = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, h1: bool| -> Result<Arc<ServerConfig>, TlsError> {
        let b = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(cfg)?;
        let b = match verifier {
            Some(v) => b.with_client_cert_verifier(v),
            None => b.with_no_client_auth(),
        };
        let mut c = b.with_single_cert(chain.clone(), key.clone_key()).map_err(cfg)?;
        c.alpn_protocols = alpn(h1);
        Ok(Arc::new(c))
    };
    let verifier = |roots: Arc<RootCertStore>| WebPkiClientVerifier::builder_with_provider(roots, provider()).build().map_err(|e| TlsError::Config(e.to_string()));
    let internal = server(Some(verifier(ca.clone())?), false)?;
    let public = match &files.public_client_ca {
        Some(p) => server(Some(verifier(roots(p)?)?), false)?,
        None => server(None, false)?,
    };
    let metrics = server(None, true)?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(ca, provider()).build().map_err(|e| TlsError::Config(e.to_string()))?;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(cfg)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(IdentityVerifier(verifier)))
        .with_client_auth_cert(chain.clone(), key)
        .map_err(cfg)?;
    client.alpn_protocols = alpn(false);
    Ok(Loaded { stamp, internal, public, metrics, client: Arc::new(client), identity })
}

impl TlsContext {
    /// Loads the files; an error names the file at fault.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let loaded = load(&files)?;
        Ok(Arc::new(TlsContext { files, loaded: RwLock::new(loaded) }))
    }

    /// The server configuration for `plane` (the latest files).
    pub fn server(&self, plane: Plane) -> Arc<ServerConfig> {
        let l = self.loaded.read();
        match plane {
            Plane::Internal => l.internal.clone(),
            Plane::Public => l.public.clone(),
            Plane::Metrics => l.metrics.clone(),
        }
    }

    /// The configuration of outgoing connections.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.loaded.read().client.clone()
    }

    /// The identity this process's certificate names.
    pub fn identity(&self) -> Option<Identity> {
        self.loaded.read().identity.clone()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Checks the files every `every` for as long as the process runs.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        crate::reload::watch(self, every)
    }
}

impl crate::reload::Reloadable for TlsContext {
    const WHAT: &'static str = "tls";

    fn reload_if_changed(&self) -> Result<bool, String> {
        if stamp(&self.files) == self.loaded.read().stamp {
            return Ok(false);
        }
        let loaded = load(&self.files).map_err(|e| e.to_string())?;
        *self.loaded.write() = loaded;
        Ok(true)
    }
}

/// Verifies a server's certificate against the cluster CA (chain,
/// validity, usage, signatures) but not against the host name dialled:
/// inside the cluster a peer is who its certificate's Shoal identity says
/// ([`Expect`] checks it after the handshake), wherever it is reached
/// (pod IPs, loopback for probes, several DNS names). So node certificates
/// need only their `spiffe://shoal/...` URI. The SDK and `shoalctl` check
/// host names as usual.
#[derive(Debug)]
struct IdentityVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], server_name: &ServerName<'_>, ocsp: &[u8], now: rustls_pki_types::UnixTime) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What a server knows about the peer of a connection: tonic puts it in
/// every request's extensions ([`peer`]).
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The identity the peer's verified certificate names, if any.
    pub identity: Option<Identity>,
}

/// The connection's peer, from a request's extensions.
pub fn peer(ext: &http::Extensions) -> Option<&PeerInfo> {
    ext.get::<PeerInfo>()
}

/// An accepted connection: plain TCP or TLS.
pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for ServerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            ServerStream::Plain(s) => PeerInfo { remote_addr: s.peer_addr().ok(), tls: false, identity: None },
            ServerStream::Tls(s) => {
                let (tcp, session) = s.get_ref();
                let identity = session.peer_certificates().and_then(|c| c.first()).and_then(crate::identity::from_cert);
                PeerInfo { remote_addr: tcp.peer_addr().ok(), tls: true, identity }
            }
        }
    }
}

macro_rules! delegate_io {
    ($t:ident) => {
        impl AsyncRead for $t {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $t::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                }
            }
        }
        impl AsyncWrite for $t {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $t::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                }
            }
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $t::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
                }
            }
            fn is_write_vectored(&self) -> bool {
                match self {
                    $t::Plain(s) => s.is_write_vectored(),
                    $t::Tls(s) => s.is_write_vectored(),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_flush(cx),
                    $t::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $t::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $t::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                }
            }
        }
    };
}
delegate_io!(ServerStream);

/// A connection made by [`Connector`].
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}
delegate_io!(ClientStream);

fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
}

/// Accepted connections of one server, ready for tonic's
/// `serve_with_incoming_shutdown` (or [`axum_listener`]). With `tls`, each
/// handshake runs in its own task under [`HANDSHAKE_TIMEOUT`], so a client
/// that stalls its handshake holds up no one else; failed handshakes are
/// logged at debug level and counted.
pub fn incoming(listener: TcpListener, tls: Option<(Arc<TlsContext>, Plane)>) -> tokio_stream::wrappers::ReceiverStream<io::Result<ServerStream>> {
    let (tx, rx) = mpsc::channel(64);
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = pending.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            };
            let (tcp, addr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait, not spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            tune(&tcp);
            match &tls {
                None => {
                    drop(permit);
                    if tx.send(Ok(ServerStream::Plain(tcp))).await.is_err() {
                        return;
                    }
                }
                Some((ctx, plane)) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(ctx.server(*plane));
                    let tx = tx.clone();
                    let plane = *plane;
                    tokio::spawn(async move {
                        let _permit = permit;
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => {
                                let _ = tx.send(Ok(ServerStream::Tls(Box::new(s)))).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%addr, ?plane, error = %e, "TLS handshake refused");
                                crate::telemetry::TLS_HANDSHAKE_FAILURES.with_label_values(&["refused"]).inc();
                            }
                            Err(_) => {
                                tracing::debug!(%addr, ?plane, "TLS handshake timed out");
                                crate::telemetry::TLS_HANDSHAKE_FAILURES.with_label_values(&["timeout"]).inc();
                            }
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The connections of [`incoming`] as an axum listener (the metrics
/// endpoint).
pub struct AxumListener {
    rx: tokio_stream::wrappers::ReceiverStream<io::Result<ServerStream>>,
    local: SocketAddr,
}

pub fn axum_listener(listener: TcpListener, tls: Option<Arc<TlsContext>>) -> io::Result<AxumListener> {
    let local = listener.local_addr()?;
    Ok(AxumListener { rx: incoming(listener, tls.map(|t| (t, Plane::Metrics))), local })
}

impl axum::serve::Listener for AxumListener {
    type Io = ServerStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ServerStream, SocketAddr) {
        use tokio_stream::StreamExt;
        loop {
            match self.rx.next().await {
                Some(Ok(s)) => {
                    let addr = s.connect_info().remote_addr.unwrap_or(self.local);
                    return (s, addr);
                }
                Some(Err(_)) => continue,
                // The accept loop ended: nothing more will come.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Which server identity an outgoing TLS connection must meet, beyond a
/// certificate from the cluster CA that names the host dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Any (the public API of a coordinator).
    Any,
    /// A data node's certificate (the internal plane): a coordinator then
    /// takes cluster maps from nodes only.
    Node,
    /// The certificate of this node (a registration's new address must be
    /// served by the node registering it).
    NodeId(u64),
}

/// Makes the connections of a tonic channel: plain TCP, or TLS with the
/// process's certificate when `tls` is set. tonic's own TLS connector is
/// not used because its configuration cannot change after the channel is
/// built: this one takes the latest certificates for every new
/// connection. The channel's URI stays `http://` (tonic refuses `https`
/// without its own connector); the TLS is ours.
#[derive(Clone)]
pub struct Connector {
    tls: Option<Arc<TlsContext>>,
    expect: Expect,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(tls: Option<Arc<TlsContext>>, expect: Expect, connect_timeout: Duration) -> Self {
        Connector { tls, expect, connect_timeout }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<ClientStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("no host in the address")?.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
            let tcp = tokio::time::timeout(me.connect_timeout, TcpStream::connect((host.as_str(), port))).await.map_err(|_| format!("connecting to {host}:{port} timed out"))??;
            tune(&tcp);
            let Some(tls) = &me.tls else { return Ok(hyper_util::rt::TokioIo::new(ClientStream::Plain(tcp))) };
            // Only the SNI: the certificate is checked against the CA and
            // the identity, not the name ([`IdentityVerifier`]).
            let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?;
            let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_rustls::TlsConnector::from(tls.client()).connect(name, tcp)).await.map_err(|_| format!("TLS handshake with {host}:{port} timed out"))??;
            let id = s.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(crate::identity::from_cert);
            match me.expect {
                Expect::Any => {}
                Expect::Node if matches!(id, Some(Identity::Node(_))) => {}
                Expect::NodeId(n) if id == Some(Identity::Node(n)) => {}
                Expect::Node => return Err(format!("{host}:{port} presented a certificate that names no Shoal node ({id:?})").into()),
                Expect::NodeId(n) => return Err(format!("{host}:{port} presented a certificate for {id:?}, not node {n}").into()),
            }
            Ok(hyper_util::rt::TokioIo::new(ClientStream::Tls(Box::new(s))))
        })
    }
}

/// `http://addr` for a tonic endpoint (`addr` is `host:port` or a URI;
/// `https://` is accepted and means the same, since TLS comes from the
/// context).
pub fn endpoint_uri(addr: &str) -> String {
    match addr.split_once("://") {
        Some((_, rest)) => format!("http://{rest}"),
        None => format!("http://{addr}"),
    }
}

/// A lazily connected channel to `addr` with Shoal's connector.
pub fn lazy_channel(endpoint: tonic::transport::Endpoint, tls: Option<Arc<TlsContext>>, expect: Expect, connect_timeout: Duration) -> tonic::transport::Channel {
    endpoint.connect_with_connector_lazy(Connector::new(tls, expect, connect_timeout))
}

/// A channel to `addr`, connected now.
pub async fn connect(addr: &str, tls: Option<Arc<TlsContext>>, expect: Expect, connect_timeout: Duration) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let ep = tonic::transport::Endpoint::from_shared(endpoint_uri(addr))?.connect_timeout(connect_timeout);
    ep.connect_with_connector(Connector::new(tls, expect, connect_timeout)).await
}
