//! Opens the store the config names: PostgreSQL when `store.url` is set (a cluster of
//! brokers), else the embedded SQLite file at `store.path`, and says how often slots
//! re-read it for other brokers' writes.

use std::sync::Arc;
use std::time::Duration;

use tokenbroker_core::config::StoreConfig;
use tokenbroker_core::store::{Store, StoreError};
use tokenbroker_store::{PostgresStore, SqliteStore};

/// How often, by default, each slot of a broker sharing a PostgreSQL store re-reads its
/// stored token. News of another broker's write arrives by LISTEN/NOTIFY within
/// milliseconds of its commit, and after a lost listening connection every slot re-reads
/// once it listens again, so this re-read is only the safety net for news lost without the
/// connection being seen to drop (a silently dead link until its keepalive notices; a
/// connection pooler in front of PostgreSQL that does not pass notifications on): it bounds
/// how long a superseded token can be served in those cases. A second keeps that bound
/// short for single-session identities and costs a tenth of the reads of the 100 ms
/// re-read that carried propagation alone before notifications (one indexed read per
/// provider per second per broker).
const CLUSTER_SYNC: Duration = Duration::from_secs(1);

/// An open store, and how often to look for other brokers' writes (`None`: no others).
pub struct Backend {
    /// The store itself.
    pub store: Arc<dyn Store>,
    /// How often slots re-read the tokens other brokers stored (the safety net under the
    /// store's change notifications).
    pub sync_every: Option<Duration>,
}

/// Whether to create a missing store (and migrate an older one) or insist that it exists
/// as it is (for commands that only read or repair one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Create or migrate it (the broker itself).
    Create,
    /// Fail with "no store at ..." (`audit`, `store rekey`, `reseed`); on PostgreSQL also
    /// refuse a schema older than this version rather than migrate it under running brokers.
    Refuse,
}

/// Opens the configured store.
pub async fn open(config: &StoreConfig, missing: Missing) -> Result<Backend, StoreError> {
    match &config.url {
        Some(url) => {
            let schema = config.schema.as_deref();
            let store = match missing {
                Missing::Create => PostgresStore::connect(url, schema).await?,
                Missing::Refuse => PostgresStore::connect_existing(url, schema).await?,
            };
            Ok(Backend {
                store: Arc::new(store),
                sync_every: Some(config.sync_interval.unwrap_or(CLUSTER_SYNC)),
            })
        }
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
