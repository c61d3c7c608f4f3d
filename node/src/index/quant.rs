//! Codes of quantized storage: what the HNSW graph of an INT8 or BINARY
//! collection holds instead of f32, and how it is calibrated.
//!
//! - **INT8.** Cosine vectors (unit length) are scaled one by one so that
//!   their largest component is ±127 and compared with usearch's int8
//!   cosine, which is blind to the scale. Dot and L2 vectors share one
//!   scale, `127 / q`, where `q` is the 99.9th percentile of the absolute
//!   components of a calibration sample (the graph's first batch);
//!   components beyond it are clamped. Compared with int8 inner product or
//!   squared L2: a common scale keeps their order.
//! - **BINARY.** One bit per dimension: set when the component is above
//!   the centre, compared by Hamming distance. The centre is zero for
//!   cosine and dot, and the sample's mean for L2 (all-positive data such
//!   as SIFT would otherwise give every vector the same code).
//!
//! The calibration travels with the graph file (its sidecar), since codes
//! from one calibration are meaningless under another.
use shoal_proto::v1::Metric;
use usearch::{MetricKind, ScalarKind};

/// Components of the sample whose absolute value sets the int8 range.
const CLIP_QUANTILE: f64 = 0.999;
/// Sample rows a calibration reads at most.
pub const CALIBRATION_ROWS: usize = 4096;

/// The scale that maps `v`'s largest component to ±127.
fn max_abs_scale(v: &[f32]) -> f32 {
    let m = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if m > 0.0 && m.is_finite() {
        127.0 / m
    } else {
        1.0
    }
}

/// A quantized graph's code and its calibration.
#[derive(Debug, Clone, PartialEq)]
pub enum Codec {
    /// `scale == 0`: each vector scaled on its own (cosine graphs from
    /// before shared scales; no longer calibrated, see `usearch_kind`).
    I8 { scale: f32 },
    /// An empty centre is zero.
    B1 { center: Vec<f32> },
}

/// What one vector becomes in the graph.
pub enum Code {
    I8(Vec<i8>),
    B1(Vec<usearch::b1x8>),
}

impl Codec {
    /// The codec for `kind` (I8 or B1 only), calibrated on `sample`.
    pub fn calibrate(int8: bool, metric: Metric, dim: usize, sample: &[&[f32]]) -> Codec {
        let sample = &sample[..sample.len().min(CALIBRATION_ROWS)];
        if int8 {
            // Cosine samples are unit vectors: one scale for all makes
            // every code's norm about the same, so the graph ranks by the
            // codes' inner product alone (one multiply-add chain instead of
            // a dot and two norms per distance).
            let mut abs: Vec<f32> = sample.iter().flat_map(|v| v.iter().map(|x| x.abs())).filter(|x| x.is_finite()).collect();
            if abs.is_empty() {
                return Codec::I8 { scale: 127.0 };
            }
            let at = ((abs.len() - 1) as f64 * CLIP_QUANTILE).round() as usize;
            let (_, q, _) = abs.select_nth_unstable_by(at, f32::total_cmp);
            let q = *q;
            // A sample of (sub)normal zeros would give an infinite scale.
            let scale = 127.0 / q;
            return Codec::I8 { scale: if q > 0.0 && scale.is_finite() { scale } else { 127.0 } };
        }
        if metric != Metric::L2 || sample.is_empty() {
            return Codec::B1 { center: vec![] };
        }
        let mut mean = vec![0f64; dim];
        for v in sample {
            for (m, x) in mean.iter_mut().zip(v.iter()) {
                *m += *x as f64;
            }
        }
        Codec::B1 { center: mean.iter().map(|m| (m / sample.len() as f64) as f32).collect() }
    }

    /// usearch's scalar kind and metric for these codes.
    pub fn usearch_kind(int8: bool, metric: Metric) -> (ScalarKind, MetricKind) {
        if !int8 {
            return (ScalarKind::B1, MetricKind::Hamming);
        }
        // Cosine codes share one scale over unit vectors, so their inner
        // product ranks like the cosine (graphs from before used usearch's
        // int8 cosine, `Codec::I8 { scale: 0 }`; they are rebuilt).
        let m = match metric {
            Metric::L2 => MetricKind::L2sq,
            _ => MetricKind::IP,
        };
        (ScalarKind::I8, m)
    }

    /// The code of a stored vector `v`.
    pub fn encode(&self, v: &[f32]) -> Code {
        self.encode_scaled(v, None).0
    }

    /// The code of a query and the scale it was coded with. An inner
    /// product query is scaled on its own to the full int8 range (its
    /// order over the points does not change with its length), so a long
    /// query is not clamped.
    pub fn encode_query(&self, metric: Metric, q: &[f32]) -> (Code, f32) {
        self.encode_scaled(q, (metric != Metric::L2).then(|| max_abs_scale(q)))
    }

    fn encode_scaled(&self, v: &[f32], own: Option<f32>) -> (Code, f32) {
        match self {
            Codec::I8 { scale } => {
                let s = match own {
                    Some(s) => s,
                    None if *scale > 0.0 => *scale,
                    None => max_abs_scale(v),
                };
                (Code::I8(v.iter().map(|x| (x * s).round().clamp(-127.0, 127.0) as i8).collect()), s)
            }
            Codec::B1 { center } => {
                let mut bytes = vec![0u8; v.len().div_ceil(8)];
                for (i, x) in v.iter().enumerate() {
                    let c = center.get(i).copied().unwrap_or(0.0);
                    if *x > c {
                        bytes[i / 8] |= 0x80 >> (i % 8);
                    }
                }
                (Code::B1(bytes.into_iter().map(usearch::b1x8).collect()), 1.0)
            }
        }
    }

    /// usearch's distance between two codes as an approximate distance in
    /// the index convention (`1 - cos`, `1 - dot`, squared L2), for
    /// searches that skip re-scoring. Binary gives `1 - cos(pi * h / d)`
    /// for cosine and dot (the angle that a fraction `h / d` of differing
    /// sign bits estimates) and the Hamming distance itself for L2.
    /// `qscale` is what [`Codec::encode_query`] returned.
    pub fn approx_distance(&self, metric: Metric, dim: usize, d: f32, qscale: f32) -> f32 {
        match (self, metric) {
            (Codec::I8 { scale }, Metric::Cosine) if *scale == 0.0 => d,
            (Codec::I8 { scale }, Metric::L2) => d / (scale * scale),
            // usearch's int8 inner product distance is `1 - dot(codes)`.
            (Codec::I8 { scale }, _) => 1.0 - (1.0 - d) / (scale * qscale),
            (Codec::B1 { .. }, Metric::L2) => d,
            (Codec::B1 { .. }, _) => 1.0 - (std::f32::consts::PI * d / dim.max(1) as f32).cos(),
        }
    }

    /// The calibration as sidecar text: `i8:<scale>` or `b1:<c0>,<c1>,..`.
    pub fn to_text(&self) -> String {
        match self {
            Codec::I8 { scale } => format!("i8:{scale}"),
            Codec::B1 { center } => format!("b1:{}", center.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")),
        }
    }

    /// Parses [`Codec::to_text`]; `None` when malformed or when a centre
    /// has another dimension.
    pub fn from_text(s: &str, dim: usize) -> Option<Codec> {
        if let Some(x) = s.strip_prefix("i8:") {
            let scale: f32 = x.parse().ok()?;
            return (scale.is_finite() && scale >= 0.0).then_some(Codec::I8 { scale });
        }
        let x = s.strip_prefix("b1:")?;
        if x.is_empty() {
            return Some(Codec::B1 { center: vec![] });
        }
        let center: Vec<f32> = x.split(',').map(|c| c.parse::<f32>().ok().filter(|c| c.is_finite())).collect::<Option<_>>()?;
        (center.len() == dim).then_some(Codec::B1 { center })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_scale_clips_the_top_tenth_of_a_percent() {
        let rows: Vec<Vec<f32>> = (0..100).map(|i| (0..10).map(|j| ((i * 10 + j) as f32) / 1000.0).collect()).collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let Codec::I8 { scale } = Codec::calibrate(true, Metric::Dot, 10, &refs) else { panic!("int8 codec expected") };
        // 1,000 components 0.000..0.999: the 99.9th percentile is 0.998.
        assert!((scale - 127.0 / 0.998).abs() < 1e-3, "{scale}");
        let Code::I8(c) = Codec::I8 { scale }.encode(&[0.5, -2.0, 0.0]) else { panic!() };
        assert_eq!(c, vec![64, -127, 0]);
        // Cosine samples (unit vectors) get one shared scale the same way.
        assert_eq!(Codec::calibrate(true, Metric::Cosine, 10, &refs), Codec::I8 { scale });
    }

    /// Graphs from before shared cosine scales (`scale == 0`, each
    /// vector scaled on its own) still decode their sidecars; the shard
    /// rebuilds them because their usearch metric is cosine.
    #[test]
    fn legacy_cosine_int8_codes_use_the_full_range() {
        let Code::I8(c) = Codec::I8 { scale: 0.0 }.encode(&[0.05, -0.1, 0.02]) else { panic!() };
        assert_eq!(c, vec![64, -127, 25]);
    }

    #[test]
    fn binary_codes_are_signs_about_the_centre() {
        let Code::B1(c) = (Codec::B1 { center: vec![] }).encode(&[1.0, -1.0, 0.5, 0.0, 3.0, -2.0, 1.0, 1.0, 0.1]) else { panic!() };
        assert_eq!(c.iter().map(|b| b.0).collect::<Vec<_>>(), vec![0b1010_1011, 0b1000_0000]);
        let rows = [vec![1.0f32, 10.0], vec![3.0, 30.0]];
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let codec = Codec::calibrate(false, Metric::L2, 2, &refs);
        assert_eq!(codec, Codec::B1 { center: vec![2.0, 20.0] });
        let Code::B1(c) = codec.encode(&[2.5, 15.0]) else { panic!() };
        assert_eq!(c[0].0, 0b1000_0000);
    }

    #[test]
    fn calibration_text_round_trips_and_rejects_garbage() {
        for c in [Codec::I8 { scale: 0.0 }, Codec::I8 { scale: 1234.5 }, Codec::B1 { center: vec![] }, Codec::B1 { center: vec![0.25, -1.5, 3e-7] }] {
            assert_eq!(Codec::from_text(&c.to_text(), 3), Some(c));
        }
        for bad in ["", "i8:", "i8:-1", "i8:NaN", "b1:1,2", "b1:1,x,3", "f32:1"] {
            assert_eq!(Codec::from_text(bad, 3), None, "{bad}");
        }
    }
}
