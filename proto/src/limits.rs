//! Request limits. Every layer checks against these constants, and
//! `docs/limits.md` documents them; change both together.

/// Largest vector dimension a collection may have.
pub const MAX_DIMENSION: u32 = 4096;
/// Points in one upsert batch.
pub const MAX_UPSERT_BATCH: usize = 10_000;
/// Ids in one get or delete request.
pub const MAX_IDS_PER_REQUEST: usize = 10_000;
/// Points one payload update may change on one shard (a filter matching
/// more is refused; narrow it or page by ids).
pub const MAX_PAYLOAD_UPDATE_POINTS: usize = 10_000;
/// Keys one payload update may delete.
pub const MAX_PAYLOAD_DELETE_KEYS: usize = 1_024;
/// Aliases in a cluster.
pub const MAX_ALIASES: usize = 1_024;
/// Actions in one alias update.
pub const MAX_ALIAS_ACTIONS: usize = 100;
/// Sparse vectors a collection declares.
pub const MAX_SPARSE_VECTORS: usize = 16;
/// Named dense vectors and multi-vectors a collection declares.
pub const MAX_NAMED_VECTORS: usize = 16;
/// Rows of one multi-vector (stored or queried).
pub const MAX_MULTIVECTOR_ROWS: usize = 256;
/// Non-zeros of one sparse vector (stored or queried).
pub const MAX_SPARSE_NNZ: usize = 4_096;
/// Largest magnitude of a sparse vector value (sums of products stay
/// finite in f32).
pub const MAX_SPARSE_VALUE: f32 = 1e9;
/// Largest `top_k`.
pub const MAX_TOP_K: u32 = 10_000;
/// Largest `ef`.
pub const MAX_EF: u32 = 4_096;
/// Largest oversampling factor of a quantized search (candidates taken
/// from the graph per result before re-scoring; at most MAX_EF in all).
pub const MAX_OVERSAMPLING: f32 = 64.0;
/// Searches in one batch.
pub const MAX_SEARCH_BATCH: usize = 1_024;
/// Searches of one `SearchStream` running at once; the server reads the
/// stream's next message only when one of them completes.
pub const MAX_STREAM_IN_FLIGHT: usize = 64;
/// Query vectors of one `Shard/Score` call (recommend examples, MMR).
pub const MAX_QUERY_VECTORS: usize = 256;
/// Points one `Shard/Score` call may score on a shard.
pub const MAX_SCORE_POINTS: usize = 100_000;
/// Stages (the query and its prefetches, at every level) of one query.
pub const MAX_QUERY_STAGES: usize = 64;
/// Nesting depth of prefetches.
pub const MAX_QUERY_DEPTH: usize = 8;
/// Candidates a re-scoring stage takes from its prefetches.
pub const MAX_RESCORE_CANDIDATES: usize = 65_536;
/// Largest scroll page.
pub const MAX_SCROLL_LIMIT: u32 = 10_000;
/// Default scroll page.
pub const DEFAULT_SCROLL_LIMIT: u32 = 100;
/// Largest gRPC message (encoded or decoded) on every server, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Encoded size of one shard write (one Raft entry), in bytes. openraft
/// gives an AppendEntries call one heartbeat interval (100 ms): entries
/// must be small enough to ship within it. Coordinators split upserts into
/// shard writes of at most 4 MiB; a node refuses larger writes.
pub const MAX_WRITE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of log entries in one AppendEntries call (the Raft log reader
/// stops there). A single larger entry (up to [`MAX_WRITE_BYTES`]) goes
/// alone.
pub const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;
/// Encoded size of one point's payload, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Nesting depth of a payload (objects and lists inside each other).
/// protobuf decoding itself stops at 100 message levels, about 32 payload
/// levels (each is a `Value`, a `Struct` and a map entry): this limit
/// answers well before that with a precise error.
pub const MAX_PAYLOAD_DEPTH: usize = 20;
/// Values one point may hold in one indexed payload field.
pub const MAX_INDEXED_VALUES: usize = 1_024;
/// Payload indexes one collection may declare (each costs a lookup per
/// point on every write).
pub const MAX_PAYLOAD_INDEXES: usize = 64;
/// Length of a payload key path (index keys, filter keys), in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Cost of one search request: the sum over its searches of `top_k` times
/// the shards each one runs on (the hits computed and merged).
pub const MAX_SEARCH_COST: u64 = 4 * 1024 * 1024;
/// Vector components one search response may return: the sum over its
/// searches with `with_vector` of `top_k` times the dimension (32 MiB of
/// f32, half the message limit).
pub const MAX_RESULT_VECTOR_FLOATS: u64 = 8 * 1024 * 1024;
/// Conditions in one filter, counted over every nesting level.
pub const MAX_FILTER_CONDITIONS: usize = 1_024;
/// Values in one filter's `match_any` and `has_id` lists together.
pub const MAX_FILTER_VALUES: usize = 65_536;
/// Nesting depth of filters.
pub const MAX_FILTER_DEPTH: usize = 16;
/// Shards per collection.
pub const MAX_SHARDS: u32 = 1024;
/// Collection name length.
pub const MAX_NAME_LEN: usize = 255;
/// HNSW `m` range.
pub const HNSW_M_RANGE: (u32, u32) = (4, 128);
/// HNSW `ef_construction` range.
pub const HNSW_EF_CONSTRUCTION_RANGE: (u32, u32) = (8, 4096);

/// Defaults filled in for zero-valued config fields.
pub const DEFAULT_HNSW_M: u32 = 16;
pub const DEFAULT_HNSW_EF_CONSTRUCTION: u32 = 128;
pub const DEFAULT_HNSW_EF_SEARCH: u32 = 128;

/// Bytes of one metadata-group snapshot a node receives (the cluster map
/// is kilobytes; the snapshot is held in memory).
pub const MAX_META_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes of one shard snapshot a node receives (a file; the free-space
/// watermark also applies).
pub const MAX_SHARD_SNAPSHOT_BYTES: u64 = 1 << 40;
