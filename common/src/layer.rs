//! The shape every gate on a Shoal server shares: a [`Policy`] looks at a
//! request before it is decoded and either admits it (adding what the
//! handlers need to its extensions) or refuses it with a gRPC status,
//! answered at once without calling the service. [`crate::auth::AuthLayer`]
//! (public API) and [`crate::peer_auth::PeerAuthLayer`] (internal plane)
//! are policies. Also the helpers the post-processing layers (metrics,
//! audit) share.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;

/// The future of a boxed tower service call.
pub type BoxFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

/// Decides whether a request may reach the service.
pub trait Policy: Clone + Send + Sync + 'static {
    /// `Ok`: call the service (the policy may have added extensions);
    /// `Err`: answer with this status.
    fn admit<B>(&self, req: &mut http::Request<B>) -> Result<(), Status>;
}

/// A tower layer applying a [`Policy`].
#[derive(Clone)]
pub struct Guard<P>(pub P);

impl<S, P: Clone> tower::Layer<S> for Guard<P> {
    type Service = Guarded<S, P>;
    fn layer(&self, inner: S) -> Guarded<S, P> {
        Guarded { inner, policy: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Guarded<S, P> {
    inner: S,
    policy: P,
}

impl<S, P, B, RB> tower::Service<http::Request<B>> for Guarded<S, P>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    P: Policy,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.policy.admit(&mut req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(s) => {
                let (parts, ()) = s.into_http::<()>().into_parts();
                Box::pin(async move { Ok(http::Response::from_parts(parts, RB::default())) })
            }
        }
    }
}

/// The gRPC status code of an answer, from its headers: errors travel in
/// the headers (trailers-only responses), so an answer without
/// `grpc-status` there is an OK one.
pub fn grpc_code<RB>(res: &http::Response<RB>) -> tonic::Code {
    res.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()).map_or(tonic::Code::Ok, tonic::Code::from)
}
