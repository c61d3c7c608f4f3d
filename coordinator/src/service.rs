//! Handlers of the public `shoal.v1` services: validate, route, fan out,
//! merge.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::future::try_join_all;
use shoal_proto::internal::v1::*;
use shoal_proto::limits::*;
use shoal_proto::v1::cluster_server::Cluster;
use shoal_proto::v1::collections_server::Collections;
use shoal_proto::v1::points_server::Points;
use shoal_proto::v1::*;
use shoal_proto::validate::{self, invalid};
use shoal_proto::PointKey;
use tonic::{Request, Response, Status};

use crate::error::{CoordError, Result};
use crate::merge;
use crate::router::{CollectionRoute, Router, Target};
use crate::stream;

#[derive(Clone)]
pub struct Api {
    pub router: Arc<Router>,
}

fn bad(field: impl Into<String>, msg: impl Into<String>) -> CoordError {
    CoordError::Invalid(invalid(field, msg))
}

fn filter_opt(f: &Option<Filter>) -> Result<()> {
    if let Some(f) = f {
        validate::filter(f)?;
    }
    Ok(())
}

fn keys(ids: &[PointId], field: &str) -> Result<Vec<PointKey>> {
    if ids.is_empty() || ids.len() > MAX_IDS_PER_REQUEST {
        return Err(bad(field, format!("{} ids is outside 1..={MAX_IDS_PER_REQUEST}", ids.len())));
    }
    ids.iter().enumerate().map(|(i, id)| PointKey::try_from(id).map_err(|e| bad(format!("{field}[{i}]"), e.to_string()))).collect()
}

impl Api {
    /// [`shoal_common::auth::authorize`] for a collection named directly
    /// or through an alias: a credential limited to some collections must
    /// cover both the alias and the collection it stands for.
    pub(crate) fn authorize(&self, ext: &http::Extensions, name: &str) -> std::result::Result<(), Status> {
        shoal_common::auth::authorize(ext, name)?;
        match self.alias_target(name) {
            Some(t) => shoal_common::auth::authorize(ext, &t),
            None => Ok(()),
        }
    }

    /// The collection `name` stands for when it is an alias (as this
    /// coordinator's map says).
    pub(crate) fn alias_target(&self, name: &str) -> Option<String> {
        self.router.collection(name).ok().map(|r| r.config.name.clone()).filter(|t| t != name)
    }

    async fn route(&self, name: &str) -> Result<Arc<CollectionRoute>> {
        validate::collection_name(name).map_err(|e| bad("collection", e.message))?;
        self.router.collection_fresh(name).await
    }

    /// Runs `op` with the collection's current layout, and again with the
    /// new one when a split changes it under the request
    /// ([`CoordError::Rerouted`]), within the deadline. Every `op` is safe
    /// to repeat: reads are, and writes are idempotent.
    async fn routed<T, F, Fut>(&self, name: &str, op: F) -> Result<T>
    where
        F: Fn(Arc<CollectionRoute>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.router.deadline;
        loop {
            let route = self.route(name).await?;
            match op(route).await {
                Err(CoordError::Rerouted(_)) if tokio::time::Instant::now() < deadline => {}
                r => return r,
            }
        }
    }

    fn shard_ids(route: &CollectionRoute) -> Vec<u32> {
        route.shards.ranges().iter().map(|r| r.shard_id).collect()
    }

    async fn count_collection(&self, route: &CollectionRoute, filter: Option<Filter>, consistency: i32) -> Result<u64> {
        let calls = Self::shard_ids(route).into_iter().map(|sid| {
            let filter = filter.clone();
            async move {
                self.router
                    .call_shard(route, sid, Target::for_read(consistency), |mut c, shard| {
                        let filter = filter.clone();
                        async move { c.count(ShardCountRequest { shard: Some(shard), filter, consistency }).await }
                    })
                    .await
            }
        });
        Ok(try_join_all(calls).await?.into_iter().map(|r| r.count).sum())
    }

    async fn info(&self, route: &CollectionRoute) -> Result<CollectionInfo> {
        Ok(CollectionInfo { config: Some(route.config.clone()), points_count: self.count_collection(route, None, Consistency::Leader as i32).await?, shard_count: route.shards.ranges().len() as u32 })
    }

    fn validate_search(route: &CollectionRoute, s: &SearchPointsRequest, field: &str) -> Result<()> {
        let (metric, dimension) = match crate::query::space_of(&route.config, &s.vector_name) {
            Some((m, d, false)) => (m, d),
            Some(_) => return Err(bad(format!("{field}vector_name"), format!("{:?} is a multi-vector: query it with Points/Query (multivector)", s.vector_name))),
            None => return Err(bad(format!("{field}vector_name"), format!("collection {:?} declares no vector {:?}", route.config.name, s.vector_name))),
        };
        validate::vector(&format!("{field}vector"), &s.vector, dimension, metric)?;
        validate::search_params(field, s.top_k, s.ef)?;
        validate::oversampling(field, s.oversampling)?;
        if let Some(t) = s.score_threshold {
            if !t.is_finite() {
                return Err(bad(format!("{field}score_threshold"), "score_threshold must be finite"));
            }
        }
        Consistency::try_from(s.consistency).map_err(|_| bad(format!("{field}consistency"), format!("unknown consistency {}", s.consistency)))?;
        filter_opt(&s.filter)
    }

    /// One search: validated against the collection, fanned out, merged.
    pub(crate) async fn search_one(&self, req: &SearchPointsRequest) -> Result<Vec<ScoredPoint>> {
        let mut out = self
            .routed(&req.collection, |route| async move {
                Self::validate_search(&route, req, "")?;
                self.search_all(&route, vec![req.clone()]).await
            })
            .await?;
        Ok(out.pop().map(|r| r.results).unwrap_or_default())
    }

    /// Fans `searches` out to every shard and merges each search's results.
    pub(crate) async fn search_all(&self, route: &CollectionRoute, searches: Vec<SearchPointsRequest>) -> Result<Vec<SearchResult>> {
        // Every shard computes each search's top_k: bound the whole fan-out.
        validate::search_cost(searches.iter().map(|s| (s.top_k, s.with_vector)), route.shards.ranges().len() as u64, route.config.dimension)?;
        // One consistency per fan-out: the strongest any search asks for.
        let target = if searches.iter().all(|s| Target::for_read(s.consistency) == Target::Any) { Target::Any } else { Target::Leader };
        let searches = &searches;
        let calls = Self::shard_ids(route).into_iter().map(|sid| async move {
            self.router
                .call_shard(route, sid, target, |mut c, shard| {
                    // Each attempt sends its own copy: the request is moved
                    // into the call.
                    let searches = searches.clone();
                    async move { c.search(ShardSearchRequest { shard: Some(shard), searches }).await }
                })
                .await
        });
        let mut per_shard = try_join_all(calls).await?;
        let merged: Vec<SearchResult> = searches
            .iter()
            .enumerate()
            .map(|(i, s)| {
                // The order of the vector searched (a named one has its own metric).
                let higher = crate::query::space_of(&route.config, &s.vector_name).map_or(route.metric, |x| x.0) != Metric::L2;
                let lists = per_shard.iter_mut().map(|r| r.results.get_mut(i).map(|x| std::mem::take(&mut x.results)).unwrap_or_default()).collect();
                SearchResult { results: merge::merge_top_k(lists, s.top_k as usize, higher, s.score_threshold) }
            })
            .collect();
        let bytes: usize = merged.iter().map(prost::Message::encoded_len).sum();
        if bytes > RESPONSE_BYTES {
            return Err(CoordError::TooLarge(format!("the search answer is {bytes} bytes, the limit is {RESPONSE_BYTES}; lower top_k or leave payloads or vectors out")));
        }
        Ok(merged)
    }

    /// Points by id from their shards, in `ks` order (absent ids left out).
    pub(crate) async fn get_points(&self, route: &CollectionRoute, ks: &[PointKey], with_payload: bool, with_vector: bool, consistency: i32) -> Result<Vec<RetrievedPoint>> {
        let mut by_shard: BTreeMap<u32, Vec<PointId>> = BTreeMap::new();
        for k in ks {
            by_shard.entry(route.shards.shard_for(k)).or_default().push(k.to_proto());
        }
        let calls = by_shard.into_iter().map(|(sid, ids)| async move {
            self.router
                .call_shard(route, sid, Target::for_read(consistency), |mut c, shard| {
                    let r = ShardGetRequest { shard: Some(shard), ids: ids.clone(), with_payload, with_vector, consistency };
                    async move { c.get(r).await }
                })
                .await
        });
        let mut found: HashMap<PointKey, RetrievedPoint> = HashMap::new();
        for r in try_join_all(calls).await? {
            for p in r.points {
                if let Some(k) = p.id.as_ref().and_then(|i| PointKey::try_from(i).ok()) {
                    found.insert(k, p);
                }
            }
        }
        let points: Vec<RetrievedPoint> = ks.iter().filter_map(|k| found.remove(k)).collect();
        let bytes: usize = points.iter().map(prost::Message::encoded_len).sum();
        if bytes > RESPONSE_BYTES {
            return Err(CoordError::TooLarge(format!("the points asked for are {bytes} bytes, the limit is {RESPONSE_BYTES}; ask for fewer ids or leave payloads or vectors out")));
        }
        Ok(points)
    }

    async fn write(&self, route: &CollectionRoute, by_shard: BTreeMap<u32, ShardWriteRequest>) -> Result<u64> {
        let calls = by_shard.into_iter().map(|(sid, req)| async move {
            // A shard's part of a large upsert goes as several writes of at
            // most WRITE_CHUNK_BYTES, in order (a later version of an id
            // still wins): every Raft entry stays small enough to
            // replicate within a heartbeat (docs/limits.md).
            let mut affected = 0;
            for part in chunks(req, WRITE_CHUNK_BYTES) {
                // One id per part, kept across the retries below: a part
                // whose first attempt committed unseen applies once.
                let part = ShardWriteRequest { request_id: uuid::Uuid::new_v4().into_bytes().to_vec(), ..part };
                let r = self
                    .router
                    .call_shard(route, sid, Target::Leader, |mut c, shard| {
                        let req = ShardWriteRequest { shard: Some(shard), ..part.clone() };
                        async move { c.write(req).await }
                    })
                    .await?;
                affected += r.affected;
            }
            Ok::<u64, CoordError>(affected)
        });
        Ok(try_join_all(calls).await?.into_iter().sum())
    }
}

#[tonic::async_trait]
impl Collections for Api {
    async fn create(&self, req: Request<CreateCollectionRequest>) -> std::result::Result<Response<CreateCollectionResponse>, Status> {
        let name = req.get_ref().config.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        shoal_common::audit::note(req.extensions(), Some(&name), "create collection");
        let req = req.into_inner();
        let config = req.config.as_ref().ok_or_else(|| bad("config", "collection config is missing"))?;
        validate::collection_config(config).map_err(CoordError::from)?;
        self.router
            .change_map("create collection", |mut c| {
                let r = req.clone();
                async move { c.create_collection(r).await }
            })
            .await?;
        let info = self.routed(&config.name, |route| async move { self.info(&route).await }).await?;
        Ok(Response::new(CreateCollectionResponse { collection: Some(info) }))
    }

    async fn update_aliases(&self, req: Request<UpdateAliasesRequest>) -> std::result::Result<Response<UpdateAliasesResponse>, Status> {
        shoal_common::audit::note(req.extensions(), None, format!("update aliases: {}", serde_json::to_string(&format!("{:?}", req.get_ref().actions)).unwrap_or_default()));
        // A caller limited to some collections may name only those: as
        // aliases, as new targets, and as the targets an alias leaves.
        self.router.refresh().await?;
        let current = self.router.map().aliases;
        let target_of = |alias: &str| current.iter().find(|a| a.alias == alias).map(|a| a.collection.clone());
        for a in &req.get_ref().actions {
            let (alias, to) = match &a.action {
                Some(alias_action::Action::Put(p)) => (&p.alias, Some(&p.collection)),
                Some(alias_action::Action::Delete(n)) => (n, None),
                None => continue,
            };
            shoal_common::auth::authorize(req.extensions(), alias)?;
            for c in to.cloned().into_iter().chain(target_of(alias)) {
                shoal_common::auth::authorize(req.extensions(), &c)?;
            }
        }
        let req = req.into_inner();
        validate::alias_update(&req).map_err(CoordError::from)?;
        self.router
            .change_map("update aliases", |mut c| {
                let r = req.clone();
                async move { c.update_aliases(r).await }
            })
            .await?;
        Ok(Response::new(UpdateAliasesResponse {}))
    }

    async fn list_aliases(&self, req: Request<ListAliasesRequest>) -> std::result::Result<Response<ListAliasesResponse>, Status> {
        // A caller limited to some collections sees the aliases of those.
        let access = shoal_common::auth::access(req.extensions());
        let want = req.into_inner().collection;
        if !want.is_empty() {
            validate::collection_name(&want).map_err(|e| bad("collection", e.message))?;
        }
        // The map as cached (reloaded every second): a listing any
        // credential may ask for must not make every node send its map.
        let aliases = self.router.map().aliases.into_iter().filter(|a| (want.is_empty() || a.collection == want) && access.may_see(&a.collection) && access.may_see(&a.alias)).collect();
        Ok(Response::new(ListAliasesResponse { aliases }))
    }

    async fn update_payload_indexes(&self, req: Request<UpdatePayloadIndexesRequest>) -> std::result::Result<Response<UpdatePayloadIndexesResponse>, Status> {
        shoal_common::audit::note(req.extensions(), Some(&req.get_ref().collection), "update payload indexes");
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        let mut req = req.into_inner();
        // An alias names its collection here too.
        req.collection = self.route(&req.collection).await?.config.name.clone();
        self.router
            .change_map("update payload indexes", |mut c| {
                let r = req.clone();
                async move { c.update_payload_indexes(r).await }
            })
            .await?;
        let info = self.routed(&req.collection, |route| async move { self.info(&route).await }).await?;
        Ok(Response::new(UpdatePayloadIndexesResponse { collection: Some(info) }))
    }

    async fn update_storage(&self, req: Request<UpdateStorageRequest>) -> std::result::Result<Response<UpdateStorageResponse>, Status> {
        shoal_common::audit::note(req.extensions(), Some(&req.get_ref().collection), "update storage");
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        let mut req = req.into_inner();
        req.collection = self.route(&req.collection).await?.config.name.clone();
        self.router
            .change_map("update storage", |mut c| {
                let r = req.clone();
                async move { c.update_storage(r).await }
            })
            .await?;
        let info = self.routed(&req.collection, |route| async move { self.info(&route).await }).await?;
        Ok(Response::new(UpdateStorageResponse { collection: Some(info) }))
    }

    async fn update_vectors(&self, req: Request<UpdateVectorsRequest>) -> std::result::Result<Response<UpdateVectorsResponse>, Status> {
        shoal_common::audit::note(req.extensions(), Some(&req.get_ref().collection), "update vectors");
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        let mut req = req.into_inner();
        req.collection = self.route(&req.collection).await?.config.name.clone();
        self.router
            .change_map("update vectors", |mut c| {
                let r = req.clone();
                async move { c.update_vectors(r).await }
            })
            .await?;
        let info = self.routed(&req.collection, |route| async move { self.info(&route).await }).await?;
        Ok(Response::new(UpdateVectorsResponse { collection: Some(info) }))
    }

    async fn get(&self, req: Request<GetCollectionRequest>) -> std::result::Result<Response<GetCollectionResponse>, Status> {
        self.authorize(req.extensions(), &req.get_ref().name)?;
        let name = req.into_inner().name;
        let info = self.routed(&name, |route| async move { self.info(&route).await }).await?;
        Ok(Response::new(GetCollectionResponse { collection: Some(info) }))
    }

    async fn list(&self, req: Request<ListCollectionsRequest>) -> std::result::Result<Response<ListCollectionsResponse>, Status> {
        // A caller limited to some collections sees only those.
        let access = shoal_common::auth::access(req.extensions());
        self.router.refresh().await?;
        let mut names: Vec<String> = self.router.map().collections.iter().filter_map(|c| c.config.as_ref().map(|c| c.name.clone())).filter(|n| access.may_see(n)).collect();
        names.sort();
        // Every collection at once: one slow node costs the listing one
        // wait, not one per collection.
        let collections = try_join_all(names.iter().map(|n| self.routed(n, |route| async move { self.info(&route).await }))).await?;
        Ok(Response::new(ListCollectionsResponse { collections }))
    }

    async fn delete(&self, req: Request<DeleteCollectionRequest>) -> std::result::Result<Response<DeleteCollectionResponse>, Status> {
        shoal_common::audit::note(req.extensions(), Some(&req.get_ref().name), "delete collection");
        let req = req.into_inner();
        validate::collection_name(&req.name).map_err(|e| bad("name", e.message))?;
        self.router
            .change_map("delete collection", |mut c| {
                let r = req.clone();
                async move { c.delete_collection(r).await }
            })
            .await?;
        Ok(Response::new(DeleteCollectionResponse {}))
    }
}

#[tonic::async_trait]
impl Points for Api {
    async fn upsert(&self, req: Request<UpsertPointsRequest>) -> std::result::Result<Response<WriteResponse>, Status> {
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        let req = req.into_inner();
        if req.points.is_empty() {
            return Err(bad("points", "upsert batch is empty").into());
        }
        if req.points.len() > MAX_UPSERT_BATCH {
            return Err(bad("points", format!("{} points exceed the batch limit of {MAX_UPSERT_BATCH}; split the batch", req.points.len())).into());
        }
        let points = &req.points;
        let affected = self
            .routed(&req.collection, |route| async move {
                let mut by_shard: BTreeMap<u32, ShardWriteRequest> = BTreeMap::new();
                for (i, p) in points.iter().enumerate() {
                    let id = p.id.as_ref().ok_or_else(|| bad(format!("points[{i}].id"), "point id is missing"))?;
                    let key = PointKey::try_from(id).map_err(|e| bad(format!("points[{i}].id"), e.to_string()))?;
                    validate::vector(&format!("points[{i}].vector"), &p.vector, route.config.dimension, route.metric).map_err(CoordError::from)?;
                    validate::point_sparse(&format!("points[{i}]"), &p.sparse, &route.config.sparse_vectors).map_err(CoordError::from)?;
                    validate::point_vectors(&format!("points[{i}]"), &p.vectors, &route.config.vectors).map_err(CoordError::from)?;
                    if let Some(pl) = &p.payload {
                        validate::payload(&format!("points[{i}].payload"), pl, &route.config.payload_indexes).map_err(CoordError::from)?;
                    }
                    by_shard.entry(route.shards.shard_for(&key)).or_default().upserts.push(p.clone());
                }
                self.write(&route, by_shard).await
            })
            .await?;
        Ok(Response::new(WriteResponse { affected }))
    }

    async fn get(&self, req: Request<GetPointsRequest>) -> std::result::Result<Response<GetPointsResponse>, Status> {
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        let req = req.into_inner();
        let ks = keys(&req.ids, "ids")?;
        let (ks, req) = (&ks, &req);
        let points = self.routed(&req.collection, |route| async move { self.get_points(&route, ks, req.with_payload, req.with_vector, req.consistency).await }).await?;
        Ok(Response::new(GetPointsResponse { points }))
    }

    async fn delete(&self, req: Request<DeletePointsRequest>) -> std::result::Result<Response<WriteResponse>, Status> {
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        // Writes by filter (and deletes of everything) are audited.
        match &req.get_ref().selector {
            Some(delete_points_request::Selector::Filter(f)) => shoal_common::audit::note(req.extensions(), Some(&req.get_ref().collection), format!("delete by filter: {}", serde_json::to_string(&format!("{f:?}")).unwrap_or_default())),
            Some(delete_points_request::Selector::All(_)) => shoal_common::audit::note(req.extensions(), Some(&req.get_ref().collection), "delete all points"),
            _ => {}
        }
        let req = req.into_inner();
        let selector = req.selector.as_ref().ok_or_else(|| bad("selector", "delete needs ids or a filter"))?;
        let ids = match selector {
            delete_points_request::Selector::Ids(list) => Some(keys(&list.ids, "ids")?.into_iter().zip(list.ids.iter().cloned()).collect::<Vec<_>>()),
            delete_points_request::Selector::Filter(f) => {
                validate::filter(f).map_err(CoordError::from)?;
                if f.must.is_empty() && f.should.is_empty() && f.must_not.is_empty() {
                    return Err(bad("filter", "a filter without conditions would delete every point; use the `all` selector to mean that").into());
                }
                None
            }
            delete_points_request::Selector::All(true) => None,
            delete_points_request::Selector::All(false) => return Err(bad("all", "the `all` selector must be true").into()),
        };
        let ids = &ids;
        let affected = self
            .routed(&req.collection, |route| async move {
                let mut by_shard: BTreeMap<u32, ShardWriteRequest> = BTreeMap::new();
                match (ids, selector) {
                    (Some(ids), _) => {
                        for (k, id) in ids {
                            by_shard.entry(route.shards.shard_for(k)).or_default().delete_ids.push(id.clone());
                        }
                    }
                    (None, delete_points_request::Selector::Filter(f)) => {
                        for sid in Self::shard_ids(&route) {
                            by_shard.insert(sid, ShardWriteRequest { delete_filter: Some(f.clone()), ..Default::default() });
                        }
                    }
                    (None, delete_points_request::Selector::All(_)) => {
                        for sid in Self::shard_ids(&route) {
                            by_shard.insert(sid, ShardWriteRequest { delete_filter: Some(Default::default()), delete_all: true, ..Default::default() });
                        }
                    }
                    (None, _) => return Err(bad("selector", "delete needs ids or a filter")),
                }
                self.write(&route, by_shard).await
            })
            .await?;
        Ok(Response::new(WriteResponse { affected }))
    }

    async fn update_payload(&self, req: Request<UpdatePayloadRequest>) -> std::result::Result<Response<WriteResponse>, Status> {
        use shoal_proto::v1::update_payload_request::Selector;
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        // Writes by filter (and of every point) are audited.
        match &req.get_ref().selector {
            Some(Selector::Filter(f)) => shoal_common::audit::note(req.extensions(), Some(&req.get_ref().collection), format!("update payload by filter: {}", serde_json::to_string(&format!("{f:?}")).unwrap_or_default())),
            Some(Selector::All(_)) => shoal_common::audit::note(req.extensions(), Some(&req.get_ref().collection), "update the payload of every point"),
            _ => {}
        }
        let req = &req.into_inner();
        let affected = self
            .routed(&req.collection, |route| async move {
                validate::payload_update(req, &route.config.payload_indexes, false).map_err(CoordError::from)?;
                let mut by_shard: BTreeMap<u32, ShardWriteRequest> = BTreeMap::new();
                let part = |sel: Selector| ShardWriteRequest { payload_update: Some(UpdatePayloadRequest { collection: String::new(), selector: Some(sel), op: req.op.clone() }), ..Default::default() };
                match req.selector.as_ref() {
                    Some(Selector::Ids(list)) => {
                        let mut ids: BTreeMap<u32, Vec<PointId>> = BTreeMap::new();
                        for (k, id) in keys(&list.ids, "ids")?.iter().zip(&list.ids) {
                            ids.entry(route.shards.shard_for(k)).or_default().push(id.clone());
                        }
                        for (sid, ids) in ids {
                            by_shard.insert(sid, part(Selector::Ids(PointIdList { ids })));
                        }
                    }
                    Some(sel) => {
                        // Counted first, collection-wide: a match over the
                        // limit is refused whole, at any shard count, rather
                        // than applied on the shards under it. (Writes in
                        // between can still push one shard over its own
                        // limit; that shard then refuses alone.)
                        let filter = match sel {
                            Selector::Filter(f) => Some(f.clone()),
                            _ => None,
                        };
                        let n = self.count_collection(&route, filter, 0).await?;
                        if n > MAX_PAYLOAD_UPDATE_POINTS as u64 {
                            return Err(bad("selector", format!("the update selects {n} points, more than the limit of {MAX_PAYLOAD_UPDATE_POINTS}; narrow the filter or update by ids")));
                        }
                        for sid in Self::shard_ids(&route) {
                            by_shard.insert(sid, part(sel.clone()));
                        }
                    }
                    None => return Err(bad("selector", "a payload update needs ids, a filter or `all`")),
                }
                self.write(&route, by_shard).await
            })
            .await?;
        Ok(Response::new(WriteResponse { affected }))
    }

    async fn count(&self, req: Request<CountPointsRequest>) -> std::result::Result<Response<CountPointsResponse>, Status> {
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        let req = req.into_inner();
        filter_opt(&req.filter)?;
        let req = &req;
        let count = self.routed(&req.collection, |route| async move { self.count_collection(&route, req.filter.clone(), req.consistency).await }).await?;
        Ok(Response::new(CountPointsResponse { count }))
    }

    async fn scroll(&self, req: Request<ScrollPointsRequest>) -> std::result::Result<Response<ScrollPointsResponse>, Status> {
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        let req = req.into_inner();
        validate::collection_name(&req.collection).map_err(|e| bad("collection", e.message))?;
        filter_opt(&req.filter)?;
        let limit = if req.limit == 0 { DEFAULT_SCROLL_LIMIT } else { req.limit };
        if limit > MAX_SCROLL_LIMIT {
            return Err(bad("limit", format!("limit {limit} is outside 1..={MAX_SCROLL_LIMIT}")).into());
        }
        if let Some(o) = &req.offset {
            PointKey::try_from(o).map_err(|e| bad("offset", e.to_string()))?;
        }
        let req = &req;
        let (points, next) = self
            .routed(&req.collection, |route| async move {
                let route = &*route;
                let calls = Self::shard_ids(route).into_iter().map(|sid| async move {
                    self.router
                        .call_shard(route, sid, Target::for_read(req.consistency), |mut c, shard| {
                            let r = ShardScrollRequest {
                                shard: Some(shard),
                                filter: req.filter.clone(),
                                offset: req.offset.clone(),
                                limit,
                                with_payload: req.with_payload,
                                with_vector: req.with_vector,
                                consistency: req.consistency,
                            };
                            async move { c.scroll(r).await }
                        })
                        .await
                });
                let pages = try_join_all(calls).await?.into_iter().map(|r| (r.points, r.next_offset.as_ref().and_then(|n| PointKey::try_from(n).ok()))).collect();
                Ok(merge::merge_scroll(pages, limit as usize))
            })
            .await?;
        Ok(Response::new(ScrollPointsResponse { points, next_offset: next.map(|k| k.to_proto()) }))
    }

    async fn search(&self, req: Request<SearchPointsRequest>) -> std::result::Result<Response<SearchPointsResponse>, Status> {
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        Ok(Response::new(SearchPointsResponse { results: self.search_one(&req.into_inner()).await? }))
    }

    type SearchStreamStream = stream::SearchStream;

    async fn search_stream(&self, req: Request<tonic::Streaming<SearchStreamRequest>>) -> std::result::Result<Response<Self::SearchStreamStream>, Status> {
        let access = shoal_common::auth::access(req.extensions());
        Ok(Response::new(stream::serve(self.clone(), access, req.into_inner())))
    }

    async fn query(&self, req: Request<QueryPointsRequest>) -> std::result::Result<Response<QueryPointsResponse>, Status> {
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        let req = req.into_inner();
        let req = &req;
        let out = self.routed(&req.collection, |route| async move { crate::query_exec::query(self, &route, req).await }).await?;
        Ok(Response::new(out))
    }

    async fn search_batch(&self, req: Request<SearchBatchRequest>) -> std::result::Result<Response<SearchBatchResponse>, Status> {
        self.authorize(req.extensions(), &req.get_ref().collection)?;
        let req = req.into_inner();
        if req.searches.is_empty() || req.searches.len() > MAX_SEARCH_BATCH {
            return Err(bad("searches", format!("{} searches is outside 1..={MAX_SEARCH_BATCH}", req.searches.len())).into());
        }
        let req = &req;
        let results = self
            .routed(&req.collection, |route| async move {
                for (i, s) in req.searches.iter().enumerate() {
                    if !s.collection.is_empty() && s.collection != req.collection {
                        return Err(bad(format!("searches[{i}].collection"), format!("{:?} differs from the batch's collection {:?}", s.collection, req.collection)));
                    }
                    Self::validate_search(&route, s, &format!("searches[{i}]."))?;
                }
                self.search_all(&route, req.searches.clone()).await
            })
            .await?;
        Ok(Response::new(SearchBatchResponse { results }))
    }
}

/// Bytes of points one search or get answer may hold (half the message
/// limit; scroll pages end early instead, see `merge::SCROLL_PAGE_BYTES`).
const RESPONSE_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// Upserts of one shard write sent by the coordinator, in encoded bytes
/// (a single larger point still goes alone; nodes refuse writes over
/// `MAX_WRITE_BYTES`).
const WRITE_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Splits a shard write's upserts into writes of at most `max` encoded
/// bytes each, in order. Deletes are never split.
fn chunks(req: ShardWriteRequest, max: usize) -> Vec<ShardWriteRequest> {
    if req.upserts.is_empty() || prost::Message::encoded_len(&req) <= max {
        return vec![req];
    }
    // Several writes for one shard: keep only the last version of each id,
    // so a retried earlier part that commits late cannot bring back an
    // older version written in a later part.
    let mut last: HashMap<PointKey, usize> = HashMap::with_capacity(req.upserts.len());
    for (i, p) in req.upserts.iter().enumerate() {
        if let Some(k) = p.id.as_ref().and_then(|id| PointKey::try_from(id).ok()) {
            last.insert(k, i);
        }
    }
    let upserts: Vec<PointStruct> = req
        .upserts
        .into_iter()
        .enumerate()
        .filter(|(i, p)| p.id.as_ref().and_then(|id| PointKey::try_from(id).ok()).is_none_or(|k| last.get(&k) == Some(i)))
        .map(|(_, p)| p)
        .collect();
    let req = ShardWriteRequest { upserts, ..req };
    let mut out = vec![];
    let (mut cur, mut bytes) = (Vec::new(), 0usize);
    for p in req.upserts {
        // Field tag, length prefix and the point.
        let n = prost::Message::encoded_len(&p) + 6;
        if !cur.is_empty() && bytes + n > max {
            out.push(ShardWriteRequest { upserts: std::mem::take(&mut cur), ..Default::default() });
            bytes = 0;
        }
        bytes += n;
        cur.push(p);
    }
    out.push(ShardWriteRequest { upserts: cur, ..Default::default() });
    out
}

/// A replica more than this many entries behind its leader shows as
/// catching up in cluster status.
const CATCHING_UP_LAG: u64 = 100;

/// How long cluster status waits for one node's own status.
const NODE_STATUS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

#[tonic::async_trait]
impl Cluster for Api {
    async fn status(&self, _: Request<ClusterStatusRequest>) -> std::result::Result<Response<ClusterStatusResponse>, Status> {
        self.router.refresh().await?;
        let map = self.router.map();
        let mut nodes = Vec::new();
        let mut replica_info: HashMap<(String, u32, u64), ShardReplicaStatus> = HashMap::new();
        // Every node at once, each with its own short deadline: one paused
        // node costs the answer at most NODE_STATUS_DEADLINE, not a
        // deadline per node in turn.
        let asks = map.nodes.iter().map(|n| async move {
            match self.router.meta_client_at(&n.address) {
                Ok(mut c) => tokio::time::timeout(NODE_STATUS_DEADLINE, c.node_status(NodeStatusRequest {})).await.ok().and_then(|r| r.ok()).map(|r| r.into_inner()),
                Err(_) => None,
            }
        });
        let answers = futures::future::join_all(asks).await;
        for (n, status) in map.nodes.iter().zip(answers) {
            let (state, device, version, rss_bytes, index_bytes, meta_role, gpu) = match &status {
                Some(s) => (NodeState::Up, s.device.clone(), s.version.clone(), s.rss_bytes, s.index_bytes, s.meta_role.clone(), s.gpu.clone()),
                None => (NodeState::Unreachable, String::new(), String::new(), 0, 0, String::new(), None),
            };
            if let Some(s) = status {
                for r in s.shards {
                    replica_info.insert((r.collection.clone(), r.shard_id, n.id), r);
                }
            }
            nodes.push(NodeStatus { id: n.id, address: n.address.clone(), state: state as i32, device, version, rss_bytes, index_bytes, meta_role, gpu });
        }
        let mut shards = Vec::new();
        for c in &map.collections {
            let name = c.config.as_ref().map(|c| c.name.clone()).unwrap_or_default();
            for s in &c.shards {
                let info = |node: u64| replica_info.get(&(name.clone(), s.shard_id, node));
                // The leader is the replica that reports leading in the
                // highest term; lag is measured against its applied index.
                let leader = s.replicas.iter().filter_map(|n| info(*n).filter(|r| r.leader)).max_by_key(|r| r.term);
                let head = leader.map(|r| r.applied_index).or_else(|| s.replicas.iter().filter_map(|n| info(*n).map(|r| r.applied_index)).max()).unwrap_or(0);
                let leader_term = leader.map(|r| r.term);
                let replicas = s
                    .replicas
                    .iter()
                    .map(|node| match info(*node) {
                        Some(r) if !r.quarantined.is_empty() => ReplicaStatus { node_id: *node, state: ReplicaState::Quarantined as i32, reason: r.quarantined.clone(), ..Default::default() },
                        Some(r) => {
                            let lag = head.saturating_sub(r.applied_index);
                            let state = if lag > CATCHING_UP_LAG { ReplicaState::CatchingUp } else { ReplicaState::Active };
                            ReplicaStatus {
                                node_id: *node,
                                state: state as i32,
                                leader: r.leader && Some(r.term) == leader_term,
                                term: r.term,
                                applied_index: r.applied_index,
                                lag,
                                points: r.points,
                                unindexed: r.unindexed,
                                reason: String::new(),
                                storage: r.storage,
                                vectors_mapped_bytes: r.vectors_mapped_bytes,
                                vectors_resident_bytes: r.vectors_resident_bytes,
                            }
                        }
                        None => ReplicaStatus { node_id: *node, state: ReplicaState::Unreachable as i32, ..Default::default() },
                    })
                    .collect();
                shards.push(ShardStatus { collection: name.clone(), shard_id: s.shard_id, range_start: s.range_start, range_end: s.range_end, replicas });
            }
        }
        Ok(Response::new(ClusterStatusResponse { epoch: map.epoch, nodes, shards }))
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;
    use shoal_proto::v1::PointStruct;

    /// Large shard writes split in order, each part under the byte cap;
    /// small ones and deletes stay whole.
    #[test]
    fn shard_writes_split_by_bytes_in_order() {
        let upserts: Vec<PointStruct> = (0..1000u64).map(|i| PointStruct { id: Some(i.into()), vector: vec![0.5; 384], payload: None, sparse: Default::default(), vectors: Default::default() }).collect();
        let req = ShardWriteRequest { upserts, ..Default::default() };
        let whole = prost::Message::encoded_len(&req);
        let parts = chunks(req.clone(), whole / 4);
        assert!(parts.len() >= 4, "{} parts", parts.len());
        assert!(parts.iter().all(|p| prost::Message::encoded_len(p) <= whole / 4));
        let ids: Vec<_> = parts.iter().flat_map(|p| &p.upserts).map(|p| p.id.clone()).collect();
        assert_eq!(ids, req.upserts.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), "every point once, in order");
        assert_eq!(chunks(req.clone(), whole).len(), 1);
        // A repeated id keeps only its last version once split.
        let mut twice = req.upserts.clone();
        twice.push(PointStruct { id: Some(3u64.into()), vector: vec![0.25; 384], payload: None, sparse: Default::default(), vectors: Default::default() });
        let parts = chunks(ShardWriteRequest { upserts: twice, ..Default::default() }, whole / 4);
        let threes: Vec<&PointStruct> = parts.iter().flat_map(|p| &p.upserts).filter(|p| p.id == Some(3u64.into())).collect();
        assert_eq!(threes.len(), 1);
        assert_eq!(threes[0].vector[0], 0.25);
        let del = ShardWriteRequest { delete_ids: vec![1u64.into(); 10], ..Default::default() };
        assert_eq!(chunks(del, 1).len(), 1);
    }
}
