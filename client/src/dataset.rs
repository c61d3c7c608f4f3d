//! Vector files and benchmark dataset folders.
//!
//! - `.fvecs` / `.ivecs` (TEXMEX): per row an int32 dimension then that
//!   many float32 / int32, little-endian.
//! - `.npy`: a 2-D little-endian float32 (or float64) array.
//! - JSONL: one object per line, `{"id": u64|"uuid", "vector": [...], "payload": {...}}`.
//! - A dataset folder (see `../shared/data/README.md`): `meta.json`,
//!   `base.fvecs`, `query.fvecs`, `groundtruth.ivecs`, optional
//!   `payload.jsonl.gz` and `filters.json`.
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Reads all rows of an .fvecs file.
pub fn read_fvecs(path: &Path) -> Result<Vec<Vec<f32>>> {
    read_vecs(path, f32::from_le_bytes)
}

/// Reads all rows of an .ivecs file.
pub fn read_ivecs(path: &Path) -> Result<Vec<Vec<i32>>> {
    read_vecs(path, i32::from_le_bytes)
}

fn read_vecs<T>(path: &Path, conv: fn([u8; 4]) -> T) -> Result<Vec<Vec<T>>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?.read_to_end(&mut bytes)?;
    let mut rows = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if at + 4 > bytes.len() {
            bail!("{}: truncated row header at byte {at}", path.display());
        }
        let dim = i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        if dim <= 0 || dim > 1 << 20 {
            bail!("{}: bad dimension {dim} at byte {at}", path.display());
        }
        let end = at + 4 + dim as usize * 4;
        if end > bytes.len() {
            bail!("{}: truncated row at byte {at}", path.display());
        }
        rows.push(bytes[at + 4..end].chunks_exact(4).map(|c| conv(c.try_into().unwrap())).collect());
        at = end;
    }
    Ok(rows)
}

/// Writes rows as .fvecs (used by tests and sample generation).
pub fn write_fvecs(path: &Path, rows: &[Vec<f32>]) -> Result<()> {
    use std::io::Write;
    // Streamed: a 1M x 768 set is 3 GB.
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for r in rows {
        out.write_all(&(r.len() as i32).to_le_bytes())?;
        for x in r {
            out.write_all(&x.to_le_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Reads a 2-D float32/float64 .npy file.
pub fn read_npy(path: &Path) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("opening {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        bail!("{}: expected a 2-D array, got shape {shape:?}", path.display());
    }
    let dim = shape[1] as usize;
    let flat: Vec<f32> = match npy.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 4 => npy.into_vec::<f32>()?,
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 8 => npy.into_vec::<f64>()?.into_iter().map(|x| x as f32).collect(),
        other => bail!("{}: unsupported dtype {other:?}; use float32 or float64", path.display()),
    };
    Ok(flat.chunks_exact(dim).map(|c| c.to_vec()).collect())
}

/// One JSONL record.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct JsonPoint {
    pub id: serde_json::Value,
    pub vector: Vec<f32>,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// Sparse vectors by name: `{"name": {"indices": [..], "values": [..]}}`.
    #[serde(default)]
    pub sparse: std::collections::BTreeMap<String, JsonSparse>,
    /// Named vectors by name: a list of numbers (dense) or a list of lists
    /// (a multi-vector's rows).
    #[serde(default)]
    pub vectors: std::collections::BTreeMap<String, JsonNamed>,
}

/// A named vector in a JSONL record.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum JsonNamed {
    Dense(Vec<f32>),
    Multi(Vec<Vec<f32>>),
}

/// A sparse vector in a JSONL record.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct JsonSparse {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// Streams JSONL records, with 1-based line numbers in errors.
pub fn read_jsonl(path: &Path) -> Result<Vec<JsonPoint>> {
    let f = BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let mut out = Vec::new();
    for (i, line) in f.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).with_context(|| format!("{}:{}: bad record", path.display(), i + 1))?);
    }
    Ok(out)
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Meta {
    pub name: String,
    pub dim: u32,
    pub metric: String,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct FilterSet {
    pub name: String,
    #[serde(default)]
    pub selectivity: f64,
    pub filter: serde_json::Value,
    pub groundtruth: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct FilterFile {
    sets: Vec<FilterSet>,
}

/// A benchmark dataset folder.
pub struct Dataset {
    pub meta: Meta,
    pub base: Vec<Vec<f32>>,
    pub queries: Vec<Vec<f32>>,
    pub groundtruth: Vec<Vec<i32>>,
    pub payloads: Option<Vec<serde_json::Value>>,
    pub filters: Vec<FilterSet>,
}

impl Dataset {
    pub fn load(dir: &Path) -> Result<Self> {
        let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).with_context(|| format!("{}: no meta.json", dir.display()))?)?;
        let base = read_fvecs(&dir.join("base.fvecs"))?;
        let queries = read_fvecs(&dir.join("query.fvecs"))?;
        let groundtruth = read_ivecs(&dir.join("groundtruth.ivecs"))?;
        let payloads = match std::fs::File::open(dir.join("payload.jsonl.gz")) {
            Ok(f) => {
                let r = BufReader::new(flate2::read::GzDecoder::new(f));
                Some(r.lines().map(|l| Ok(serde_json::from_str(&l?)?)).collect::<Result<Vec<_>>>()?)
            }
            Err(_) => None,
        };
        let filters = match std::fs::read(dir.join("filters.json")) {
            Ok(b) => serde_json::from_slice::<FilterFile>(&b)?.sets,
            Err(_) => vec![],
        };
        if base.first().is_some_and(|r| r.len() != meta.dim as usize) {
            bail!("{}: base vectors have {} dims, meta.json says {}", dir.display(), base[0].len(), meta.dim);
        }
        Ok(Dataset { meta, base, queries, groundtruth, payloads, filters })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fvecs_roundtrip_and_truncation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.fvecs");
        let rows = vec![vec![1.0, 2.0], vec![3.0, -4.5]];
        write_fvecs(&p, &rows).unwrap();
        assert_eq!(read_fvecs(&p).unwrap(), rows);
        let mut b = std::fs::read(&p).unwrap();
        b.pop();
        std::fs::write(&p, b).unwrap();
        assert!(read_fvecs(&p).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn npy_f32() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.npy");
        let mut buf = vec![];
        {
            use npyz::WriterBuilder;
            let mut w = npyz::WriteOptions::new().default_dtype().shape(&[2, 3]).writer(&mut buf).begin_nd().unwrap();
            w.extend([1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
            w.finish().unwrap();
        }
        std::fs::write(&p, buf).unwrap();
        assert_eq!(read_npy(&p).unwrap(), vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
    }
}
