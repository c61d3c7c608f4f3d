//! Full text: the tokenizer, the per-shard inverted index of TEXT payload
//! fields, and BM25 scoring (docs/query.md, "Full text").
//!
//! ## Tokens
//! A string is split into Unicode words (UAX #29, `unicode-segmentation`),
//! each lowercased and, unless `keep_accents`, folded to ASCII where it can
//! be (NFKD, combining marks dropped: "Café" -> "cafe"); then stop words
//! are dropped and the rest stemmed (`rust-stemmers`, Snowball) when the
//! index asks. Tokens over [`MAX_TOKEN_BYTES`] are dropped.
//!
//! ## Index
//! Per field: a vocabulary (token -> term id), a posting bitmap per term
//! (point versions holding it), and per version its token count and
//! sorted (term, frequency) list. The index lives in memory and is built
//! from stored payloads when the shard opens and kept current by writes;
//! it is never persisted (so a change of tokenizer code only needs a
//! restart). Collection-wide BM25 statistics are the coordinator's sum of
//! [`TextIndex::stats`] over shards.
use std::collections::{HashMap, HashSet};


use roaring::RoaringBitmap;
use rust_stemmers::{Algorithm, Stemmer};
use shoal_proto::payload::lookup;
use shoal_proto::v1::{value::Kind, Struct, TextIndexParams, TextMatch};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

/// Longest token kept, in bytes.
pub const MAX_TOKEN_BYTES: usize = 64;

/// Lucene's English stop words (`EnglishAnalyzer.ENGLISH_STOP_WORDS_SET`).
pub const ENGLISH_STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
];

fn algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "english" => Algorithm::English,
        "french" => Algorithm::French,
        "german" => Algorithm::German,
        "spanish" => Algorithm::Spanish,
        "italian" => Algorithm::Italian,
        "portuguese" => Algorithm::Portuguese,
        "dutch" => Algorithm::Dutch,
        "swedish" => Algorithm::Swedish,
        "norwegian" => Algorithm::Norwegian,
        "danish" => Algorithm::Danish,
        "finnish" => Algorithm::Finnish,
        "russian" => Algorithm::Russian,
        _ => return None,
    })
}

/// A configured tokenizer.
pub struct Tokenizer {
    stemmer: Option<Stemmer>,
    stop: HashSet<&'static str>,
    fold: bool,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer::new(&TextIndexParams::default())
    }
}

impl Tokenizer {
    /// Names are checked at creation (`validate::text_params`); an
    /// unknown one acts as "none".
    pub fn new(p: &TextIndexParams) -> Self {
        let stop = if p.stop_words == "english" { ENGLISH_STOP_WORDS.iter().copied().collect() } else { HashSet::new() };
        Tokenizer { stemmer: algorithm(&p.stemmer).map(Stemmer::create), stop, fold: !p.keep_accents }
    }

    /// The tokens of `text`, in order, repeats kept.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for w in text.unicode_words() {
            let lower = w.to_lowercase();
            let t = if self.fold && !lower.is_ascii() { lower.nfkd().filter(|c| !is_combining_mark(*c)).collect::<String>() } else { lower };
            if t.is_empty() || self.stop.contains(t.as_str()) {
                continue;
            }
            let t = match &self.stemmer {
                Some(s) => s.stem(&t).into_owned(),
                None => t,
            };
            if !t.is_empty() && t.len() <= MAX_TOKEN_BYTES {
                out.push(t);
            }
        }
        out
    }

    /// Token lists of every string value at `key` (a list gives one per
    /// element).
    pub fn field_values(&self, payload: &Struct, key: &str) -> Vec<Vec<String>> {
        let mut vals = vec![];
        lookup(payload, key, &mut vals);
        vals.iter().filter_map(|v| if let Some(Kind::StringValue(s)) = &v.kind { Some(self.tokens(s)) } else { None }).collect()
    }

    /// The reference semantics of a text condition on one payload: for ALL
    /// and ANY the field's strings together are one text (as the index
    /// sees them); a PHRASE must occur within one string.
    pub fn payload_matches(&self, payload: &Struct, key: &str, query: &[String], mode: TextMatch) -> bool {
        if query.is_empty() {
            return false;
        }
        let values = self.field_values(payload, key);
        match mode {
            TextMatch::All | TextMatch::Any => {
                let doc: HashSet<&str> = values.iter().flatten().map(String::as_str).collect();
                if mode == TextMatch::All {
                    query.iter().all(|q| doc.contains(q.as_str()))
                } else {
                    query.iter().any(|q| doc.contains(q.as_str()))
                }
            }
            TextMatch::Phrase => values.iter().any(|d| d.len() >= query.len() && d.windows(query.len()).any(|w| w == query)),
        }
    }
}

/// Shard-local statistics of one field for a query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub docs: u64,
    pub tokens: u64,
    pub terms: Vec<String>,
    pub df: Vec<u64>,
}

/// The inverted index of one TEXT field. Only live versions are in it
/// (writes remove retired ones under the shard's state lock).
pub struct TextIndex {
    pub tokenizer: Tokenizer,
    vocab: HashMap<String, u32>,
    /// Per term: the versions holding it (filters, intersections).
    postings: Vec<RoaringBitmap>,
    /// Per term: (offset, term frequency), sorted by offset (scoring reads
    /// these in one pass without a per-document lookup).
    tfs: Vec<Vec<(u32, u32)>>,
    /// Token count by offset; 0: not a document.
    lens: Vec<u32>,
    /// Term ids of each document, for removal.
    doc_terms: HashMap<u32, Box<[u32]>>,
    total_len: u64,
}

impl TextIndex {
    pub fn new(p: &TextIndexParams) -> Self {
        TextIndex { tokenizer: Tokenizer::new(p), vocab: HashMap::new(), postings: Vec::new(), tfs: Vec::new(), lens: Vec::new(), doc_terms: HashMap::new(), total_len: 0 }
    }

    /// Indexes version `offset`'s values at `key` (all its string values
    /// together form one document). A version with no token is not a
    /// document.
    pub fn insert(&mut self, payload: Option<&Struct>, key: &str, offset: u32) {
        let Some(payload) = payload else { return };
        self.remove(offset);
        let mut tf: HashMap<u32, u32> = HashMap::new();
        let mut len = 0u32;
        for toks in self.tokenizer.field_values(payload, key) {
            for t in toks {
                let next = self.vocab.len() as u32;
                let id = *self.vocab.entry(t).or_insert(next);
                if id as usize == self.postings.len() {
                    self.postings.push(RoaringBitmap::new());
                    self.tfs.push(Vec::new());
                }
                *tf.entry(id).or_default() += 1;
                len = len.saturating_add(1);
            }
        }
        if len == 0 {
            return;
        }
        let mut ids = Vec::with_capacity(tf.len());
        for (t, n) in tf {
            self.postings[t as usize].insert(offset);
            let list = &mut self.tfs[t as usize];
            // New offsets are usually the highest: an append.
            match list.last() {
                Some((o, _)) if *o > offset => {
                    let at = list.partition_point(|(o, _)| *o < offset);
                    list.insert(at, (offset, n));
                }
                _ => list.push((offset, n)),
            }
            ids.push(t);
        }
        if self.lens.len() <= offset as usize {
            self.lens.resize(offset as usize + 1, 0);
        }
        self.lens[offset as usize] = len;
        self.total_len += len as u64;
        self.doc_terms.insert(offset, ids.into_boxed_slice());
    }

    /// Forgets version `offset`.
    pub fn remove(&mut self, offset: u32) {
        let Some(ids) = self.doc_terms.remove(&offset) else { return };
        for t in ids.iter() {
            self.postings[*t as usize].remove(offset);
            let list = &mut self.tfs[*t as usize];
            if let Ok(at) = list.binary_search_by_key(&offset, |(o, _)| *o) {
                list.remove(at);
            }
        }
        self.total_len -= self.lens[offset as usize] as u64;
        self.lens[offset as usize] = 0;
    }

    fn posting(&self, t: &str) -> Option<&RoaringBitmap> {
        self.vocab.get(t).map(|id| &self.postings[*id as usize])
    }

    /// Versions holding all (ALL, and PHRASE candidates) or any of
    /// `query`'s tokens. PHRASE still needs [`Tokenizer::payload_matches`]
    /// on each candidate: positions are not indexed.
    pub fn lookup(&self, query: &[String], mode: TextMatch) -> RoaringBitmap {
        if query.is_empty() {
            return RoaringBitmap::new();
        }
        match mode {
            TextMatch::Any => query.iter().filter_map(|t| self.posting(t)).fold(RoaringBitmap::new(), |a, b| a | b),
            TextMatch::All | TextMatch::Phrase => {
                let mut lists: Vec<&RoaringBitmap> = Vec::with_capacity(query.len());
                for t in query {
                    match self.posting(t) {
                        Some(b) => lists.push(b),
                        None => return RoaringBitmap::new(),
                    }
                }
                lists.sort_by_key(|b| b.len());
                let mut out = lists[0].clone();
                for b in &lists[1..] {
                    out &= *b;
                }
                out
            }
        }
    }

    /// This shard's statistics for `terms`, leaving out `hidden` versions
    /// (a pending split's frozen copies).
    pub fn stats(&self, terms: Vec<String>, hidden: Option<&RoaringBitmap>) -> Stats {
        let (docs, tokens) = match hidden {
            None => (self.doc_terms.len() as u64, self.total_len),
            Some(h) => self.doc_terms.keys().filter(|o| !h.contains(**o)).fold((0, 0), |(n, l), o| (n + 1, l + self.lens[*o as usize] as u64)),
        };
        let df = terms
            .iter()
            .map(|t| match (self.posting(t), hidden) {
                (None, _) => 0,
                (Some(b), None) => b.len(),
                (Some(b), Some(h)) => b.len() - b.intersection_len(h),
            })
            .collect();
        Stats { docs, tokens, terms, df }
    }

    /// The BM25 top `k` among the versions `allowed` admits (None: all)
    /// that hold a query term, best first, ties broken by `order` (the
    /// point ids' order). `idf[i]` belongs to `terms[i]`.
    pub fn bm25<K: Ord + Copy>(&self, q: &Bm25Params, allowed: Option<&RoaringBitmap>, k: usize, key_of: impl Fn(u32) -> Option<K>) -> Vec<(K, f32)> {
        let avgdl = if q.avgdl > 0.0 { q.avgdl } else { 1.0 };
        let postings: Vec<(&Vec<(u32, u32)>, f64)> = q.terms.iter().zip(q.idf).filter_map(|(t, w)| self.vocab.get(t).map(|id| (&self.tfs[*id as usize], *w))).collect();
        let hits: usize = postings.iter().map(|(l, _)| l.len()).sum();
        // A dense accumulator when the postings cover a good part of the
        // shard, a map otherwise (a rare term in a large shard should not
        // allocate a slot per version).
        let mut dense: Vec<f64> = if hits * 8 >= self.lens.len() { vec![0f64; self.lens.len()] } else { Vec::new() };
        let mut sparse: HashMap<u32, f64> = HashMap::new();
        let mut seen = RoaringBitmap::new();
        let mut touched: Vec<u32> = Vec::new();
        for (list, w) in postings {
            for &(o, tf) in list {
                if allowed.is_some_and(|a| !a.contains(o)) {
                    continue;
                }
                let (tf, dl) = (tf as f64, self.lens[o as usize] as f64);
                if seen.insert(o) {
                    touched.push(o);
                }
                let add = w * tf / (tf + q.k1 * (1.0 - q.b + q.b * dl / avgdl));
                if dense.is_empty() {
                    *sparse.entry(o).or_default() += add;
                } else {
                    dense[o as usize] += add;
                }
            }
        }
        let acc = |o: u32| if dense.is_empty() { sparse.get(&o).copied().unwrap_or(0.0) } else { dense[o as usize] };
        // The k-th best score, then every hit at least as good (ties are
        // ordered by id after the key lookup). Cut and ordered in f32, the
        // precision answers carry, so shard counts cannot cut a tie
        // differently.
        let f = |o: &u32| acc(*o) as f32;
        let mut scores: Vec<f32> = touched.iter().map(f).collect();
        let cut = if scores.len() > k && k > 0 {
            let (_, kth, _) = scores.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            *kth
        } else {
            f32::NEG_INFINITY
        };
        let mut out: Vec<(K, f32)> = touched.iter().filter(|o| f(o) >= cut).filter_map(|o| key_of(*o).map(|key| (key, f(o)))).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        out
    }

    /// Rough bytes used, for status output.
    pub fn memory_bytes(&self) -> usize {
        let vocab: usize = self.vocab.keys().map(|k| k.len() + 32).sum();
        let post: usize = self.postings.iter().map(|b| b.serialized_size()).sum();
        let tfs: usize = self.tfs.iter().map(|l| l.capacity() * 8).sum();
        let docs: usize = self.doc_terms.values().map(|d| 16 + d.len() * 4).sum();
        vocab + post + tfs + docs + self.lens.len() * 4
    }
}

/// A BM25 query under collection-wide statistics.
pub struct Bm25Params<'a> {
    pub terms: &'a [String],
    pub idf: &'a [f64],
    pub avgdl: f64,
    pub k1: f64,
    pub b: f64,
}

/// Lucene's BM25 idf.
pub fn idf(docs: u64, df: u64) -> f64 {
    let (n, df) = (docs as f64, df as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(stem: &str, stop: &str) -> TextIndexParams {
        TextIndexParams { stemmer: stem.into(), stop_words: stop.into(), keep_accents: false }
    }

    #[test]
    fn tokens_are_unicode_words_lowercased_and_folded() {
        let t = Tokenizer::default();
        assert_eq!(t.tokens("Café au lait, DON'T stop: 3.14 naïve—Ünïcödé"), ["cafe", "au", "lait", "don't", "stop", "3.14", "naive", "unicode"]);
        let keep = Tokenizer::new(&TextIndexParams { keep_accents: true, ..Default::default() });
        assert_eq!(keep.tokens("Café Ünï"), ["café", "ünï"]);
        assert!(t.tokens(" ,.;!? ").is_empty());
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(t.tokens(&format!("a {long} b")), ["a", "b"]);
    }

    #[test]
    fn stop_words_and_stemming() {
        let t = Tokenizer::new(&p("english", "english"));
        assert_eq!(t.tokens("The runners are running to the games"), ["runner", "run", "game"]);
        assert!(shoal_proto::validate::text_params("t", &p("klingon", "")).is_err());
        assert!(shoal_proto::validate::text_params("t", &p("", "french")).is_err());
        assert!(shoal_proto::validate::text_params("t", &p("french", "english")).is_ok());
        // Every name validation accepts has a stemmer.
        assert!(shoal_proto::validate::STEMMERS.iter().all(|n| algorithm(n).is_some()));
    }

    #[test]
    fn text_modes() {
        let t = Tokenizer::default();
        let p = |v: serde_json::Value| Struct::try_from(&serde_json::json!({ "t": v })).unwrap();
        let doc = p(serde_json::json!("a quick brown fox jumps"));
        let m = |d: &Struct, q: &str, mode| t.payload_matches(d, "t", &t.tokens(q), mode);
        assert!(m(&doc, "fox quick", TextMatch::All));
        assert!(!m(&doc, "fox cat", TextMatch::All));
        assert!(m(&doc, "fox cat", TextMatch::Any));
        assert!(m(&doc, "Brown FOX", TextMatch::Phrase));
        assert!(!m(&doc, "fox brown", TextMatch::Phrase));
        // A list is one text for ALL (as the index sees it); a phrase stays
        // within one string.
        let list = p(serde_json::json!(["fast parser", "json"]));
        assert!(m(&list, "json parser", TextMatch::All));
        assert!(!m(&list, "parser json", TextMatch::Phrase));
    }

    #[test]
    fn index_lookup_stats_and_bm25_match_a_direct_computation() {
        let docs = ["the cat sat", "the cat and the dog", "dogs bark", ""];
        let mut idx = TextIndex::new(&TextIndexParams::default());
        let mut live = RoaringBitmap::new();
        for (i, d) in docs.iter().enumerate() {
            let mut s = Struct::default();
            s.fields.insert("t".into(), shoal_proto::v1::Value { kind: Some(Kind::StringValue(d.to_string())) });
            idx.insert(Some(&s), "t", i as u32);
            live.insert(i as u32);
        }
        let q: Vec<String> = vec!["cat".into(), "the".into()];
        assert_eq!(idx.lookup(&q, TextMatch::All).iter().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(idx.lookup(&["dogs".to_string(), "sat".to_string()], TextMatch::Any).iter().collect::<Vec<_>>(), [0, 2]);
        let st = idx.stats(q.clone(), None);
        // The empty string is no document.
        assert_eq!((st.docs, st.tokens, st.df.clone()), (3, 10, vec![2, 2]));
        let avgdl = st.tokens as f64 / st.docs as f64;
        let w: Vec<f64> = st.df.iter().map(|df| idf(st.docs, *df)).collect();
        let params = Bm25Params { terms: &q, idf: &w, avgdl, k1: 1.2, b: 0.75 };
        let got = idx.bm25(&params, None, 10, Some);
        // Doc 1: "the" twice, "cat" once, length 5.
        let s = |tf: f64, dl: f64, df: f64| (1.0 + (3.0 - df + 0.5) / (df + 0.5)).ln() * tf / (tf + 1.2 * (0.25 + 0.75 * dl / avgdl));
        assert_eq!(got.len(), 2);
        let by = |o: u32| got.iter().find(|x| x.0 == o).unwrap().1;
        assert!((by(0) as f64 - (s(1.0, 3.0, 2.0) + s(1.0, 3.0, 2.0))).abs() < 1e-6);
        assert!((by(1) as f64 - (s(1.0, 5.0, 2.0) + s(2.0, 5.0, 2.0))).abs() < 1e-6);
        assert!(got[0].1 >= got[1].1, "best first");
        // k cuts, a filter restricts.
        assert_eq!(idx.bm25(&params, None, 1, Some).len(), 1);
        let only1: RoaringBitmap = [1u32].into_iter().collect();
        assert_eq!(idx.bm25(&params, Some(&only1), 10, Some).iter().map(|x| x.0).collect::<Vec<_>>(), vec![1]);
        // Hidden versions leave the statistics.
        assert_eq!(idx.stats(q.clone(), Some(&only1)).df, vec![1, 1]);
        idx.remove(1);
        live.remove(1);
        let st = idx.stats(q, None);
        assert_eq!((st.docs, st.tokens, st.df), (2, 5, vec![1, 1]));
    }
}
