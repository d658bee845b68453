//! Opens the store the config names: PostgreSQL when `store.url` is set (a cluster of
//! brokers), else the embedded SQLite file at `store.path`.

use std::sync::Arc;
use std::time::Duration;

use tokenbroker_core::config::StoreConfig;
use tokenbroker_core::store::{Store, StoreError};
use tokenbroker_store::{PostgresStore, SqliteStore};

/// How often a broker sharing a PostgreSQL store looks for tokens the others stored.
/// A read per provider per interval; it bounds how long another broker's new token takes to
/// reach this one.
const CLUSTER_SYNC: Duration = Duration::from_millis(100);

/// An open store, and how often to look for other brokers' writes (`None`: no others).
pub struct Backend {
    /// The store itself.
    pub store: Arc<dyn Store>,
    /// How often slots look for tokens other brokers stored.
    pub sync_every: Option<Duration>,
}

/// Whether to create a missing embedded store or insist that it exists (for commands that
/// only read or repair one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Create it (the broker itself).
    Create,
    /// Fail with "no store at ..." (`audit`, `store rekey`, `reseed`).
    Refuse,
}

/// Opens the configured store.
pub async fn open(config: &StoreConfig, missing: Missing) -> Result<Backend, StoreError> {
    match &config.url {
        Some(url) => Ok(Backend {
            store: Arc::new(PostgresStore::connect(url, config.schema.as_deref()).await?),
            sync_every: Some(CLUSTER_SYNC),
        }),
        None => {
            let store = match missing {
                Missing::Create => SqliteStore::open(&config.path).await?,
                Missing::Refuse => SqliteStore::open_existing(&config.path).await?,
            };
            Ok(Backend {
                store: Arc::new(store),
                sync_every: None,
            })
        }
    }
}
