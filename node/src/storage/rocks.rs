//! RocksDB [`KvEngine`]: one database per node with the column families of
//! [`Cf`]. Synced writes fsync the WAL before returning, which is what makes
//! an acknowledged upsert durable.
use std::path::Path;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use super::{Cf, KeyValue, KvEngine, KvOp};
use crate::error::StorageError;

/// RocksDB memory, counted in the node's resident size (docs/limits.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocksTuning {
    /// Cap on all memtables together; each column family's memtable is a
    /// quarter of it, so a full one flushes while another fills.
    pub memtable_budget: usize,
    /// Shared LRU block cache.
    pub block_cache: usize,
}

impl Default for RocksTuning {
    fn default() -> Self {
        RocksTuning { memtable_budget: 16 << 20, block_cache: 8 << 20 }
    }
}

pub struct RocksEngine {
    db: DB,
}

impl RocksEngine {
    /// Opens (creating if needed) the database in `dir` with default tuning.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with(dir, RocksTuning::default())
    }

    /// Opens (creating if needed) the database in `dir`.
    pub fn open_with(dir: &Path, tuning: RocksTuning) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        // Every write Shoal acknowledges is synced, so only the record being
        // written at a crash may be incomplete. RocksDB's default
        // (PointInTime) also stops replaying at a damaged record in the
        // middle of the log and opens without every record after it: a
        // Raft replica would come back missing entries it had
        // acknowledged, and vote on that. This mode refuses to open
        // instead; the operator empties the directory and the node
        // rejoins as a new incarnation (docs/operations.md).
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        // Memory is bounded and counted in the vector budget (docs/limits.md):
        // memtables of all column families share one cap, and one block cache
        // serves every table.
        opts.set_db_write_buffer_size(tuning.memtable_budget);
        let cache = Cache::new_lru_cache(tuning.block_cache)?;
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            o.set_write_buffer_size((tuning.memtable_budget / 4).max(1 << 20));
            if *cf == Cf::Points {
                // The write path looks every upserted id up (id -> offset
                // lives here); a bloom filter makes the miss of a new id cheap.
                t.set_bloom_filter(10.0, false);
            }
            o.set_block_based_table_factory(&t);
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(RocksEngine { db })
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("column families are created at open")
    }
}

impl KvEngine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    fn write(&self, ops: Vec<KvOp>, sync: bool) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                KvOp::Put(cf, k, v) => batch.put_cf(self.cf(cf), k, v),
                KvOp::Delete(cf, k) => batch.delete_cf(self.cf(cf), k),
                KvOp::DeleteRange(cf, s, e) => batch.delete_range_cf(self.cf(cf), s, e),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        let it = self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(start, Direction::Forward));
        for item in it {
            let (k, v) = item?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        let mut it = self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(end, Direction::Reverse));
        // `From(end, Reverse)` starts at the last key <= end; skip `end` itself.
        for item in it.by_ref() {
            let (k, v) = item?;
            if &*k < end {
                return Ok(Some((k.to_vec(), v.to_vec())));
            }
        }
        Ok(None)
    }

    fn flush(&self) -> Result<(), StorageError> {
        for cf in Cf::ALL {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }

    fn sync_log(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    fn quiesce(&self) {
        if let Err(e) = self.db.flush_wal(true) {
            tracing::warn!(error = %e, "syncing the RocksDB log at shutdown failed");
        }
        self.db.cancel_all_background_work(true);
    }
}
