//! A small certificate authority for development and tests
//! (`shoal certs`, `shoal dev` off loopback, the TLS test clusters):
//! ECDSA P-256 keys, certificates naming a Shoal [`Identity`] plus the
//! host names and addresses they are served at. Production clusters use
//! their own CA (cert-manager, docs/security.md); nothing here is needed
//! for that.
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};

use crate::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// A CA held in memory: it issues leaf certificates.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key, PEM encoded.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(DevCa { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `identity` (none: a certificate of this CA that
    /// names no Shoal identity), valid as server and client, for `hosts`
    /// (DNS names or IP addresses).
    pub fn issue(&self, identity: Option<&Identity>, hosts: &[&str]) -> Result<Issued, PkiError> {
        let mut p = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
        // `new` takes every name as DNS; addresses become IP SANs.
        p.subject_alt_names = hosts.iter().map(|h| h.parse::<std::net::IpAddr>().map(SanType::IpAddress).or_else(|_| Ok::<_, rcgen::Error>(SanType::DnsName(h.to_string().try_into()?)))).collect::<Result<_, _>>()?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, identity.map_or("shoal".to_string(), |i| i.to_string()));
        if let Some(id) = identity {
            p.subject_alt_names.push(SanType::URI(id.uri().try_into()?));
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(365);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Writes `contents` to `path` readable by the owner only.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&tmp).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Writes a CA and certificates in the layout of Kubernetes TLS Secrets
/// (what `--tls-dir` reads and the manifests mount):
///
/// ```text
/// DIR/ca.crt
/// DIR/node-N/{tls.crt,tls.key,ca.crt}     N = 1..=nodes
/// DIR/coordinator/{tls.crt,tls.key,ca.crt}
/// DIR/operator/{tls.crt,tls.key,ca.crt}
/// DIR/auth/api-keys                        one admin key
/// ```
///
/// Every certificate is valid for `hosts` as well as its identity. Keys are
/// written with `key_mode` (0o600 normally). Returns the admin API key.
pub fn write_cluster_pki(ca: &DevCa, dir: &Path, nodes: u64, hosts: &[&str], key_mode: u32) -> Result<String, PkiError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PkiError::Write { path, source }
    };
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), PkiError> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(werr(parent))?;
        }
        write_private(path, text)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(werr(path))
    };
    let ca_pem = ca.cert_pem();
    write(&dir.join("ca.crt"), &ca_pem, 0o644)?;
    let mut ids: Vec<(String, Identity)> = (1..=nodes).map(|n| (format!("node-{n}"), Identity::Node(n))).collect();
    ids.push(("coordinator".into(), Identity::Coordinator));
    ids.push(("operator".into(), Identity::Operator));
    for (name, id) in ids {
        let issued = ca.issue(Some(&id), hosts)?;
        let d = dir.join(&name);
        write(&d.join("tls.crt"), &issued.cert_pem, 0o644)?;
        write(&d.join("tls.key"), &issued.key_pem, key_mode)?;
        write(&d.join("ca.crt"), &ca_pem, 0o644)?;
    }
    let key = format!("sk-{:032x}", rand::random::<u128>());
    write(&dir.join("auth").join("api-keys"), &format!("admin {key} admin\n"), key_mode)?;
    Ok(key)
}
