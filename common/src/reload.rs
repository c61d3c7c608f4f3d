//! Files that take effect without a restart (certificates, API keys, JWT
//! keys): each owner compares a [`stamp`] of its files (modification time
//! and size) with the last load's, and [`watch`] checks every few seconds,
//! keeping the last good configuration when a changed file fails to load.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Modification time and size of each file (`None`: absent or unset).
pub type Stamp = Vec<Option<(SystemTime, u64)>>;

pub fn stamp(paths: &[Option<&Path>]) -> Stamp {
    paths.iter().map(|p| p.and_then(|p| std::fs::metadata(p).ok()).map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))).collect()
}

/// Something reloaded from files.
pub trait Reloadable: Send + Sync + 'static {
    /// What it is, for logs and the `what` label of
    /// `shoal_reloads_total`.
    const WHAT: &'static str;
    /// Reloads if a file changed: `Ok(true)` when a new configuration took
    /// effect; on error the last good one stays.
    fn reload_if_changed(&self) -> Result<bool, String>;
}

/// Checks `it` every `every` for as long as it lives.
pub fn watch<T: Reloadable>(it: &Arc<T>, every: Duration) -> tokio::task::JoinHandle<()> {
    let me = Arc::downgrade(it);
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            let Some(it) = me.upgrade() else { return };
            match it.reload_if_changed() {
                Ok(true) => {
                    failing = false;
                    tracing::info!(what = T::WHAT, "reloaded");
                    crate::telemetry::RELOADS.with_label_values(&[T::WHAT, "ok"]).inc();
                }
                Ok(false) => {}
                Err(e) => {
                    // Once per failure, not every check.
                    if !failing {
                        tracing::error!(what = T::WHAT, error = %e, "reloading failed; the previous configuration stays in use");
                        crate::telemetry::RELOADS.with_label_values(&[T::WHAT, "error"]).inc();
                    }
                    failing = true;
                }
            }
        }
    })
}
