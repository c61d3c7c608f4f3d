//! `SearchStream` in the SDK: many searches over one HTTP/2 stream.
//!
//! [`Client::search_stream`] opens the stream and returns its two halves:
//! a [`SearchSender`] (cheap to clone, usable from many tasks) and a
//! [`SearchReceiver`] that yields tagged answers in completion order. No
//! retries: a stream that breaks answers with its error, and the caller
//! resends what was not answered.
use shoal_proto::v1::points_client::PointsClient;
use shoal_proto::v1::{ScoredPoint, SearchStreamRequest, SearchStreamResponse};
use tokio::sync::mpsc;

use crate::{Client, ClientError, Result, SearchBuilder};

/// Sends searches into a `SearchStream`.
#[derive(Debug, Clone)]
pub struct SearchSender {
    tx: mpsc::Sender<SearchStreamRequest>,
}

impl SearchSender {
    /// Queues search `s` under `tag` (echoed in its answer). Waits while
    /// the stream's send buffer is full.
    pub async fn send(&self, tag: u64, s: SearchBuilder) -> Result<()> {
        self.tx.send(SearchStreamRequest { tag, search: Some(s.0) }).await.map_err(|_| ClientError::StreamClosed)
    }
}

/// Receives the answers of a `SearchStream`.
#[derive(Debug)]
pub struct SearchReceiver {
    inner: tonic::Streaming<SearchStreamResponse>,
}

impl SearchReceiver {
    /// The next answer: its tag and the search's results or error. `None`
    /// once every sender is dropped and every search has been answered;
    /// `Err` when the stream itself broke.
    pub async fn next(&mut self) -> Result<Option<(u64, Result<Vec<ScoredPoint>>)>> {
        let Some(r) = self.inner.message().await? else { return Ok(None) };
        let result = match r.error {
            None => Ok(r.results),
            Some(e) => Err(ClientError::Status(tonic::Status::new(tonic::Code::from(e.code), e.message))),
        };
        Ok(Some((r.tag, result)))
    }
}

impl Client {
    /// Opens a `SearchStream` (see `points.proto`): for issuing many single
    /// searches without the per-call cost of `search`.
    pub async fn search_stream(&self) -> Result<(SearchSender, SearchReceiver)> {
        let (tx, rx) = mpsc::channel(shoal_proto::limits::MAX_STREAM_IN_FLIGHT);
        let outgoing = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut c = PointsClient::new(self.channel.clone())
            .max_decoding_message_size(shoal_proto::limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(shoal_proto::limits::MAX_MESSAGE_BYTES);
        let inner = c.search_stream(outgoing).await?.into_inner();
        Ok((SearchSender { tx }, SearchReceiver { inner }))
    }
}
