//! Opens the store the config names: PostgreSQL when `store.url` is set (a cluster of
//! brokers), else the embedded SQLite file at `store.path` (which brokers on one host may
//! share), and says how often slots re-read it for other brokers' writes.

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

/// How often, by default, each slot of a broker on a SQLite file re-reads its stored token.
/// SQLite tells of no changes, so for brokers sharing one file this re-read is how a token
/// one of them issued reaches the others, and it bounds how long they may serve the token it
/// superseded. For a broker alone on its file it costs one indexed read of a local file per
/// provider per second.
const SHARED_FILE_SYNC: Duration = Duration::from_secs(1);

/// An open store, and how often to look for other brokers' writes.
pub struct Backend {
    /// The store itself.
    pub store: Arc<dyn Store>,
    /// How often slots re-read the tokens other brokers stored (the safety net under the
    /// store's change notifications).
    pub sync_every: Duration,
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
                sync_every: config.sync_interval.unwrap_or(CLUSTER_SYNC),
            })
        }
        None => {
            let store = match missing {
                Missing::Create => SqliteStore::open(&config.path).await?,
                Missing::Refuse => SqliteStore::open_existing(&config.path).await?,
            };
            Ok(Backend {
                store: Arc::new(store),
                sync_every: config.sync_interval.unwrap_or(SHARED_FILE_SYNC),
            })
        }
    }
}
