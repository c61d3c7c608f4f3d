//! The security flags of every `shoal` command, and what they build: the
//! TLS context, the authenticator and the audit log
//! (`shoal_common::{tls, auth, audit}`), plus the `shoal dev` defaults
//! and the `shoal certs` development CA.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use shoal_common::audit::{AuditLog, AuditTarget};
use shoal_common::auth::{AuthConfig, Authenticator};
use shoal_common::pki::DevCa;
use shoal_common::tls::{TlsContext, TlsFiles};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct SecurityArgs {
    /// Directory in the layout of Kubernetes TLS Secrets (`shoal certs`
    /// writes one): a node reads `DIR/node-<id>/{tls.crt,tls.key,ca.crt}`,
    /// a coordinator `DIR/{tls.crt,tls.key,ca.crt}`. Instead of the three
    /// files below.
    #[arg(long, env = "SHOAL_TLS_DIR", global = true)]
    pub tls_dir: Option<PathBuf>,
    /// This process's certificate chain (PEM). With --tls-key and
    /// --tls-ca it turns TLS on: mutual TLS on the internal plane, TLS on
    /// the public API and the metrics endpoint. Reloaded when it changes.
    #[arg(long, env = "SHOAL_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "SHOAL_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): internal peers must present a certificate
    /// from it.
    #[arg(long, env = "SHOAL_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// CA of client certificates on the public API: when set, public
    /// clients must present one.
    #[arg(long, env = "SHOAL_TLS_PUBLIC_CLIENT_CA", global = true)]
    pub tls_public_client_ca: Option<PathBuf>,
    /// API keys file: `<role> <key> [name]` per line (roles read-only,
    /// read-write, admin). Turns authentication on for the public API.
    #[arg(long, env = "SHOAL_API_KEYS_FILE", global = true)]
    pub api_keys_file: Option<PathBuf>,
    /// HS256 secret for JWTs (at least 32 bytes).
    #[arg(long, env = "SHOAL_JWT_SECRET_FILE", global = true)]
    pub jwt_secret_file: Option<PathBuf>,
    /// RS256 public key (PEM) for JWTs.
    #[arg(long, env = "SHOAL_JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` of JWTs (unset: not checked).
    #[arg(long, env = "SHOAL_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of JWTs (unset: not checked).
    #[arg(long, env = "SHOAL_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,
    /// Audit log: a file path, or `-` for stdout. Off when unset.
    #[arg(long, env = "SHOAL_AUDIT_LOG", global = true)]
    pub audit_log: Option<String>,
    /// Serve gRPC server reflection (off by default).
    #[arg(long, env = "SHOAL_REFLECTION", global = true)]
    pub reflection: bool,
    /// Allow serving without TLS on an address other than loopback. Anyone
    /// who reaches the port then owns the cluster: for isolated test
    /// networks only.
    #[arg(long, env = "SHOAL_INSECURE", global = true)]
    pub insecure: bool,
}

/// What a server process runs with.
#[derive(Clone, Default)]
pub struct Security {
    pub tls: Option<Arc<TlsContext>>,
    pub auth: Option<Arc<Authenticator>>,
    pub audit: Option<Arc<AuditLog>>,
    pub reflection: bool,
}

impl SecurityArgs {
    /// The files to load; `node`: this process is that node (for
    /// `--tls-dir`).
    pub fn tls_files(&self, node: Option<u64>) -> anyhow::Result<Option<TlsFiles>> {
        if let Some(dir) = &self.tls_dir {
            anyhow::ensure!(self.tls_cert.is_none() && self.tls_key.is_none() && self.tls_ca.is_none(), "give --tls-dir or --tls-cert/--tls-key/--tls-ca, not both");
            let d = match node {
                Some(id) => dir.join(format!("node-{id}")),
                None => dir.clone(),
            };
            return Ok(Some(TlsFiles { cert: d.join("tls.crt"), key: d.join("tls.key"), ca: d.join("ca.crt"), public_client_ca: self.tls_public_client_ca.clone() }));
        }
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => {
                anyhow::ensure!(self.tls_public_client_ca.is_none(), "--tls-public-client-ca needs TLS on (--tls-cert, --tls-key, --tls-ca)");
                Ok(None)
            }
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone(), public_client_ca: self.tls_public_client_ca.clone() })),
            _ => anyhow::bail!("TLS needs all three of --tls-cert, --tls-key and --tls-ca (SHOAL_TLS_CERT, SHOAL_TLS_KEY, SHOAL_TLS_CA)"),
        }
    }

    pub fn tls(&self, node: Option<u64>) -> anyhow::Result<Option<Arc<TlsContext>>> {
        Ok(match self.tls_files(node)? {
            Some(f) => Some(TlsContext::load(f).context("loading TLS certificates")?),
            None => None,
        })
    }

    fn auth_config(&self) -> AuthConfig {
        AuthConfig { api_keys_file: self.api_keys_file.clone(), jwt_secret_file: self.jwt_secret_file.clone(), jwt_public_key_file: self.jwt_public_key_file.clone(), jwt_issuer: self.jwt_issuer.clone(), jwt_audience: self.jwt_audience.clone() }
    }

    /// Builds everything; `listens` are the addresses this process serves
    /// on: without TLS, any but loopback needs --insecure.
    pub fn build(&self, listens: &[SocketAddr], role: &str, node: Option<u64>) -> anyhow::Result<Security> {
        let tls = self.tls(node)?;
        if let Some(t) = &tls {
            tracing::info!(identity = ?t.identity(), cert = %t.files().cert.display(), "TLS on");
        } else {
            let open: Vec<String> = listens.iter().filter(|a| !a.ip().is_loopback()).map(|a| a.to_string()).collect();
            if !open.is_empty() {
                anyhow::ensure!(self.insecure, "refusing to serve {role} without TLS on {} (not loopback): set --tls-cert/--tls-key/--tls-ca, or --insecure (SHOAL_INSECURE=1) on an isolated network", open.join(", "));
                tracing::warn!(addresses = ?open, "serving WITHOUT TLS on a non-loopback address (--insecure): anyone who reaches these ports owns the cluster");
            } else {
                tracing::warn!("TLS is off: serving on loopback only");
            }
        }
        let cfg = self.auth_config();
        let auth = if cfg.enabled() { Some(Authenticator::load(cfg).context("loading API keys / JWT keys")?) } else { None };
        let audit = match &self.audit_log {
            Some(t) => Some(AuditLog::open(&AuditTarget::parse(t)).with_context(|| format!("opening the audit log {t}"))?),
            None => None,
        };
        if let Some(a) = &audit {
            let _ = crate::AUDIT.set(a.clone());
        }
        Ok(Security { tls, auth, audit, reflection: self.reflection })
    }
}

/// `shoal certs`: a development CA and certificates for `nodes` nodes, a
/// coordinator and an operator in `dir` (the layout `--tls-dir` reads),
/// valid for `hosts`; returns the admin API key written beside them.
pub fn write_dev_pki(dir: &Path, nodes: u64, hosts: &[String]) -> anyhow::Result<String> {
    let ca = DevCa::new("Shoal development CA")?;
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    Ok(shoal_common::pki::write_cluster_pki(&ca, dir, nodes, &hosts, 0o600)?)
}

/// `shoal dev` off loopback with no TLS or keys configured: a throwaway CA,
/// certificates (node 1 serves both planes: the dev process is node and
/// coordinator) and an admin API key in `<data>/dev-security/`, in the
/// `--tls-dir` layout, made once and reused. Returns the arguments to run
/// with and the key.
pub fn dev_defaults(data_dir: &Path, listen: &SocketAddr) -> anyhow::Result<(SecurityArgs, String)> {
    let dir = data_dir.join("dev-security");
    let keys = dir.join("auth").join("api-keys");
    if !(dir.join("node-1").join("tls.key").exists() && keys.exists()) {
        let host = hostname();
        let listen_ip = listen.ip().to_string();
        let hosts: Vec<&str> = ["localhost", "127.0.0.1", host.as_str(), listen_ip.as_str()].into_iter().filter(|h| !h.is_empty() && *h != "0.0.0.0" && *h != "::").collect();
        shoal_common::pki::write_cluster_pki(&DevCa::new("Shoal dev throwaway CA")?, &dir, 1, &hosts, 0o600)?;
    }
    let text = std::fs::read_to_string(&keys)?;
    let api_key = text.split_whitespace().nth(1).unwrap_or_default().to_string();
    let args = SecurityArgs { tls_dir: Some(dir), api_keys_file: Some(keys), ..Default::default() };
    Ok((args, api_key))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}
