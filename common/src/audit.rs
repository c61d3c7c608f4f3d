//! The audit log: one JSON line per admin action, collection change,
//! write by filter and refused request, with who, what, when, from where
//! and the result.
//!
//! ```json
//! {"ts":"2026-12-06T19:02:03.123Z","who":"api-key:ops","from":"10.0.0.7:51234","action":"/shoal.v1.Collections/Delete","collection":"docs","result":"OK","detail":""}
//! ```
//!
//! Lines go to a file (appended, created `0600`) or to stdout, written by a
//! thread of their own from a bounded queue: a slow sink never blocks a
//! request; when the queue is full, lines are dropped, counted and
//! reported by a line of their own. A write error is logged once and
//! counted, never fails the request. Secrets (keys, tokens) are never written:
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

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().lock().write_all(bytes),
            Sink::File(f) => f.write_all(bytes),
        }
    }
}

/// Audit lines waiting for the writer thread; beyond this, new lines are
/// dropped and counted (`shoal_audit_events_total{outcome="dropped"}`)
/// rather than stalling requests behind a slow disk or pipe.
pub const AUDIT_QUEUE: usize = 16_384;

/// The audit log: requests hand lines to a bounded queue and a thread of
/// its own writes them, so a slow sink never blocks a request (a flood of
/// refused requests costs one queue slot each, then is counted as
/// dropped).
pub struct AuditLog {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    /// Lines dropped since the last report line.
    dropped: std::sync::atomic::AtomicU64,
    /// Lines queued and not yet written ([`AuditLog::flush`]).
    pending: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    pub fn open(target: &AuditTarget) -> std::io::Result<Arc<Self>> {
        let mut sink = match target {
            AuditTarget::Stdout => Sink::Stdout,
            AuditTarget::File(p) => Sink::File(open_append(p)?),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(AUDIT_QUEUE);
        let pending = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let left = pending.clone();
        std::thread::Builder::new().name("shoal-audit".into()).spawn(move || {
            let mut failing = false;
            for line in rx {
                let res = sink.write(&line);
                left.fetch_sub(1, std::sync::atomic::Ordering::Release);
                crate::telemetry::AUDIT_EVENTS.with_label_values(&[if res.is_ok() { "written" } else { "failed" }]).inc();
                match res {
                    Ok(()) => failing = false,
                    Err(err) => {
                        if !failing {
                            tracing::error!(error = %err, "writing the audit log failed");
                        }
                        failing = true;
                    }
                }
            }
        })?;
        Ok(Arc::new(AuditLog { tx, dropped: Default::default(), pending }))
    }

    /// Waits (at most `within`) until every queued line is written: at
    /// shutdown, so the last actions are not lost.
    pub fn flush(&self, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.pending.load(std::sync::atomic::Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn send(&self, line: Vec<u8>) -> bool {
        use std::sync::atomic::Ordering;
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.tx.try_send(line).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn record(&self, e: &AuditEvent) {
        use std::sync::atomic::Ordering;
        let mut line = serde_json::to_vec(e).unwrap_or_default();
        line.push(b'\n');
        // Lines dropped while the queue was full are reported by a line of
        // their own once it has room again.
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let note = AuditEvent::new("shoal", None, "audit", None, "DROPPED", &format!("{dropped} audit lines dropped: the audit sink fell behind"));
            let mut l = serde_json::to_vec(&note).unwrap_or_default();
            l.push(b'\n');
            if !self.send(l) {
                self.dropped.fetch_add(dropped, Ordering::Relaxed);
            }
        }
        if !self.send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::AUDIT_EVENTS.with_label_values(&["dropped"]).inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines written through the queue come back whole, in order, one JSON
    /// object each, with the file private to its owner.
    #[test]
    fn lines_are_written_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&AuditTarget::File(path.clone())).unwrap();
        for i in 0..1000 {
            log.record(&AuditEvent::new("api-key:ops", Some("10.0.0.7:5000".parse().unwrap()), "/shoal.v1.Collections/Delete", Some(&format!("c{i}\n\"x")), "OK", "detail"));
        }
        log.flush(std::time::Duration::from_secs(10));
        let lines: Vec<AuditEvent> = std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1000);
        assert!(lines.iter().enumerate().all(|(i, l)| l.collection == format!("c{i}\n\"x") && l.from == "10.0.0.7:5000" && l.result == "OK"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A collection name is bounded in the line.
        log.record(&AuditEvent::new("x", None, "a", Some(&"n".repeat(100_000)), "OK", ""));
        log.flush(std::time::Duration::from_secs(10));
        let last = std::fs::read_to_string(&path).unwrap().lines().last().unwrap().len();
        assert!(last < 1_000, "{last} bytes");
    }
}
