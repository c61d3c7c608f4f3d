//! Builders for `Points/Query` (docs/query.md): stages, fusion, BM25,
//! recommend, MMR and group-by.
use shoal_proto::v1::query::Kind;
use shoal_proto::v1::*;

/// One stage's query.
pub struct Q;

fn input_vector(v: Vec<f32>) -> Option<VectorInput> {
    Some(VectorInput { kind: Some(vector_input::Kind::Vector(DenseVector { values: v })) })
}

/// A vector input given by a literal vector or a stored point's id.
pub fn by_vector(v: Vec<f32>) -> VectorInput {
    input_vector(v).expect("set above")
}
pub fn by_id(id: impl Into<PointId>) -> VectorInput {
    VectorInput { kind: Some(vector_input::Kind::Id(id.into())) }
}

impl Q {
    pub fn nearest(v: Vec<f32>) -> Query {
        Query { kind: Some(Kind::Nearest(NearestQuery { vector: input_vector(v), using: String::new() })) }
    }
    /// Nearest by a named dense vector.
    pub fn nearest_using(using: impl Into<String>, v: VectorInput) -> Query {
        Query { kind: Some(Kind::Nearest(NearestQuery { vector: Some(v), using: using.into() })) }
    }
    /// MaxSim against a named multi-vector (late interaction; a re-score
    /// over prefetches, or a bounded scan as a leaf).
    pub fn maxsim(using: impl Into<String>, rows: Vec<Vec<f32>>) -> Query {
        Query { kind: Some(Kind::Multivector(MultiVectorQuery { using: using.into(), rows: rows.into_iter().map(|values| DenseVector { values }).collect() })) }
    }
    /// Nearest to a stored point's vector (the point itself is left out).
    pub fn nearest_to(id: impl Into<PointId>) -> Query {
        Query { kind: Some(Kind::Nearest(NearestQuery { vector: Some(by_id(id)), using: String::new() })) }
    }
    /// BM25 over a TEXT-indexed field, with the default k1 = 1.2, b = 0.75.
    pub fn bm25(key: impl Into<String>, text: impl Into<String>) -> Query {
        Query { kind: Some(Kind::Bm25(Bm25Query { key: key.into(), text: text.into(), k1: None, b: None })) }
    }
    pub fn bm25_with(key: impl Into<String>, text: impl Into<String>, k1: f32, b: f32) -> Query {
        Query { kind: Some(Kind::Bm25(Bm25Query { key: key.into(), text: text.into(), k1: Some(k1), b: Some(b) })) }
    }
    /// Top points by a named sparse vector's dot product with this one.
    pub fn sparse(name: impl Into<String>, indices: Vec<u32>, values: Vec<f32>) -> Query {
        Query { kind: Some(Kind::Sparse(SparseQuery { name: name.into(), vector: Some(SparseVector { indices, values }) })) }
    }
    /// Reciprocal rank fusion of the prefetches (k = 60, equal weights).
    pub fn rrf() -> Query {
        Query { kind: Some(Kind::Fusion(FusionQuery { method: FusionMethod::Rrf as i32, weights: vec![], rrf_k: None })) }
    }
    pub fn rrf_weighted(weights: Vec<f32>, k: Option<u32>) -> Query {
        Query { kind: Some(Kind::Fusion(FusionQuery { method: FusionMethod::Rrf as i32, weights, rrf_k: k })) }
    }
    /// Distribution-based score fusion of the prefetches.
    pub fn dbsf(weights: Vec<f32>) -> Query {
        Query { kind: Some(Kind::Fusion(FusionQuery { method: FusionMethod::Dbsf as i32, weights, rrf_k: None })) }
    }
    pub fn recommend(positive: Vec<VectorInput>, negative: Vec<VectorInput>, strategy: RecommendStrategy) -> Query {
        Query { kind: Some(Kind::Recommend(RecommendQuery { positive, negative, strategy: strategy as i32, using: String::new() })) }
    }
    /// Recommend by a named dense vector.
    pub fn recommend_using(using: impl Into<String>, positive: Vec<VectorInput>, negative: Vec<VectorInput>, strategy: RecommendStrategy) -> Query {
        Query { kind: Some(Kind::Recommend(RecommendQuery { positive, negative, strategy: strategy as i32, using: using.into() })) }
    }
    pub fn mmr(vector: VectorInput, diversity: f32, candidates: u32) -> Query {
        Query { kind: Some(Kind::Mmr(MmrQuery { vector: Some(vector), diversity: Some(diversity), candidates, using: String::new() })) }
    }
}

/// A prefetch stage.
#[derive(Debug, Clone)]
pub struct PrefetchBuilder(Prefetch);

impl PrefetchBuilder {
    pub fn new(q: Query, limit: u32) -> Self {
        PrefetchBuilder(Prefetch { query: Some(q), limit, ..Default::default() })
    }
    pub fn filter(mut self, f: Filter) -> Self {
        self.0.filter = Some(f);
        self
    }
    pub fn prefetch(mut self, p: PrefetchBuilder) -> Self {
        self.0.prefetch.push(p.0);
        self
    }
    pub fn score_threshold(mut self, t: f32) -> Self {
        self.0.score_threshold = Some(t);
        self
    }
    pub fn exact(mut self) -> Self {
        self.0.params.get_or_insert_with(Default::default).exact = true;
        self
    }
    pub fn ef(mut self, ef: u32) -> Self {
        self.0.params.get_or_insert_with(Default::default).ef = Some(ef);
        self
    }
    /// Quantized storage: candidates per result taken before re-scoring.
    pub fn oversampling(mut self, factor: f32) -> Self {
        self.0.params.get_or_insert_with(Default::default).oversampling = Some(factor);
        self
    }
    /// Quantized storage: re-score with full vectors (on by default).
    /// (Not [`QueryBuilder::rescore`], which re-scores by MaxSim.)
    pub fn quantized_rescore(mut self, on: bool) -> Self {
        self.0.params.get_or_insert_with(Default::default).rescore = Some(on);
        self
    }
    pub fn build(self) -> Prefetch {
        self.0
    }
}

/// A whole query request.
#[derive(Debug, Clone)]
pub struct QueryBuilder(pub(crate) QueryPointsRequest);

impl QueryBuilder {
    pub fn new(collection: impl Into<String>, q: Query) -> Self {
        QueryBuilder(QueryPointsRequest { collection: collection.into(), query: Some(q), ..Default::default() })
    }
    /// Makes the request so far a prefetch of `limit` candidates that `q`
    /// re-scores (e.g. a MaxSim stage over a dense or hybrid search).
    pub fn rescore(self, q: Query, limit: u32) -> Self {
        let inner = self.0;
        let stage = Prefetch { prefetch: inner.prefetch, query: inner.query, filter: None, limit, score_threshold: None, params: inner.params };
        QueryBuilder(QueryPointsRequest { prefetch: vec![stage], query: Some(q), ..inner })
    }
    pub fn prefetch(mut self, p: PrefetchBuilder) -> Self {
        self.0.prefetch.push(p.0);
        self
    }
    /// The collection this query targets.
    pub fn collection(mut self, name: impl Into<String>) -> Self {
        self.0.collection = name.into();
        self
    }
    pub fn filter(mut self, f: Filter) -> Self {
        self.0.filter = Some(f);
        self
    }
    pub fn limit(mut self, n: u32) -> Self {
        self.0.limit = n;
        self
    }
    pub fn offset(mut self, n: u32) -> Self {
        self.0.offset = n;
        self
    }
    pub fn score_threshold(mut self, t: f32) -> Self {
        self.0.score_threshold = Some(t);
        self
    }
    pub fn with_payload(mut self) -> Self {
        self.0.with_payload = true;
        self
    }
    /// Return only these top-level payload keys (implies with_payload).
    pub fn payload_keys(mut self, keys: &[&str]) -> Self {
        self.0.with_payload = true;
        self.0.payload_keys = keys.iter().map(|k| k.to_string()).collect();
        self
    }
    pub fn with_vector(mut self) -> Self {
        self.0.with_vector = true;
        self
    }
    pub fn exact(mut self) -> Self {
        self.0.params.get_or_insert_with(Default::default).exact = true;
        self
    }
    pub fn ef(mut self, ef: u32) -> Self {
        self.0.params.get_or_insert_with(Default::default).ef = Some(ef);
        self
    }
    /// Quantized storage: candidates per result taken before re-scoring.
    pub fn oversampling(mut self, factor: f32) -> Self {
        self.0.params.get_or_insert_with(Default::default).oversampling = Some(factor);
        self
    }
    /// Quantized storage: re-score with full vectors (on by default).
    /// (Not [`QueryBuilder::rescore`], which re-scores by MaxSim.)
    pub fn quantized_rescore(mut self, on: bool) -> Self {
        self.0.params.get_or_insert_with(Default::default).rescore = Some(on);
        self
    }
    pub fn group_by(mut self, key: impl Into<String>, group_size: u32) -> Self {
        self.0.group_by = Some(GroupBy { key: key.into(), group_size });
        self
    }
    pub fn consistency(mut self, c: Consistency) -> Self {
        self.0.consistency = c as i32;
        self
    }
    pub fn build(self) -> QueryPointsRequest {
        self.0
    }
}
