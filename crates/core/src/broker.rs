//! The broker: one [`Slot`] per configured provider, started together and stopped together.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::ProviderConfig;
use crate::issuer::{self, IssueError};
use crate::metrics::{Metrics, ProviderLabel};
use crate::slot::Slot;

/// Every provider's slot, and the switch that stops their drivers.
pub struct Broker {
    slots: BTreeMap<String, Slot>,
    metrics: Arc<Metrics>,
    clock: Clock,
    stop: watch::Sender<bool>,
    /// The slots' driver tasks, awaited on shutdown so that none is cut mid-issuance.
    drivers: Mutex<Vec<JoinHandle<()>>>,
}

impl Broker {
    /// Builds each provider's issuer and starts its slot. Must run inside a tokio runtime.
    pub fn start(providers: BTreeMap<String, ProviderConfig>) -> Result<Self, IssueError> {
        let metrics = Arc::new(Metrics::new());
        let clock = Clock::new();
        let (stop, _) = watch::channel(false);
        let mut slots = BTreeMap::new();
        let mut drivers = Vec::new();
        for (name, config) in providers {
            let issuer = issuer::for_provider(&config)?;
            let (slot, driver) = Slot::start(
                Arc::new(config),
                issuer,
                metrics.clone(),
                clock,
                stop.subscribe(),
            );
            slots.insert(name, slot);
            drivers.push(driver);
        }
        Ok(Self {
            slots,
            metrics,
            clock,
            stop,
            drivers: Mutex::new(drivers),
        })
    }

    pub fn slot(&self, provider: &str) -> Option<&Slot> {
        self.slots.get(provider)
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.values()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The Prometheus exposition, with each provider's token age brought up to date.
    pub fn render_metrics(&self) -> String {
        let now = self.clock.now();
        for slot in self.slots.values() {
            if let Some(token) = slot.view().token {
                let age = now.duration_since(token.issued_at).unwrap_or_default();
                self.metrics
                    .token_age
                    .get_or_create(&ProviderLabel {
                        provider: slot.name().to_owned(),
                    })
                    .set(age.as_secs_f64());
            }
        }
        self.metrics.encode()
    }

    /// Stops every driver and waits for them to finish.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let drivers = std::mem::take(&mut *self.drivers.lock().expect("driver list lock poisoned"));
        for driver in drivers {
            let _ = driver.await;
        }
    }
}
