//! The coordinator's error enum and its one mapping to gRPC status.
use shoal_proto::validate::ValidationError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("collection {0:?} not found")]
    CollectionNotFound(String),
    /// A node answered with an error; code and message are passed on.
    #[error("{context}: {message}")]
    Node { code: Code, context: String, message: String },
    #[error("node {node} is unreachable at {address}: {detail}")]
    Unreachable { node: u64, address: String, detail: String },
    #[error("deadline of {0:?} exceeded waiting for shards")]
    Deadline(std::time::Duration),
    #[error("cluster map is unavailable: {0}")]
    NoMap(String),
    #[error("internal: {0}")]
    Internal(String),
    /// The answer would pass the response size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The collection's shard layout changed (a split) while a request was
    /// routed with the old one: the caller plans it again.
    #[error("collection {0:?} was resharded while the request was routed; retry")]
    Rerouted(String),
    /// Credentials missing, bad, or short of what the request needs.
    #[error(transparent)]
    Auth(#[from] shoal_common::auth::AuthError),
}

pub type Result<T, E = CoordError> = std::result::Result<T, E>;

impl CoordError {
    /// Wraps a node's status, keeping its code.
    pub fn from_node(context: impl Into<String>, s: Status) -> Self {
        CoordError::Node { code: s.code(), context: context.into(), message: s.message().to_string() }
    }
}

impl From<CoordError> for Status {
    fn from(e: CoordError) -> Self {
        let msg = e.to_string();
        match e {
            CoordError::Invalid(_) => Status::invalid_argument(msg),
            CoordError::CollectionNotFound(_) => Status::not_found(msg),
            CoordError::Node { code, message, .. } => match code {
                // The node already phrased these for the user.
                Code::InvalidArgument | Code::NotFound | Code::AlreadyExists => Status::new(code, message),
                _ => Status::new(code, msg),
            },
            CoordError::Unreachable { .. } | CoordError::NoMap(_) | CoordError::Rerouted(_) => Status::unavailable(msg),
            CoordError::Deadline(_) => Status::deadline_exceeded(msg),
            CoordError::Internal(_) => Status::internal(msg),
            CoordError::TooLarge(_) => Status::resource_exhausted(msg),
            CoordError::Auth(e) => e.into(),
        }
    }
}
