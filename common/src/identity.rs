//! Who a certificate names: a URI subject alternative name in the
//! `spiffe://shoal/` trust domain.
//!
//! | SAN | identity | may call (internal plane) |
//! | --- | --- | --- |
//! | `spiffe://shoal/node/<id>` | data node `<id>` | everything; Raft only as a member of the group, as the leader or candidate its message names; `RegisterNode` only for itself |
//! | `spiffe://shoal/coordinator` | a coordinator | `Shard/*` and the `Meta` calls a coordinator makes |
//! | `spiffe://shoal/operator` | an operator (`shoalctl`) | `Meta/*` cluster operations and backups, `Shard/*` reads |
//!
//! A certificate from the cluster CA that names none of these can open a
//! connection but call nothing. See docs/security.md.
use rustls_pki_types::CertificateDer;

/// The trust domain prefix of every Shoal identity.
pub const PREFIX: &str = "spiffe://shoal/";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Node(u64),
    Coordinator,
    Operator,
}

impl Identity {
    /// The SAN URI naming this identity.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{PREFIX}node/{id}"),
            Identity::Coordinator => format!("{PREFIX}coordinator"),
            Identity::Operator => format!("{PREFIX}operator"),
        }
    }

    /// Parses a SAN URI; `None` for anything outside the trust domain.
    pub fn parse(uri: &str) -> Option<Identity> {
        match uri.strip_prefix(PREFIX)? {
            "coordinator" => Some(Identity::Coordinator),
            "operator" => Some(Identity::Operator),
            rest => {
                let id = rest.strip_prefix("node/")?;
                // Canonical decimal only ("03" or "+3" name no node).
                if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) || (id.len() > 1 && id.starts_with('0')) {
                    return None;
                }
                id.parse().ok().filter(|n| *n > 0).map(Identity::Node)
            }
        }
    }

    pub fn node_id(&self) -> Option<u64> {
        match self {
            Identity::Node(id) => Some(*id),
            _ => None,
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node/{id}"),
            Identity::Coordinator => write!(f, "coordinator"),
            Identity::Operator => write!(f, "operator"),
        }
    }
}

/// The identity a (verified) leaf certificate names. A certificate naming
/// two different Shoal identities names none.
pub fn from_cert(cert: &CertificateDer<'_>) -> Option<Identity> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut found: Option<Identity> = None;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name {
            if let Some(id) = Identity::parse(uri) {
                if found.as_ref().is_some_and(|f| *f != id) {
                    return None;
                }
                found = Some(id);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse_only_in_canonical_form() {
        for id in [Identity::Node(1), Identity::Node(u64::MAX), Identity::Coordinator, Identity::Operator] {
            assert_eq!(Identity::parse(&id.uri()), Some(id));
        }
        for bad in ["spiffe://shoal/node/0", "spiffe://shoal/node/03", "spiffe://shoal/node/+3", "spiffe://shoal/node/", "spiffe://shoal/node/18446744073709551616", "spiffe://other/node/3", "spiffe://shoal/node/3/x", "spiffe://shoal/admin", "https://shoal/node/3"] {
            assert_eq!(Identity::parse(bad), None, "{bad}");
        }
    }
}
