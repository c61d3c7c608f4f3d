//! Request validation shared by the coordinator (which validates every
//! public request) and the node (which re-checks what reaches a shard).
//!
//! Every failure is a [`ValidationError`] naming the offending field, mapped
//! to `INVALID_ARGUMENT` by the servers.
use crate::limits::*;
use crate::v1::{condition, match_condition, value, CollectionConfig, Condition, Filter, HnswConfig, Metric, PayloadIndexSpec, PayloadIndexType, Struct, Value, VectorStorage};
use crate::PointKey;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the offending field, e.g. `points[3].vector`.
    pub field: String,
    pub message: String,
}

pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError { field: field.into(), message: message.into() }
}

/// Decodes a metric enum value, rejecting unknown and unspecified ones.
pub fn metric(raw: i32) -> Result<Metric, ValidationError> {
    match Metric::try_from(raw) {
        Ok(Metric::Unspecified) => Err(invalid("metric", "metric is required: METRIC_COSINE, METRIC_DOT or METRIC_L2")),
        Ok(m) => Ok(m),
        Err(_) => Err(invalid("metric", format!("unknown metric {raw}: expected METRIC_COSINE (1), METRIC_DOT (2) or METRIC_L2 (3)"))),
    }
}

/// Decodes a storage enum value (unspecified means f32).
pub fn storage(raw: i32) -> Result<VectorStorage, ValidationError> {
    match VectorStorage::try_from(raw) {
        Ok(VectorStorage::Unspecified) => Ok(VectorStorage::F32),
        Ok(s) => Ok(s),
        Err(_) => Err(invalid("storage", format!("unknown vector storage {raw}: expected VECTOR_STORAGE_F32 (1), F16 (2), INT8 (3) or BINARY (4)"))),
    }
}

/// A collection's vector memory setting (unspecified means cached).
pub fn memory(raw: i32) -> Result<crate::v1::VectorMemory, ValidationError> {
    use crate::v1::VectorMemory;
    match VectorMemory::try_from(raw) {
        Ok(VectorMemory::Unspecified) => Ok(VectorMemory::Cached),
        Ok(m) => Ok(m),
        Err(_) => Err(invalid("memory", format!("unknown vector memory {raw}: expected VECTOR_MEMORY_RAM (1), CACHED (2) or COLD (3)"))),
    }
}

/// Whether a storage kind keeps codes in the graph and full vectors in a
/// vector file (INT8, BINARY).
pub fn is_quantized(s: VectorStorage) -> bool {
    matches!(s, VectorStorage::Int8 | VectorStorage::Binary)
}

/// A search's oversampling factor (quantized storage), when given.
pub fn oversampling(field: &str, o: Option<f32>) -> Result<(), ValidationError> {
    match o {
        Some(o) if !(o.is_finite() && (1.0..=crate::limits::MAX_OVERSAMPLING).contains(&o)) => {
            Err(invalid(format!("{field}oversampling"), format!("oversampling {o} is outside 1..={}", crate::limits::MAX_OVERSAMPLING)))
        }
        _ => Ok(()),
    }
}

pub fn collection_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(invalid("name", "collection name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("name", format!("collection name is {} bytes, the limit is {MAX_NAME_LEN}", name.len())));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(invalid("name", format!("collection name {name:?} contains {c:?}; use letters, digits, '_' and '-'")));
    }
    Ok(())
}

fn in_range(field: &str, v: u32, (lo, hi): (u32, u32)) -> Result<u32, ValidationError> {
    if v < lo || v > hi {
        return Err(invalid(field, format!("{v} is outside {lo}..={hi}")));
    }
    Ok(v)
}

/// Validates a collection config and returns it with defaults filled in.
pub fn collection_config(cfg: &CollectionConfig) -> Result<CollectionConfig, ValidationError> {
    collection_name(&cfg.name)?;
    if cfg.dimension == 0 || cfg.dimension > MAX_DIMENSION {
        return Err(invalid("dimension", format!("dimension {} is outside 1..={MAX_DIMENSION}", cfg.dimension)));
    }
    let metric = metric(cfg.metric)?;
    let storage = storage(cfg.storage)?;
    let memory = memory(cfg.memory)?;
    let shard_count = if cfg.shard_count == 0 { 1 } else { in_range("shard_count", cfg.shard_count, (1, MAX_SHARDS))? };
    let replication_factor = cfg.replication_factor.max(1);
    let hnsw = hnsw_config("hnsw", cfg.hnsw)?;
    if cfg.payload_indexes.len() > MAX_PAYLOAD_INDEXES {
        return Err(invalid("payload_indexes", format!("{} payload indexes, the limit is {MAX_PAYLOAD_INDEXES}", cfg.payload_indexes.len())));
    }
    if cfg.sparse_vectors.len() > MAX_SPARSE_VECTORS {
        return Err(invalid("sparse_vectors", format!("{} sparse vectors, the limit is {MAX_SPARSE_VECTORS}", cfg.sparse_vectors.len())));
    }
    let mut names = std::collections::HashSet::new();
    for (i, s) in cfg.sparse_vectors.iter().enumerate() {
        let field = format!("sparse_vectors[{i}]");
        if !vector_name_ok(&s.name) {
            return Err(invalid(format!("{field}.name"), format!("sparse vector name {:?} is not 1..=64 characters of [A-Za-z0-9_-]", s.name)));
        }
        if crate::v1::SparseModifier::try_from(s.modifier).is_err() {
            return Err(invalid(format!("{field}.modifier"), format!("unknown sparse modifier {}", s.modifier)));
        }
        if !names.insert(s.name.as_str()) {
            return Err(invalid(format!("{field}.name"), format!("sparse vector {:?} is declared twice", s.name)));
        }
    }
    if cfg.vectors.len() > MAX_NAMED_VECTORS {
        return Err(invalid("vectors", format!("{} named vectors, the limit is {MAX_NAMED_VECTORS}", cfg.vectors.len())));
    }
    let mut vectors = Vec::with_capacity(cfg.vectors.len());
    for (i, v) in cfg.vectors.iter().enumerate() {
        let field = format!("vectors[{i}]");
        if !names.insert(v.name.as_str()) {
            return Err(invalid(format!("{field}.name"), format!("vector name {:?} is declared twice (named dense and sparse vectors share one namespace)", v.name)));
        }
        vectors.push(named_vector_config(&field, v)?);
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in cfg.payload_indexes.iter().enumerate() {
        let field = format!("payload_indexes[{i}]");
        key(&field, &p.key)?;
        match PayloadIndexType::try_from(p.r#type) {
            Ok(PayloadIndexType::Unspecified) | Err(_) => {
                return Err(invalid(format!("{field}.type"), format!("unknown payload index type {}: expected KEYWORD, NUMERIC, BOOL, TEXT, DATETIME or GEO", p.r#type)))
            }
            Ok(PayloadIndexType::Text) => {
                if let Some(t) = &p.text {
                    text_params(&format!("{field}.text"), t)?;
                }
            }
            Ok(_) => {
                if p.text.is_some() {
                    return Err(invalid(format!("{field}.text"), "text settings belong to a TEXT index only"));
                }
            }
        }
        if !seen.insert(p.key.as_str()) {
            return Err(invalid(format!("{field}.key"), format!("payload field {:?} is indexed twice", p.key)));
        }
    }
    Ok(CollectionConfig {
        name: cfg.name.clone(),
        dimension: cfg.dimension,
        metric: metric as i32,
        shard_count,
        replication_factor,
        hnsw: Some(hnsw),
        storage: storage as i32,
        payload_indexes: cfg.payload_indexes.clone(),
        sparse_vectors: cfg.sparse_vectors.clone(),
        vectors,
        memory: memory as i32,
    })
}

/// HNSW parameters with defaults filled in.
fn hnsw_config(field: &str, h: Option<HnswConfig>) -> Result<HnswConfig, ValidationError> {
    let h = h.unwrap_or_default();
    Ok(HnswConfig {
        m: if h.m == 0 { DEFAULT_HNSW_M } else { in_range(&format!("{field}.m"), h.m, HNSW_M_RANGE)? },
        ef_construction: if h.ef_construction == 0 {
            DEFAULT_HNSW_EF_CONSTRUCTION
        } else {
            in_range(&format!("{field}.ef_construction"), h.ef_construction, HNSW_EF_CONSTRUCTION_RANGE)?
        },
        ef_search: if h.ef_search == 0 { DEFAULT_HNSW_EF_SEARCH } else { in_range(&format!("{field}.ef_search"), h.ef_search, (1, MAX_EF))? },
    })
}

fn vector_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Validates a named vector's config and returns it with defaults filled
/// in (the name's uniqueness is the caller's to check).
pub fn named_vector_config(field: &str, v: &crate::v1::NamedVectorConfig) -> Result<crate::v1::NamedVectorConfig, ValidationError> {
    if !vector_name_ok(&v.name) {
        return Err(invalid(format!("{field}.name"), format!("vector name {:?} is not 1..=64 characters of [A-Za-z0-9_-]", v.name)));
    }
    if v.dimension == 0 || v.dimension > MAX_DIMENSION {
        return Err(invalid(format!("{field}.dimension"), format!("dimension {} is outside 1..={MAX_DIMENSION}", v.dimension)));
    }
    let metric = metric(v.metric).map_err(|e| invalid(format!("{field}.metric"), e.message))?;
    let storage = storage(v.storage).map_err(|e| invalid(format!("{field}.storage"), e.message))?;
    if is_quantized(storage) {
        return Err(invalid(format!("{field}.storage"), "INT8 and BINARY storage are for the default vector only; a named vector stores F32 or F16"));
    }
    Ok(crate::v1::NamedVectorConfig {
        name: v.name.clone(),
        dimension: v.dimension,
        metric: metric as i32,
        hnsw: Some(hnsw_config(&format!("{field}.hnsw"), v.hnsw)?),
        storage: storage as i32,
        multivector: v.multivector,
    })
}

/// Checks a point's named vectors against the collection's declared ones:
/// a dense one has `values` only, a multi-vector 1..=MAX_MULTIVECTOR_ROWS
/// `rows` only, each of the declared dimension.
pub fn point_vectors(path: &str, vectors: &std::collections::BTreeMap<String, crate::v1::NamedVector>, declared: &[crate::v1::NamedVectorConfig]) -> Result<(), ValidationError> {
    for (name, v) in vectors {
        let field = format!("{path}.vectors[{name:?}]");
        let d = declared.iter().find(|d| &d.name == name).ok_or_else(|| invalid(format!("{path}.vectors"), format!("vector {name:?} is not declared in the collection's vectors")))?;
        let m = metric(d.metric)?;
        if d.multivector {
            if !v.values.is_empty() {
                return Err(invalid(format!("{field}.values"), format!("{name:?} is a multi-vector: give its rows, not values")));
            }
            if v.rows.is_empty() || v.rows.len() > MAX_MULTIVECTOR_ROWS {
                return Err(invalid(format!("{field}.rows"), format!("{} rows, allowed 1..={MAX_MULTIVECTOR_ROWS}", v.rows.len())));
            }
            for (i, r) in v.rows.iter().enumerate() {
                vector(&format!("{field}.rows[{i}]"), &r.values, d.dimension, m)?;
            }
        } else {
            if !v.rows.is_empty() {
                return Err(invalid(format!("{field}.rows"), format!("{name:?} is a dense vector: give its values, not rows")));
            }
            vector(&format!("{field}.values"), &v.values, d.dimension, m)?;
        }
    }
    Ok(())
}

/// The named vectors after dropping `drop` and adding `add` to `current`
/// (drops first). A dropped name must be declared; an added one must not
/// be (after the drops). The result still has to pass
/// [`collection_config`] (limits, the shared namespace with sparse
/// vectors).
pub fn vector_change(current: &[crate::v1::NamedVectorConfig], add: &[crate::v1::NamedVectorConfig], drop: &[String]) -> Result<Vec<crate::v1::NamedVectorConfig>, ValidationError> {
    if add.is_empty() && drop.is_empty() {
        return Err(invalid("add", "nothing to add or drop"));
    }
    if add.len() > MAX_NAMED_VECTORS || drop.len() > MAX_NAMED_VECTORS {
        return Err(invalid("add", format!("at most {MAX_NAMED_VECTORS} vectors to add and to drop")));
    }
    let mut out = current.to_vec();
    for (i, name) in drop.iter().enumerate() {
        let before = out.len();
        out.retain(|v| &v.name != name);
        if out.len() == before {
            return Err(invalid(format!("drop[{i}]"), format!("vector {name:?} is not declared")));
        }
    }
    for (i, a) in add.iter().enumerate() {
        let a = named_vector_config(&format!("add[{i}]"), a)?;
        if out.iter().any(|v| v.name == a.name) {
            return Err(invalid(format!("add[{i}].name"), format!("vector {:?} is already declared; drop it in the same request to replace it", a.name)));
        }
        out.push(a);
    }
    Ok(out)
}

/// Checks a sparse vector: as many values as indices, at most
/// MAX_SPARSE_NNZ, unique indices, finite values within MAX_SPARSE_VALUE.
pub fn sparse_vector(field: &str, v: &crate::v1::SparseVector) -> Result<(), ValidationError> {
    if v.indices.len() != v.values.len() {
        return Err(invalid(field, format!("{} indices and {} values; they go in pairs", v.indices.len(), v.values.len())));
    }
    if v.indices.len() > MAX_SPARSE_NNZ {
        return Err(invalid(field, format!("{} non-zeros, the limit is {MAX_SPARSE_NNZ}", v.indices.len())));
    }
    if let Some(i) = v.values.iter().position(|x| !(x.is_finite() && x.abs() <= MAX_SPARSE_VALUE)) {
        return Err(invalid(format!("{field}.values[{i}]"), format!("values must be finite, of magnitude at most {MAX_SPARSE_VALUE:e}")));
    }
    let mut sorted = v.indices.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(invalid(format!("{field}.indices"), format!("index {} appears twice", w[0])));
    }
    Ok(())
}

/// Checks a point's sparse vectors against the collection's declared ones.
pub fn point_sparse(path: &str, sparse: &std::collections::BTreeMap<String, crate::v1::SparseVector>, declared: &[crate::v1::SparseVectorConfig]) -> Result<(), ValidationError> {
    for (name, v) in sparse {
        if !declared.iter().any(|d| &d.name == name) {
            return Err(invalid(format!("{path}.sparse"), format!("sparse vector {name:?} is not declared in the collection's sparse_vectors")));
        }
        sparse_vector(&format!("{path}.sparse[{name:?}]"), v)?;
    }
    Ok(())
}

/// Snowball stemmers a text index may name.
pub const STEMMERS: &[&str] = &["english", "french", "german", "spanish", "italian", "portuguese", "dutch", "swedish", "norwegian", "danish", "finnish", "russian"];

/// Checks a text index's tokenizer settings.
pub fn text_params(field: &str, t: &crate::v1::TextIndexParams) -> Result<(), ValidationError> {
    if !t.stemmer.is_empty() && !STEMMERS.contains(&t.stemmer.as_str()) {
        return Err(invalid(format!("{field}.stemmer"), format!("unknown stemmer {:?}: \"\" or one of {}", t.stemmer, STEMMERS.join(", "))));
    }
    if !t.stop_words.is_empty() && t.stop_words != "english" {
        return Err(invalid(format!("{field}.stop_words"), format!("unknown stop word list {:?}: \"\" or \"english\"", t.stop_words)));
    }
    Ok(())
}

/// Longest `text` of a text condition or BM25 query, in bytes.
pub const MAX_QUERY_TEXT_BYTES: usize = 16 * 1024;
/// Words (UAX #29) of a text condition or BM25 query: matching and
/// scoring cost grows with them.
pub const MAX_QUERY_WORDS: usize = 64;

/// Checks the text of a text condition or a BM25 query.
pub fn query_text(field: &str, text: &str) -> Result<(), ValidationError> {
    use unicode_segmentation::UnicodeSegmentation;
    if text.trim().is_empty() || text.len() > MAX_QUERY_TEXT_BYTES {
        return Err(invalid(field, format!("text is {} bytes, allowed 1..={MAX_QUERY_TEXT_BYTES} and not blank", text.len())));
    }
    let words = text.unicode_words().count();
    if words > MAX_QUERY_WORDS {
        return Err(invalid(field, format!("text has {words} words, the limit is {MAX_QUERY_WORDS}")));
    }
    Ok(())
}
/// Vertices of a geo polygon.
pub const MAX_POLYGON_POINTS: usize = 1_024;
/// Largest geo radius, meters (more than half the Earth's circumference).
pub const MAX_GEO_RADIUS_M: f64 = 20_100_000.0;

fn geo(path: &str, p: &Option<crate::v1::GeoPoint>) -> Result<(), ValidationError> {
    let Some(p) = p else { return Err(invalid(path, "geo point is missing")) };
    if !(p.lat.is_finite() && (-90.0..=90.0).contains(&p.lat)) {
        return Err(invalid(path, format!("lat {} is outside -90..=90", p.lat)));
    }
    if !(p.lon.is_finite() && (-180.0..=180.0).contains(&p.lon)) {
        return Err(invalid(path, format!("lon {} is outside -180..=180", p.lon)));
    }
    Ok(())
}

/// Checks a vector's length and that every component is finite; cosine
/// vectors must also be non-zero (they are normalised).
pub fn vector(field: &str, v: &[f32], dimension: u32, metric: Metric) -> Result<(), ValidationError> {
    if v.len() != dimension as usize {
        return Err(invalid(field, format!("vector has {} dimensions, the collection has {dimension}", v.len())));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(invalid(field, format!("component {i} is {} (components must be finite)", v[i])));
    }
    if metric == Metric::Cosine && v.iter().all(|x| *x == 0.0) {
        return Err(invalid(field, "zero vector has no cosine direction"));
    }
    Ok(())
}

/// `top_k` and `ef` of a search.
pub fn search_params(field: &str, top_k: u32, ef: Option<u32>) -> Result<(), ValidationError> {
    if top_k == 0 || top_k > MAX_TOP_K {
        return Err(invalid(format!("{field}top_k"), format!("top_k {top_k} is outside 1..={MAX_TOP_K}")));
    }
    if let Some(ef) = ef {
        if ef == 0 || ef > MAX_EF {
            return Err(invalid(format!("{field}ef"), format!("ef {ef} is outside 1..={MAX_EF}")));
        }
    }
    Ok(())
}

/// Checks a filter's structure: depth, keys, bounds, ids, and its size
/// (conditions and listed values, so one filter's evaluation is bounded).
pub fn filter(f: &Filter) -> Result<(), ValidationError> {
    filter_with(f, true)
}

/// The checks a filter inside a replicated write gets when it is applied:
/// only the rules older than any log (structure and depth). The newer
/// rules (key characters and length, filter size, empty nested filters)
/// are checked before proposing; applying them again could make replicas
/// that upgraded reject an entry that others applied.
pub fn filter_at_apply(f: &Filter) -> Result<(), ValidationError> {
    filter_with(f, false)
}

fn filter_with(f: &Filter, strict: bool) -> Result<(), ValidationError> {
    if !strict {
        return filter_at("filter", f, 1, false);
    }
    let (mut conditions, mut values) = (0usize, 0usize);
    filter_size(f, &mut conditions, &mut values);
    if conditions > MAX_FILTER_CONDITIONS {
        return Err(invalid("filter", format!("filter has more than {MAX_FILTER_CONDITIONS} conditions (the limit)")));
    }
    if values > MAX_FILTER_VALUES {
        return Err(invalid("filter", format!("filter lists more than {MAX_FILTER_VALUES} values in match_any, has_id and geo_polygon (the limit)")));
    }
    filter_at("filter", f, 1, true)
}

/// Counts conditions and listed values, stopping once past the limits
/// (and below the depth limit, which `filter_at` reports).
fn filter_size(f: &Filter, conditions: &mut usize, values: &mut usize) {
    for c in f.must.iter().chain(&f.should).chain(&f.must_not) {
        if *conditions > MAX_FILTER_CONDITIONS || *values > MAX_FILTER_VALUES {
            return;
        }
        *conditions += 1;
        match &c.kind {
            Some(condition::Kind::Filter(inner)) => filter_size(inner, conditions, values),
            Some(condition::Kind::MatchAny(m)) => *values += m.keywords.len() + m.integers.len(),
            Some(condition::Kind::HasId(h)) => *values += h.ids.len(),
            Some(condition::Kind::GeoPolygon(g)) => *values += g.exterior.len(),
            _ => {}
        }
    }
}

/// The cost budget of one search request: `searches` as (`top_k`,
/// `with_vector`) pairs, run on `shards` shards of a `dimension`-d
/// collection.
pub fn search_cost(searches: impl Iterator<Item = (u32, bool)>, shards: u64, dimension: u32) -> Result<(), ValidationError> {
    let (mut cost, mut floats) = (0u64, 0u64);
    for (top_k, with_vector) in searches {
        cost = cost.saturating_add(top_k as u64 * shards.max(1));
        if with_vector {
            floats = floats.saturating_add(top_k as u64 * dimension as u64);
        }
    }
    if cost > MAX_SEARCH_COST {
        return Err(invalid("searches", format!("the request asks for {cost} hits (top_k summed over its searches, times {shards} shards), the limit is {MAX_SEARCH_COST}; ask for fewer or smaller searches")));
    }
    if floats > MAX_RESULT_VECTOR_FLOATS {
        return Err(invalid("with_vector", format!("the request would return up to {floats} vector components, the limit is {MAX_RESULT_VECTOR_FLOATS}; lower top_k or leave vectors out")));
    }
    Ok(())
}

fn filter_at(path: &str, f: &Filter, depth: usize, strict: bool) -> Result<(), ValidationError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(invalid(path, format!("filter nesting exceeds {MAX_FILTER_DEPTH} levels")));
    }
    for (clause, conds) in [("must", &f.must), ("should", &f.should), ("must_not", &f.must_not)] {
        for (i, c) in conds.iter().enumerate() {
            condition_at(&format!("{path}.{clause}[{i}]"), c, depth, strict)?;
        }
    }
    Ok(())
}

/// A payload key path: dot-separated non-empty segments, at most
/// [`MAX_KEY_LEN`] bytes, no control characters (stored index keys use NUL
/// as a separator, and a key that cannot be decoded would keep the shard
/// from opening).
pub fn key(path: &str, k: &str) -> Result<(), ValidationError> {
    key_with(path, k, true)
}

/// [`key`]; when not `strict`, only the path shape (the apply-time rule).
fn key_with(path: &str, k: &str, strict: bool) -> Result<(), ValidationError> {
    if k.is_empty() || k.split('.').any(str::is_empty) {
        return Err(invalid(format!("{path}.key"), format!("key {k:?} is not a payload path (like \"a\" or \"a.b\")")));
    }
    if !strict {
        return Ok(());
    }
    if k.len() > MAX_KEY_LEN {
        return Err(invalid(format!("{path}.key"), format!("key is {} bytes, the limit is {MAX_KEY_LEN}", k.len())));
    }
    if let Some(c) = k.chars().find(|c| c.is_control()) {
        return Err(invalid(format!("{path}.key"), format!("key {k:?} contains the control character {c:?}")));
    }
    Ok(())
}

/// Checks a point's payload before it is proposed: encoded size, nesting
/// depth, and the number of values it holds in each indexed field.
pub fn payload(path: &str, p: &Struct, indexes: &[PayloadIndexSpec]) -> Result<(), ValidationError> {
    let bytes = prost::Message::encoded_len(p);
    if bytes > MAX_PAYLOAD_BYTES {
        return Err(invalid(path, format!("payload is {bytes} bytes encoded, the limit is {MAX_PAYLOAD_BYTES}")));
    }
    let depth = struct_depth(p, 1);
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(invalid(path, format!("payload nests {depth} levels deep, the limit is {MAX_PAYLOAD_DEPTH}")));
    }
    let mut vals = Vec::new();
    for spec in indexes {
        vals.clear();
        crate::payload::lookup(p, &spec.key, &mut vals);
        if vals.len() > MAX_INDEXED_VALUES {
            return Err(invalid(path, format!("indexed field {:?} holds {} values, the limit is {MAX_INDEXED_VALUES}", spec.key, vals.len())));
        }
    }
    Ok(())
}

/// Checks a payload update before it is proposed (`at_apply` false) or
/// when a shard applies it (true: the rules every log entry met). A `set`
/// payload is checked alone here; the merged payload each point ends up
/// with is checked again where it is built ([`payload`]).
pub fn payload_update(u: &crate::v1::UpdatePayloadRequest, indexes: &[PayloadIndexSpec], at_apply: bool) -> Result<(), ValidationError> {
    use crate::v1::update_payload_request::{Op, Selector};
    match &u.selector {
        None => return Err(invalid("selector", "a payload update needs ids, a filter or `all`")),
        Some(Selector::Ids(l)) => {
            if l.ids.len() > MAX_IDS_PER_REQUEST {
                return Err(invalid("ids", format!("{} ids exceed the limit of {MAX_IDS_PER_REQUEST}", l.ids.len())));
            }
            for (i, id) in l.ids.iter().enumerate() {
                PointKey::try_from(id).map_err(|e| invalid(format!("ids[{i}]"), e.to_string()))?;
            }
        }
        Some(Selector::Filter(f)) => {
            filter_with(f, !at_apply)?;
            if f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty() {
                return Err(invalid("filter", "a filter without conditions would match every point; use the `all` selector to mean that"));
            }
        }
        Some(Selector::All(true)) => {}
        Some(Selector::All(false)) => return Err(invalid("all", "the `all` selector must be true")),
    }
    match &u.op {
        None => Err(invalid("op", "a payload update needs set, overwrite, delete_keys or clear")),
        Some(Op::Set(p)) => payload("set", p, indexes),
        Some(Op::Overwrite(p)) => payload("overwrite", p, indexes),
        Some(Op::DeleteKeys(k)) => {
            if k.keys.is_empty() {
                return Err(invalid("delete_keys", "no keys to delete"));
            }
            if k.keys.len() > MAX_PAYLOAD_DELETE_KEYS {
                return Err(invalid("delete_keys", format!("{} keys exceed the limit of {MAX_PAYLOAD_DELETE_KEYS}", k.keys.len())));
            }
            for (i, key) in k.keys.iter().enumerate() {
                key_with(&format!("delete_keys[{i}]"), key, !at_apply)?;
            }
            Ok(())
        }
        Some(Op::Clear(true)) => Ok(()),
        Some(Op::Clear(false)) => Err(invalid("clear", "`clear` must be true")),
    }
}

/// The payload index specs after dropping `drop` and adding `create` to
/// `current` (drops first). A field dropped must be indexed; a field
/// created that is indexed with the same settings is skipped, and with
/// other settings refused. The result still has to pass
/// [`collection_config`].
pub fn payload_index_change(current: &[PayloadIndexSpec], create: &[PayloadIndexSpec], drop: &[String]) -> Result<Vec<PayloadIndexSpec>, ValidationError> {
    if create.is_empty() && drop.is_empty() {
        return Err(invalid("create", "nothing to create or drop"));
    }
    if create.len() > MAX_PAYLOAD_INDEXES || drop.len() > MAX_PAYLOAD_INDEXES {
        return Err(invalid("create", format!("at most {MAX_PAYLOAD_INDEXES} indexes to create and to drop")));
    }
    let mut specs = current.to_vec();
    for (i, k) in drop.iter().enumerate() {
        key(&format!("drop[{i}]"), k)?;
        let before = specs.len();
        specs.retain(|s| &s.key != k);
        if specs.len() == before {
            return Err(invalid(format!("drop[{i}]"), format!("payload field {k:?} is not indexed")));
        }
    }
    for (i, c) in create.iter().enumerate() {
        key(&format!("create[{i}]"), &c.key)?;
        match specs.iter().find(|s| s.key == c.key) {
            Some(s) if s == c => {}
            Some(_) => return Err(invalid(format!("create[{i}]"), format!("payload field {:?} is indexed with other settings; drop it in the same request to change them", c.key))),
            None => specs.push(c.clone()),
        }
    }
    Ok(specs)
}

/// Checks an alias update's shape: 1..=MAX_ALIAS_ACTIONS actions, each
/// with names that follow the collection name rules. Whether the names
/// exist is the cluster map's to say.
pub fn alias_update(u: &crate::v1::UpdateAliasesRequest) -> Result<(), ValidationError> {
    use crate::v1::alias_action::Action;
    if u.actions.is_empty() || u.actions.len() > MAX_ALIAS_ACTIONS {
        return Err(invalid("actions", format!("{} actions is outside 1..={MAX_ALIAS_ACTIONS}", u.actions.len())));
    }
    for (i, a) in u.actions.iter().enumerate() {
        let name = |field: &str, n: &str| collection_name(n).map_err(|e| invalid(format!("actions[{i}].{field}"), e.message));
        match &a.action {
            Some(Action::Put(p)) => {
                name("put.alias", &p.alias)?;
                name("put.collection", &p.collection)?;
            }
            Some(Action::Delete(n)) => name("delete", n)?,
            None => return Err(invalid(format!("actions[{i}]"), "an action is `put` or `delete`")),
        }
    }
    Ok(())
}

/// Nesting depth of a payload, stopping once past the limit (so a hostile
/// payload costs no more than the limit to measure).
fn struct_depth(s: &Struct, at: usize) -> usize {
    if at > MAX_PAYLOAD_DEPTH {
        return at;
    }
    s.fields.values().map(|v| value_depth(v, at)).max().unwrap_or(at)
}

fn value_depth(v: &Value, at: usize) -> usize {
    if at > MAX_PAYLOAD_DEPTH {
        return at;
    }
    match &v.kind {
        Some(value::Kind::StructValue(s)) => struct_depth(s, at + 1),
        Some(value::Kind::ListValue(l)) => l.values.iter().map(|v| value_depth(v, at + 1)).max().unwrap_or(at + 1),
        _ => at,
    }
}

fn condition_at(path: &str, c: &Condition, depth: usize, strict: bool) -> Result<(), ValidationError> {
    match &c.kind {
        None => Err(invalid(path, "condition is empty: set one of filter, match, match_any, range, exists, is_null, has_id, text, values_count, is_empty, datetime_range, geo_radius, geo_bounding_box, geo_polygon")),
        Some(condition::Kind::Filter(f)) => {
            if strict && f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty() {
                // It would match every point (a delete-everything in disguise).
                return Err(invalid(format!("{path}.filter"), "nested filter has no conditions"));
            }
            filter_at(&format!("{path}.filter"), f, depth + 1, strict)
        }
        Some(condition::Kind::Match(m)) => {
            key_with(path, &m.key, strict)?;
            match &m.value {
                None => Err(invalid(format!("{path}.match"), "match has no value: set keyword, integer, boolean, float or prefix")),
                Some(match_condition::Value::Float(x)) if !x.is_finite() => Err(invalid(format!("{path}.match.float"), "float must be finite")),
                Some(match_condition::Value::Prefix(p)) if strict && (p.is_empty() || p.len() > MAX_KEY_LEN) => {
                    Err(invalid(format!("{path}.match.prefix"), format!("prefix is {} bytes, allowed 1..={MAX_KEY_LEN}", p.len())))
                }
                Some(_) => Ok(()),
            }
        }
        Some(condition::Kind::Text(t)) => {
            key_with(path, &t.key, strict)?;
            if strict {
                query_text(&format!("{path}.text.text"), &t.text)?;
            }
            crate::v1::TextMatch::try_from(t.mode).map_err(|_| invalid(format!("{path}.text.mode"), format!("unknown text match mode {}", t.mode)))?;
            Ok(())
        }
        Some(condition::Kind::ValuesCount(v)) => {
            key_with(path, &v.key, strict)?;
            if [v.gt, v.gte, v.lt, v.lte].iter().all(Option::is_none) {
                return Err(invalid(format!("{path}.values_count"), "values_count has no bound: set gt, gte, lt or lte"));
            }
            Ok(())
        }
        Some(condition::Kind::IsEmpty(e)) => key_with(path, &e.key, strict),
        Some(condition::Kind::DatetimeRange(r)) => {
            key_with(path, &r.key, strict)?;
            let bounds = [("gt", &r.gt), ("gte", &r.gte), ("lt", &r.lt), ("lte", &r.lte)];
            if bounds.iter().all(|(_, b)| b.is_none()) {
                return Err(invalid(format!("{path}.datetime_range"), "datetime_range has no bound: set gt, gte, lt or lte"));
            }
            if (r.gt.is_some() && r.gte.is_some()) || (r.lt.is_some() && r.lte.is_some()) {
                return Err(invalid(format!("{path}.datetime_range"), "datetime_range sets two lower or two upper bounds"));
            }
            for (name, b) in bounds {
                if let Some(b) = b {
                    if crate::payload::datetime_micros(b).is_none() {
                        return Err(invalid(format!("{path}.datetime_range.{name}"), format!("{b:?} is not an RFC 3339 datetime or a YYYY-MM-DD date")));
                    }
                }
            }
            Ok(())
        }
        Some(condition::Kind::GeoRadius(g)) => {
            key_with(path, &g.key, strict)?;
            geo(&format!("{path}.geo_radius.center"), &g.center)?;
            if !(g.radius_m.is_finite() && g.radius_m > 0.0 && g.radius_m <= MAX_GEO_RADIUS_M) {
                return Err(invalid(format!("{path}.geo_radius.radius_m"), format!("radius {} m is outside (0, {MAX_GEO_RADIUS_M}]", g.radius_m)));
            }
            Ok(())
        }
        Some(condition::Kind::GeoBoundingBox(g)) => {
            key_with(path, &g.key, strict)?;
            geo(&format!("{path}.geo_bounding_box.top_left"), &g.top_left)?;
            geo(&format!("{path}.geo_bounding_box.bottom_right"), &g.bottom_right)?;
            let (tl, br) = (g.top_left.as_ref().map_or(0.0, |p| p.lat), g.bottom_right.as_ref().map_or(0.0, |p| p.lat));
            if tl < br {
                return Err(invalid(format!("{path}.geo_bounding_box"), format!("top_left.lat {tl} is below bottom_right.lat {br}")));
            }
            Ok(())
        }
        Some(condition::Kind::GeoPolygon(g)) => {
            key_with(path, &g.key, strict)?;
            if g.exterior.len() < 3 || g.exterior.len() > MAX_POLYGON_POINTS {
                return Err(invalid(format!("{path}.geo_polygon.exterior"), format!("{} vertices, allowed 3..={MAX_POLYGON_POINTS}", g.exterior.len())));
            }
            for (i, p) in g.exterior.iter().enumerate() {
                geo(&format!("{path}.geo_polygon.exterior[{i}]"), &Some(*p))?;
            }
            Ok(())
        }
        Some(condition::Kind::MatchAny(m)) => {
            key_with(path, &m.key, strict)?;
            if m.keywords.is_empty() && m.integers.is_empty() {
                return Err(invalid(format!("{path}.match_any"), "match_any lists no keywords or integers"));
            }
            Ok(())
        }
        Some(condition::Kind::Range(r)) => {
            key_with(path, &r.key, strict)?;
            let bounds = [r.gt, r.gte, r.lt, r.lte];
            if bounds.iter().all(Option::is_none) {
                return Err(invalid(format!("{path}.range"), "range has no bound: set gt, gte, lt or lte"));
            }
            if r.gt.is_some() && r.gte.is_some() {
                return Err(invalid(format!("{path}.range"), "range sets both gt and gte"));
            }
            if r.lt.is_some() && r.lte.is_some() {
                return Err(invalid(format!("{path}.range"), "range sets both lt and lte"));
            }
            if bounds.iter().flatten().any(|b| !b.is_finite()) {
                return Err(invalid(format!("{path}.range"), "range bounds must be finite"));
            }
            Ok(())
        }
        Some(condition::Kind::Exists(e)) => key_with(path, &e.key, strict),
        Some(condition::Kind::IsNull(e)) => key_with(path, &e.key, strict),
        Some(condition::Kind::HasId(h)) => {
            if strict && h.ids.is_empty() {
                return Err(invalid(format!("{path}.has_id"), "has_id lists no ids"));
            }
            for (i, id) in h.ids.iter().enumerate() {
                PointKey::try_from(id).map_err(|e| invalid(format!("{path}.has_id.ids[{i}]"), e.to_string()))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ExistsCondition, MatchCondition, RangeCondition};

    fn cond(kind: condition::Kind) -> Condition {
        Condition { kind: Some(kind) }
    }

    #[test]
    fn filters_table() {
        let ok = Filter {
            must: vec![cond(condition::Kind::Match(MatchCondition { key: "a.b".into(), value: Some(match_condition::Value::Keyword("x".into())) }))],
            should: vec![cond(condition::Kind::Range(RangeCondition { key: "n".into(), gte: Some(1.0), ..Default::default() }))],
            must_not: vec![cond(condition::Kind::Exists(ExistsCondition { key: "z".into() }))],
        };
        assert!(filter(&ok).is_ok());
        let bad: Vec<(Filter, &str)> = vec![
            (Filter { must: vec![Condition { kind: None }], ..Default::default() }, "filter.must[0]"),
            (Filter { should: vec![cond(condition::Kind::Range(RangeCondition { key: "n".into(), ..Default::default() }))], ..Default::default() }, "filter.should[0].range"),
            (Filter { must: vec![cond(condition::Kind::Range(RangeCondition { key: "n".into(), gt: Some(1.0), gte: Some(2.0), ..Default::default() }))], ..Default::default() }, "filter.must[0].range"),
            (Filter { must: vec![cond(condition::Kind::Range(RangeCondition { key: "n".into(), lt: Some(f64::NAN), ..Default::default() }))], ..Default::default() }, "filter.must[0].range"),
            (Filter { must: vec![cond(condition::Kind::Exists(ExistsCondition { key: "a..b".into() }))], ..Default::default() }, "filter.must[0].key"),
            (Filter { must: vec![cond(condition::Kind::Match(MatchCondition { key: "a".into(), value: None }))], ..Default::default() }, "filter.must[0].match"),
        ];
        for (f, field) in bad {
            assert_eq!(filter(&f).unwrap_err().field, field);
        }
        let nul = Filter { must: vec![cond(condition::Kind::Exists(ExistsCondition { key: "a\u{0}b".into() }))], ..Default::default() };
        assert!(filter(&nul).unwrap_err().message.contains("control character"));
        let long = Filter { must: vec![cond(condition::Kind::Exists(ExistsCondition { key: "k".repeat(MAX_KEY_LEN + 1) }))], ..Default::default() };
        assert!(filter(&long).unwrap_err().message.contains("limit"));
        let mut deep = Filter { must: vec![cond(condition::Kind::Exists(ExistsCondition { key: "x".into() }))], ..Default::default() };
        for _ in 0..MAX_FILTER_DEPTH {
            deep = Filter { must: vec![cond(condition::Kind::Filter(deep))], ..Default::default() };
        }
        assert!(filter(&deep).unwrap_err().message.contains("nesting"));
    }

    /// Rules newer than the log are not applied again at apply time.
    #[test]
    fn apply_time_checks_are_the_old_ones() {
        let tab = Filter { must: vec![cond(condition::Kind::Exists(ExistsCondition { key: "a\tb".into() }))], ..Default::default() };
        assert!(filter(&tab).is_err());
        assert!(filter_at_apply(&tab).is_ok(), "an entry an older node accepted applies everywhere");
        let empty_nested = Filter { must: vec![cond(condition::Kind::Filter(Filter::default()))], ..Default::default() };
        assert!(filter(&empty_nested).unwrap_err().message.contains("no conditions"));
        assert!(filter_at_apply(&empty_nested).is_ok());
        let no_ids = Filter { must_not: vec![cond(condition::Kind::HasId(crate::v1::HasIdCondition { ids: vec![] }))], ..Default::default() };
        assert!(filter(&no_ids).unwrap_err().message.contains("no ids"));
        // Structure still matters at apply.
        let broken = Filter { must: vec![Condition { kind: None }], ..Default::default() };
        assert!(filter_at_apply(&broken).is_err());
        assert!(filter(&tab).is_err(), "and the strict rules are back after an apply-time check");
    }

    #[test]
    fn filter_size_and_search_cost() {
        let exists = |k: &str| cond(condition::Kind::Exists(ExistsCondition { key: k.into() }));
        let wide = Filter { should: (0..=MAX_FILTER_CONDITIONS).map(|i| exists(&format!("k{i}"))).collect(), ..Default::default() };
        assert!(filter(&wide).unwrap_err().message.contains("more than 1024 conditions"));
        let any = |n: usize| cond(condition::Kind::MatchAny(crate::v1::MatchAnyCondition { key: "k".into(), integers: (0..n as i64).collect(), ..Default::default() }));
        let many = Filter { must: vec![any(MAX_FILTER_VALUES / 2), any(MAX_FILTER_VALUES / 2 + 1)], ..Default::default() };
        assert!(filter(&many).unwrap_err().message.contains("match_any, has_id and geo_polygon"));
        let nested = Filter { must: vec![cond(condition::Kind::Filter(Filter { must: vec![any(10)], ..Default::default() }))], ..Default::default() };
        assert!(filter(&nested).is_ok());
        // 1,024 searches x top_k 10,000 on 8 shards: 82M hits.
        assert!(search_cost((0..1024).map(|_| (10_000, false)), 8, 128).unwrap_err().message.contains("the limit is"));
        assert!(search_cost((0..100).map(|_| (10, false)), 8, 128).is_ok());
        assert!(search_cost((0..10).map(|_| (10_000, true)), 1, 1536).unwrap_err().field == "with_vector");
        assert!(search_cost((0..10).map(|_| (10_000, true)), 1, 64).is_ok());
    }

    #[test]
    fn configs_and_vectors() {
        let mut c = CollectionConfig { name: "docs".into(), dimension: 3, metric: Metric::Cosine as i32, ..Default::default() };
        let n = collection_config(&c).unwrap();
        assert_eq!(n.shard_count, 1);
        assert_eq!(n.hnsw.unwrap().m, DEFAULT_HNSW_M);
        assert_eq!(n.storage, VectorStorage::F32 as i32);
        c.metric = 9;
        assert!(collection_config(&c).unwrap_err().message.contains("unknown metric 9"));
        c.metric = 0;
        assert_eq!(collection_config(&c).unwrap_err().field, "metric");
        c.metric = 1;
        c.name = "a/b".into();
        assert_eq!(collection_config(&c).unwrap_err().field, "name");
        c.name = "ok".into();
        c.dimension = MAX_DIMENSION + 1;
        assert_eq!(collection_config(&c).unwrap_err().field, "dimension");
        assert!(vector("v", &[1.0, f32::NAN], 2, Metric::Dot).unwrap_err().message.contains("component 1 is NaN"));
        assert!(vector("v", &[1.0, f32::INFINITY], 2, Metric::Dot).is_err());
        assert!(vector("v", &[1.0], 2, Metric::Dot).unwrap_err().message.contains("1 dimensions"));
        assert!(vector("v", &[0.0, 0.0], 2, Metric::Cosine).is_err());
        assert!(vector("v", &[0.0, 0.0], 2, Metric::L2).is_ok());
        // A payload index key with a NUL once bricked every node hosting
        // the collection (the stored index key could not be decoded).
        c.dimension = 3;
        c.payload_indexes = vec![PayloadIndexSpec { key: "a\u{0}b".into(), r#type: PayloadIndexType::Keyword as i32, text: None }];
        assert_eq!(collection_config(&c).unwrap_err().field, "payload_indexes[0].key");
        c.payload_indexes[0].key = "tab\there".into();
        assert!(collection_config(&c).unwrap_err().message.contains("control character"));
        c.payload_indexes[0].key = "ok.path".into();
        assert!(collection_config(&c).is_ok());
        assert!(search_params("", 0, None).is_err());
        assert!(search_params("", MAX_TOP_K + 1, None).is_err());
        assert!(search_params("", 10, Some(0)).is_err());
        assert!(search_params("", 10, Some(64)).is_ok());
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;
    use serde_json::json;

    fn st(j: serde_json::Value) -> Struct {
        Struct::try_from(&j).unwrap()
    }

    fn spec(k: &str) -> PayloadIndexSpec {
        PayloadIndexSpec { key: k.into(), r#type: PayloadIndexType::Keyword as i32, text: None }
    }

    #[test]
    fn payload_limits() {
        let ok = st(json!({"a": 1, "tags": ["x", "y"], "n": {"m": [1, 2, {"z": true}]}}));
        assert!(payload("p", &ok, &[spec("tags")]).is_ok());
        // Size.
        let big = st(json!({"text": "x".repeat(MAX_PAYLOAD_BYTES)}));
        assert!(payload("p", &big, &[]).unwrap_err().message.contains("bytes encoded"));
        // Depth: objects and lists both count.
        let mut deep = json!(1);
        for i in 0..MAX_PAYLOAD_DEPTH {
            deep = if i % 2 == 0 { json!({"d": deep}) } else { json!([deep]) };
        }
        assert!(payload("p", &st(json!({"d": deep.clone()})), &[]).unwrap_err().message.contains("levels deep"));
        let mut shallow = json!(1);
        for _ in 0..MAX_PAYLOAD_DEPTH - 1 {
            shallow = json!({"d": shallow});
        }
        assert!(payload("p", &st(shallow), &[]).is_ok());
        // Values per indexed field; unindexed fields may hold more.
        let many: Vec<String> = (0..=MAX_INDEXED_VALUES).map(|i| i.to_string()).collect();
        let p = st(json!({"tags": many}));
        assert!(payload("p", &p, &[spec("tags")]).unwrap_err().message.contains("holds 1025 values"));
        assert!(payload("p", &p, &[spec("other")]).is_ok());
    }
}
