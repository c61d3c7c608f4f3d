//! The audit log: one JSON line per admin action, collection change,
//! write by filter and refused request, with who, what, when, from where
//! and the result.
//!
//! ```json
//! {"ts":"2026-12-06T19:02:03.123Z","who":"api-key:ops","from":"10.0.0.7:51234","action":"/shoal.v1.Collections/Delete","collection":"docs","result":"OK","detail":""}
//! ```
//!
//! Lines go to a file (appended, created `0600`) or to stdout. A line is
//! written whole under a lock; a write error is logged once and counted,
//! never fails the request. Secrets (keys, tokens) are never written:
//! `who` names a key by its name and a token by its subject.
//!
//! [`AuditLayer`] writes the lines of a server's audited methods (and of
//! any request a handler marks with [`note`]) once the answer is known.
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use serde::Serialize;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

impl AuditTarget {
    /// `-` or `stdout` for standard output, anything else a file path.
    pub fn parse(s: &str) -> AuditTarget {
        if s == "-" || s == "stdout" {
            AuditTarget::Stdout
        } else {
            AuditTarget::File(PathBuf::from(s))
        }
    }
}

/// One audit line.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuditEvent {
    pub ts: String,
    pub who: String,
    pub from: String,
    pub action: String,
    pub collection: String,
    pub result: String,
    pub detail: String,
}

impl AuditEvent {
    pub fn new(who: &str, from: Option<SocketAddr>, action: &str, collection: Option<&str>, result: &str, detail: &str) -> Self {
        AuditEvent {
            ts: rfc3339_now(),
            who: who.into(),
            from: from.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            action: action.into(),
            collection: collection.unwrap_or("").chars().take(256).collect(),
            result: result.into(),
            detail: detail.chars().take(512).collect(),
        }
    }
}

fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| now.unix_timestamp().to_string())
}

enum Sink {
    Stdout,
    File(std::fs::File),
}

pub struct AuditLog {
    sink: Mutex<(Sink, bool)>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    pub fn open(target: &AuditTarget) -> std::io::Result<Arc<Self>> {
        let sink = match target {
            AuditTarget::Stdout => Sink::Stdout,
            AuditTarget::File(p) => Sink::File(open_append(p)?),
        };
        Ok(Arc::new(AuditLog { sink: Mutex::new((sink, false)) }))
    }

    pub fn record(&self, e: &AuditEvent) {
        let mut line = serde_json::to_vec(e).unwrap_or_default();
        line.push(b'\n');
        let mut s = self.sink.lock();
        let res = match &mut s.0 {
            Sink::Stdout => std::io::stdout().lock().write_all(&line),
            Sink::File(f) => f.write_all(&line),
        };
        crate::telemetry::AUDIT_EVENTS.with_label_values(&[if res.is_ok() { "written" } else { "failed" }]).inc();
        if let Err(err) = res {
            if !s.1 {
                tracing::error!(error = %err, "writing the audit log failed");
            }
            s.1 = true;
        }
    }
}

fn open_append(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().append(true).create(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(p)
}

/// The gRPC code name of a status code (`OK`, `PERMISSION_DENIED`, ...).
pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A slot a handler fills to have its request audited (and say what it
/// touched): [`note`].
#[derive(Clone, Default)]
pub struct AuditNote(Arc<Mutex<Option<Noted>>>);

/// What a handler noted: the collection touched and a detail.
type Noted = (Option<String>, String);

/// Marks the request for the audit log with the collection it touches and
/// a detail (e.g. "delete by filter").
pub fn note(ext: &http::Extensions, collection: Option<&str>, detail: impl Into<String>) {
    if let Some(n) = ext.get::<AuditNote>() {
        *n.0.lock() = Some((collection.map(str::to_string), detail.into()));
    }
}

/// Writes an audit line for every request to a method in `always`, and for
/// any other a handler marked with [`note`], once it is answered.
#[derive(Clone)]
pub struct AuditLayer {
    log: Option<Arc<AuditLog>>,
    always: &'static [&'static str],
}

impl AuditLayer {
    pub fn new(log: Option<Arc<AuditLog>>, always: &'static [&'static str]) -> Self {
        AuditLayer { log, always }
    }
}

impl<S> tower::Layer<S> for AuditLayer {
    type Service = AuditService<S>;
    fn layer(&self, inner: S) -> AuditService<S> {
        AuditService { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct AuditService<S> {
    inner: S,
    layer: AuditLayer,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuditService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = crate::layer::BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let Some(log) = self.layer.log.clone() else { return Box::pin(self.inner.call(req)) };
        let path = req.uri().path().to_string();
        let always = self.layer.always.contains(&path.as_str());
        let slot = AuditNote::default();
        req.extensions_mut().insert(slot.clone());
        let peer = crate::tls::peer(req.extensions()).cloned();
        let who = match (req.extensions().get::<crate::auth::Access>(), peer.as_ref().and_then(|p| p.identity.clone())) {
            (Some(a), _) => a.who.clone(),
            (None, Some(id)) => format!("cert:{id}"),
            (None, None) => "anonymous".into(),
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let noted = slot.0.lock().take();
            if always || noted.is_some() {
                let (collection, detail) = noted.unwrap_or_default();
                let result = match &res {
                    Ok(r) => code_name(crate::layer::grpc_code(r)),
                    Err(_) => "TRANSPORT_ERROR",
                };
                log.record(&AuditEvent::new(&who, peer.and_then(|p| p.remote_addr), &path, collection.as_deref(), result, &detail));
            }
            res
        })
    }
}
