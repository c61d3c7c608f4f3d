//! The geo index: each `{"lat", "lon"}` value is a point on a 2^26 x 2^26
//! grid over lat [-90, 90] x lon [-180, 180], stored as its Z-order
//! (Morton) code, a 52-bit integer kept exactly as a numeric entry. A
//! cell of level L (2^L x 2^L cells) is one contiguous range of codes, so
//! a region's candidates are the union of a few numeric ranges: the cells
//! of the coarsest level whose cover of the region's bounding box has at
//! most [`MAX_CELLS`] cells. Candidates are then checked exactly, so
//! results equal a scan's.
use shoal_proto::v1::{condition, Condition, GeoPoint};

/// Bits per axis.
const BITS: u32 = 26;
/// Cells one cover may use.
pub const MAX_CELLS: u64 = 64;

fn cell(x: f64, lo: f64, span: f64, level: u32) -> u64 {
    let n = 1u64 << level;
    (((x - lo) / span * n as f64).floor().max(0.0) as u64).min(n - 1)
}

/// Spreads the low 26 bits of `v` to the even bit positions.
fn spread(mut v: u64) -> u64 {
    v &= (1 << BITS) - 1;
    v = (v | (v << 16)) & 0x0000_FFFF_0000_FFFF;
    v = (v | (v << 8)) & 0x00FF_00FF_00FF_00FF;
    v = (v | (v << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    v = (v | (v << 2)) & 0x3333_3333_3333_3333;
    (v | (v << 1)) & 0x5555_5555_5555_5555
}

fn morton(x: u64, y: u64) -> u64 {
    spread(x) | (spread(y) << 1)
}

/// The code of a point (finer than a meter at the equator's 40,000 km /
/// 2^26 = 0.6 m).
pub fn code(lat: f64, lon: f64) -> u64 {
    morton(cell(lon, -180.0, 360.0, BITS), cell(lat, -90.0, 180.0, BITS))
}

/// The code ranges (inclusive) of the cells covering the box
/// [lat0, lat1] x [lon0, lon1] (lon0 <= lon1: no antimeridian crossing).
pub fn cover(lat0: f64, lat1: f64, lon0: f64, lon1: f64) -> Vec<(u64, u64)> {
    for level in (0..=BITS).rev() {
        let (x0, x1) = (cell(lon0, -180.0, 360.0, level), cell(lon1, -180.0, 360.0, level));
        let (y0, y1) = (cell(lat0, -90.0, 180.0, level), cell(lat1, -90.0, 180.0, level));
        if (x1 - x0 + 1) * (y1 - y0 + 1) > MAX_CELLS {
            continue;
        }
        let shift = 2 * (BITS - level);
        let mut out = Vec::new();
        for x in x0..=x1 {
            for y in y0..=y1 {
                let z = morton(x, y) << shift;
                out.push((z, z + (1u64 << shift) - 1));
            }
        }
        out.sort_unstable();
        return out;
    }
    // Level 0 is one cell: the whole grid.
    vec![(0, (1u64 << (2 * BITS)) - 1)]
}

/// (lat0, lat1, lon0, lon1), lon0 <= lon1.
pub type GeoBox = (f64, f64, f64, f64);

/// Boxes bounding a geo condition's region; none
/// for conditions that are not geo. A region crossing the antimeridian is
/// two boxes.
pub fn boxes(c: &Condition) -> Option<(&str, Vec<GeoBox>)> {
    let split = |lat0: f64, lat1: f64, lon0: f64, lon1: f64| if lon0 <= lon1 { vec![(lat0, lat1, lon0, lon1)] } else { vec![(lat0, lat1, lon0, 180.0), (lat0, lat1, -180.0, lon1)] };
    match c.kind.as_ref()? {
        condition::Kind::GeoRadius(g) => {
            let c = g.center.as_ref()?;
            // Degrees of latitude per meter, and a margin for rounding.
            let dlat = g.radius_m / 111_194.9 * 1.01 + 1e-6;
            let (lat0, lat1) = (c.lat - dlat, c.lat + dlat);
            if lat0 <= -90.0 || lat1 >= 90.0 {
                // Reaches a pole: every longitude.
                return Some((&g.key, vec![(lat0.max(-90.0), lat1.min(90.0), -180.0, 180.0)]));
            }
            let widest = lat0.abs().max(lat1.abs()).to_radians().cos();
            let dlon = dlat / widest.max(1e-9);
            if dlon >= 180.0 {
                return Some((&g.key, vec![(lat0, lat1, -180.0, 180.0)]));
            }
            let wrap = |x: f64| if x < -180.0 { x + 360.0 } else if x > 180.0 { x - 360.0 } else { x };
            Some((&g.key, split(lat0, lat1, wrap(c.lon - dlon), wrap(c.lon + dlon))))
        }
        condition::Kind::GeoBoundingBox(g) => {
            let (tl, br) = (g.top_left.as_ref()?, g.bottom_right.as_ref()?);
            Some((&g.key, split(br.lat, tl.lat, tl.lon, br.lon)))
        }
        condition::Kind::GeoPolygon(g) => {
            let lat = |f: fn(f64, f64) -> f64, init: f64| g.exterior.iter().map(|p: &GeoPoint| p.lat).fold(init, f);
            let lon = |f: fn(f64, f64) -> f64, init: f64| g.exterior.iter().map(|p: &GeoPoint| p.lon).fold(init, f);
            Some((&g.key, vec![(lat(f64::min, 90.0), lat(f64::max, -90.0), lon(f64::min, 180.0), lon(f64::max, -180.0))]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_nest_and_cover_their_points() {
        let pts = [(52.52, 13.405), (-33.86, 151.21), (0.0, 0.0), (89.9, -179.9), (-90.0, 180.0)];
        for (lat, lon) in pts {
            let z = code(lat, lon);
            assert!(z < 1 << 52);
            // Every box around the point covers its code.
            for d in [1e-4, 0.1, 3.0, 50.0] {
                let r = cover((lat - d).max(-90.0), (lat + d).min(90.0), (lon - d).max(-180.0), (lon + d).min(180.0));
                assert!(r.len() as u64 <= MAX_CELLS);
                assert!(r.iter().any(|(a, b)| (*a..=*b).contains(&z)), "({lat}, {lon}) +- {d}");
            }
        }
        // A box far away does not.
        let r = cover(10.0, 11.0, 10.0, 11.0);
        assert!(!r.iter().any(|(a, b)| (*a..=*b).contains(&code(52.52, 13.405))));
    }
}
