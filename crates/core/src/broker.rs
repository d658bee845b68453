//! The broker: one [`Slot`] per configured provider, started together from the store and
//! stopped together.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::ProviderConfig;
use crate::identity::Identity;
use crate::issuer::{self, IssueError};
use crate::metrics::{Metrics, ProviderLabel};
use crate::seal::{Purpose, SealError, Sealer};
use crate::slot::{self, Context, Persistence, Slot, SlotState};
use crate::store::{AuditEvent, AuditKind, Store, StoreError, StoreErrorKind};

/// The plaintext of the store's key check.
const KEY_CHECK: &[u8] = b"tokenbroker master key check";

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Issuer(#[from] IssueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store was sealed with another master key: {0}")]
    WrongKey(#[source] SealError),
}

/// Every provider's slot, and the switch that stops their drivers.
pub struct Broker {
    slots: BTreeMap<String, Slot>,
    persistence: Arc<Persistence>,
    /// The runtime the broker was started on, which owns the store's connections.
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    clock: Clock,
    stop: watch::Sender<bool>,
    /// The slots' driver tasks, awaited on shutdown so that none is cut mid-issuance.
    drivers: Mutex<Vec<JoinHandle<()>>>,
}

impl Broker {
    /// Checks the master key against the store, builds each provider's issuer, reuses each
    /// provider's stored token, and starts the slots. Must run inside a tokio runtime.
    pub async fn start(
        providers: BTreeMap<String, ProviderConfig>,
        persistence: Persistence,
    ) -> Result<Self, StartError> {
        verify_key(&*persistence.store, &persistence.sealer).await?;
        let persistence = Arc::new(persistence);
        let metrics = Arc::new(Metrics::new());
        let clock = Clock::system();
        let (stop, _) = watch::channel(false);
        let mut slots = BTreeMap::new();
        let mut drivers = Vec::new();
        for (name, config) in providers {
            let issuer = issuer::for_provider(&config)?;
            let stored = persistence.store.load_token(&name).await?;
            let restored = stored.and_then(|stored| {
                slot::restore(&persistence, &Identity::of_tokens(&config), &name, stored)
            });
            let restored = match restored {
                Some(restored) => Some(
                    restored
                        .checked_at_start(&config, &*persistence.store)
                        .await?,
                ),
                None => None,
            };
            if let Some(slot::Restored {
                token,
                out_of_service: false,
            }) = &restored
            {
                let valid_for = token.remaining(clock.now());
                tracing::info!(provider = %name, generation = token.generation, valid_for_s = valid_for.as_secs(), "reusing the stored token");
                let event = AuditEvent {
                    at: clock.now(),
                    provider: name.clone(),
                    kind: AuditKind::Restored,
                    generation: Some(token.generation),
                    detail: format!("valid for {}s more", valid_for.as_secs()),
                };
                persistence.store.record(&event).await?;
            }
            let context = Context {
                persistence: persistence.clone(),
                metrics: metrics.clone(),
                clock,
                stop: stop.subscribe(),
            };
            let (slot, driver) = Slot::start(Arc::new(config), issuer, restored, context);
            slots.insert(name, slot);
            drivers.push(driver);
        }
        Ok(Self {
            slots,
            persistence,
            runtime: tokio::runtime::Handle::current(),
            metrics,
            clock,
            stop,
            drivers: Mutex::new(drivers),
        })
    }

    /// The slot of `provider`, if it is configured.
    pub fn slot(&self, provider: &str) -> Option<&Slot> {
        self.slots.get(provider)
    }

    /// Every provider's slot, by name.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.values()
    }

    /// Whether the store answers, for the readiness probe. Asked on the broker's runtime,
    /// which owns the store's connections, whichever runtime the caller runs on.
    pub async fn store_reachable(&self) -> Result<(), StoreError> {
        let persistence = self.persistence.clone();
        self.runtime
            .spawn(async move { persistence.store.key_check().await.map(drop) })
            .await
            .unwrap_or_else(|e| Err(StoreError::new(StoreErrorKind::Unavailable, e.to_string())))
    }

    /// The broker's metrics, for the API to count requests in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The Prometheus exposition, with each provider's token age and credentials state
    /// brought up to date.
    pub fn render_metrics(&self) -> String {
        let now = self.clock.now();
        for slot in self.slots.values() {
            let view = slot.view();
            let label = ProviderLabel {
                provider: slot.name().to_owned(),
            };
            let needs = i64::from(view.state == SlotState::NeedsCredentials);
            self.metrics
                .needs_credentials
                .get_or_create(&label)
                .set(needs);
            if let Some(token) = view.token {
                let age = now.duration_since(token.issued_at).unwrap_or_default();
                self.metrics
                    .token_age
                    .get_or_create(&label)
                    .set(age.as_secs_f64());
            }
        }
        self.metrics.encode()
    }

    /// Stops every driver and waits for them to finish their current issuance.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let drivers = std::mem::take(&mut *self.drivers.lock().expect("driver list lock poisoned"));
        for driver in drivers {
            let _ = driver.await;
        }
    }
}

/// Fails if the store's secrets were sealed with another key than `sealer`'s; seals the
/// check on first use. For everything that writes sealed rows: the broker at start, and
/// the commands that write the store directly.
pub async fn verify_key(store: &dyn Store, sealer: &Sealer) -> Result<(), StartError> {
    let sealed = match store.key_check().await? {
        Some(sealed) => sealed,
        None => {
            store
                .set_key_check(&sealer.seal("", Purpose::KeyCheck, KEY_CHECK))
                .await?;
            // The first check written is kept: another broker starting on the same new
            // store at the same time, perhaps with another key, may have written it.
            store.key_check().await?.ok_or_else(|| {
                StoreError::new(StoreErrorKind::Corrupt, "the key check was not kept")
            })?
        }
    };
    let opened = sealer
        .open("", Purpose::KeyCheck, &sealed)
        .map_err(StartError::WrongKey)?;
    if opened != KEY_CHECK {
        return Err(StartError::WrongKey(SealError::WrongKeyOrTampered));
    }
    Ok(())
}
