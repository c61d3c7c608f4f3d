//! `shoalctl query`: the query API from the command line (docs/query.md).
//!
//! One flag set covers the common shapes: `--vector`/`--id` alone is a
//! nearest search (or MMR with `--mmr`), `--text` alone is BM25, both
//! together are a hybrid query fusing a dense and a BM25 prefetch
//! (`--fusion rrf|dbsf`), and `--positive`/`--negative` ids recommend.
//! `--sparse name:i=v,...` takes the place of `--text` with a sparse
//! vector query. `--using NAME` searches a named dense vector, and
//! `--maxsim NAME:[[..],..]` re-scores the result list's candidates by
//! MaxSim against a multi-vector (alone: a MaxSim scan).
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde_json::json;
use shoal_proto::v1::{PointId, Query, RecommendStrategy, VectorInput};

use super::{id_json, print_table, table};
use crate::query::{by_id, by_vector};
use crate::{filter, Client, PrefetchBuilder, QueryBuilder, Q};

#[derive(Clone, Copy, ValueEnum)]
pub enum FusionArg {
    Rrf,
    Dbsf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    Average,
    Best,
}

#[derive(clap::Args)]
pub struct QueryArgs {
    #[arg(long, short)]
    pub collection: String,
    /// Dense query vector, comma-separated.
    #[arg(long)]
    pub vector: Option<String>,
    /// Use this stored point's vector as the query (a number or a UUID).
    #[arg(long)]
    pub id: Option<String>,
    /// BM25 query text (needs a TEXT index on --text-key).
    #[arg(long)]
    pub text: Option<String>,
    #[arg(long, default_value = "text")]
    pub text_key: String,
    /// Sparse vector query, `name:index=value,index=value,...` (instead of
    /// --text).
    #[arg(long)]
    pub sparse: Option<String>,
    /// The named dense vector --vector, --id, --mmr and recommend use.
    #[arg(long, default_value = "")]
    pub using: String,
    /// Late interaction: `name:[[row],[row],...]`, re-scoring the other
    /// flags' candidates (--prefetch-limit of them) by MaxSim.
    #[arg(long)]
    pub maxsim: Option<String>,
    /// How a vector and a text query are combined.
    #[arg(long, value_enum, default_value_t = FusionArg::Rrf)]
    pub fusion: FusionArg,
    /// Candidates of each prefetch of a hybrid query.
    #[arg(long, default_value_t = 100)]
    pub prefetch_limit: u32,
    /// Recommend: positive example ids, comma-separated.
    #[arg(long)]
    pub positive: Option<String>,
    /// Recommend: negative example ids, comma-separated.
    #[arg(long)]
    pub negative: Option<String>,
    #[arg(long, value_enum, default_value_t = StrategyArg::Average)]
    pub strategy: StrategyArg,
    /// Diversify with MMR at this diversity (0..=1).
    #[arg(long)]
    pub mmr: Option<f32>,
    /// Filter as JSON (docs/filters.md).
    #[arg(long)]
    pub filter: Option<String>,
    #[arg(long, short = 'k', default_value_t = 10)]
    pub limit: u32,
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
    #[arg(long)]
    pub score_threshold: Option<f32>,
    /// Group results by this payload key.
    #[arg(long)]
    pub group_by: Option<String>,
    #[arg(long, default_value_t = 3)]
    pub group_size: u32,
    #[arg(long)]
    pub with_payload: bool,
    /// Return only these payload keys, comma-separated.
    #[arg(long)]
    pub payload_keys: Option<String>,
    #[arg(long)]
    pub exact: bool,
    #[arg(long)]
    pub ef: Option<u32>,
    /// int8/binary storage: candidates per result before re-scoring.
    #[arg(long)]
    pub oversampling: Option<f32>,
    /// int8/binary storage: score by the codes alone (no re-scoring).
    #[arg(long)]
    pub no_rescore: bool,
}

pub(super) fn parse_id(s: &str) -> PointId {
    match s.trim().parse::<u64>() {
        Ok(n) => PointId::from(n),
        Err(_) => PointId { kind: Some(shoal_proto::v1::point_id::Kind::Uuid(s.trim().to_string())) },
    }
}

fn ids(s: &Option<String>) -> Vec<VectorInput> {
    s.as_deref().map(|s| s.split(',').filter(|x| !x.trim().is_empty()).map(|x| by_id(parse_id(x))).collect()).unwrap_or_default()
}

fn mmr_using(mut q: Query, using: &str) -> Query {
    if let Some(shoal_proto::v1::query::Kind::Mmr(m)) = q.kind.as_mut() {
        m.using = using.to_string();
    }
    q
}

/// `name:[[row],[row],...]` as a MaxSim query.
fn parse_maxsim(s: &str) -> Result<Query> {
    let (name, rows) = s.split_once(':').context("--maxsim: expected name:[[row],...]")?;
    let rows: Vec<Vec<f32>> = serde_json::from_str(rows).context("--maxsim: the rows are not a JSON list of lists of numbers")?;
    Ok(Q::maxsim(name, rows))
}

/// `name:index=value,...` as a sparse query.
fn parse_sparse(s: &str) -> Result<Query> {
    let (name, pairs) = s.split_once(':').context("--sparse: expected name:index=value,...")?;
    let (mut indices, mut values) = (vec![], vec![]);
    for p in pairs.split(',').filter(|p| !p.trim().is_empty()) {
        let (i, v) = p.split_once('=').with_context(|| format!("--sparse: {p:?} is not index=value"))?;
        indices.push(i.trim().parse::<u32>().with_context(|| format!("--sparse: index {i:?} is not a u32"))?);
        values.push(v.trim().parse::<f32>().with_context(|| format!("--sparse: value {v:?} is not a number"))?);
    }
    Ok(Q::sparse(name, indices, values))
}

/// The request the flags describe.
pub fn build(a: &QueryArgs) -> Result<QueryBuilder> {
    let vector = match (&a.vector, &a.id) {
        (Some(_), Some(_)) => bail!("give --vector or --id, not both"),
        (Some(v), None) => Some(by_vector(v.split(',').map(|x| x.trim().parse::<f32>().with_context(|| format!("--vector: {x:?} is not a number"))).collect::<Result<Vec<_>>>()?)),
        (None, Some(id)) => Some(by_id(parse_id(id))),
        (None, None) => None,
    };
    let nearest = |v: VectorInput| Q::nearest_using(&a.using, v);
    let maxsim = a.maxsim.as_deref().map(parse_maxsim).transpose()?;
    let lexical = match (&a.text, &a.sparse) {
        (Some(_), Some(_)) => bail!("give --text or --sparse, not both"),
        (Some(t), None) => Some(Q::bm25(&a.text_key, t)),
        (None, Some(s)) => Some(parse_sparse(s)?),
        (None, None) => None,
    };
    let (pos, neg) = (ids(&a.positive), ids(&a.negative));
    let mut b = if !pos.is_empty() || !neg.is_empty() {
        let strategy = match a.strategy {
            StrategyArg::Average => RecommendStrategy::AverageVector,
            StrategyArg::Best => RecommendStrategy::BestScore,
        };
        QueryBuilder::new(&a.collection, Q::recommend_using(&a.using, pos, neg, strategy))
    } else {
        match (vector, lexical) {
            (None, None) => match maxsim.clone() {
                Some(m) => QueryBuilder::new(&a.collection, m),
                None => bail!("give --vector, --id, --text, --sparse, --maxsim or --positive/--negative"),
            },
            (Some(v), None) => match a.mmr {
                Some(d) => QueryBuilder::new(&a.collection, mmr_using(Q::mmr(v, d, 0), &a.using)),
                None => QueryBuilder::new(&a.collection, nearest(v)),
            },
            (None, Some(l)) => QueryBuilder::new(&a.collection, l),
            (Some(v), Some(l)) => {
                let fusion = match a.fusion {
                    FusionArg::Rrf => Q::rrf(),
                    FusionArg::Dbsf => Q::dbsf(vec![]),
                };
                let mut dense = PrefetchBuilder::new(nearest(v), a.prefetch_limit);
                if a.exact {
                    dense = dense.exact();
                }
                if let Some(ef) = a.ef {
                    dense = dense.ef(ef);
                }
                if let Some(o) = a.oversampling {
                    dense = dense.oversampling(o);
                }
                if a.no_rescore {
                    dense = dense.quantized_rescore(false);
                }
                QueryBuilder::new(&a.collection, fusion).prefetch(dense).prefetch(PrefetchBuilder::new(l, a.prefetch_limit))
            }
        }
    };
    // A MaxSim re-score over what the other flags asked for.
    if let (Some(m), true) = (maxsim, a.vector.is_some() || a.id.is_some() || a.text.is_some() || a.sparse.is_some() || a.positive.is_some() || a.negative.is_some()) {
        b = b.rescore(m, a.prefetch_limit);
    }
    b = b.limit(a.limit).offset(a.offset);
    if let Some(f) = &a.filter {
        b = b.filter(filter::from_json(&serde_json::from_str(f).context("--filter is not JSON")?)?);
    }
    if let Some(t) = a.score_threshold {
        b = b.score_threshold(t);
    }
    if let Some(g) = &a.group_by {
        b = b.group_by(g, a.group_size);
    }
    if a.with_payload {
        b = b.with_payload();
    }
    if let Some(keys) = &a.payload_keys {
        let keys: Vec<&str> = keys.split(',').map(str::trim).filter(|k| !k.is_empty()).collect();
        b = b.payload_keys(&keys);
    }
    if a.exact {
        b = b.exact();
    }
    if let Some(ef) = a.ef {
        b = b.ef(ef);
    }
    if let Some(o) = a.oversampling {
        b = b.oversampling(o);
    }
    if a.no_rescore {
        b = b.quantized_rescore(false);
    }
    Ok(b)
}

pub async fn run(client: &Client, a: &QueryArgs, json_out: bool) -> Result<()> {
    let r = client.query(build(a)?).await?;
    let row = |p: &shoal_proto::v1::ScoredPoint| json!({"id": id_json(&p.id), "score": p.score, "payload": p.payload.as_ref().map(serde_json::Value::from)});
    if json_out {
        if a.group_by.is_some() {
            let groups: Vec<serde_json::Value> = r.groups.iter().map(|g| json!({"key": g.key.as_ref().map(serde_json::Value::from), "points": g.points.iter().map(row).collect::<Vec<_>>()})).collect();
            println!("{}", json!(groups));
        } else {
            println!("{}", json!(r.points.iter().map(row).collect::<Vec<_>>()));
        }
        return Ok(());
    }
    let mut t = table(&["GROUP", "ID", "SCORE", "PAYLOAD"]);
    let mut add = |g: String, p: &shoal_proto::v1::ScoredPoint| {
        let r = row(p);
        t.add_row(vec![g, r["id"].to_string(), format!("{:.4}", p.score), if r["payload"].is_null() { String::new() } else { r["payload"].to_string() }]);
    };
    for p in &r.points {
        add(String::new(), p);
    }
    for g in &r.groups {
        let key = g.key.as_ref().map(|v| serde_json::Value::from(v).to_string()).unwrap_or_default();
        for p in &g.points {
            add(key.clone(), p);
        }
    }
    print_table(t);
    Ok(())
}
