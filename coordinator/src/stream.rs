//! `Points/SearchStream`: many searches over one HTTP/2 stream.
//!
//! A reader task takes the stream's messages one at a time, holding one of
//! [`MAX_STREAM_IN_FLIGHT`] permits per running search, and spawns each
//! search as its own task (so the searches of one stream use every core).
//! Each task sends its answer, tagged, into a channel that is the response
//! stream; answers leave in completion order. A failed search answers with
//! its status in [`SearchError`] and the stream goes on; a message that
//! cannot be read ends the stream with that status once the searches
//! already running have answered. When the client goes away, the reader
//! stops taking messages and running searches finish unobserved.
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal_proto::limits::MAX_STREAM_IN_FLIGHT;
use shoal_proto::v1::{SearchError, SearchStreamRequest, SearchStreamResponse};
use tokio::sync::{mpsc, Semaphore};
use tonic::{Status, Streaming};

use crate::error::CoordError;
use crate::service::Api;

/// The response stream of `SearchStream`.
pub type SearchStream = Pin<Box<dyn Stream<Item = Result<SearchStreamResponse, Status>> + Send + 'static>>;

/// Starts serving `input`; returns the response stream.
/// `access`: the caller's; each message's collection is checked against
/// it.
pub fn serve(api: Api, access: shoal_common::auth::Access, mut input: Streaming<SearchStreamRequest>) -> SearchStream {
    let access = Arc::new(access);
    // Room for every running search's answer plus a final error: a search
    // never waits on a slow reader while holding its permit for long.
    let (tx, rx) = mpsc::channel(MAX_STREAM_IN_FLIGHT + 1);
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(MAX_STREAM_IN_FLIGHT));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let msg = tokio::select! {
                m = input.message() => m,
                _ = tx.closed() => break,
            };
            let m = match msg {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(status) => {
                    // Answers already running come first: the error goes
                    // out once every permit is back.
                    let _ = permits.acquire_many(MAX_STREAM_IN_FLIGHT as u32 - 1).await;
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            };
            let (api, tx, access) = (api.clone(), tx.clone(), access.clone());
            tokio::spawn(async move {
                let answer = answer(&api, &access, m).await;
                let _ = tx.send(Ok(answer)).await;
                drop(permit);
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The answer to one message: its results, or the status a unary `Search`
/// would have returned.
async fn answer(api: &Api, access: &shoal_common::auth::Access, m: SearchStreamRequest) -> SearchStreamResponse {
    let result = match &m.search {
        None => Err(CoordError::Invalid(shoal_proto::validate::invalid("search", "missing: each message carries one search"))),
        Some(s) => match access.check(shoal_common::auth::Need::Read, Some(&s.collection)).and_then(|()| match api.alias_target(&s.collection) {
            // Through an alias: its collection must be in scope too.
            Some(t) => access.check(shoal_common::auth::Need::Read, Some(&t)),
            None => Ok(()),
        }) {
            Ok(()) => api.search_one(s).await,
            Err(e) => Err(CoordError::Auth(e)),
        },
    };
    let count = |code: &str| shoal_common::telemetry::STREAM_SEARCHES.with_label_values(&[code]).inc();
    match result {
        Ok(results) => {
            count("0");
            SearchStreamResponse { tag: m.tag, results, error: None }
        }
        Err(e) => {
            let status = Status::from(e);
            count(&(status.code() as i32).to_string());
            SearchStreamResponse { tag: m.tag, results: vec![], error: Some(SearchError { code: status.code() as i32, message: status.message().to_string() }) }
        }
    }
}
