//! The broker's Prometheus metrics. Labels are provider names and fixed reason words,
//! never anything a consumer or an issuer sent: `/metrics` needs no key, so it must carry
//! nothing secret.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    /// The provider's name.
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The provider's name.
    pub provider: String,
    /// `login` or `refresh`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The provider's name.
    pub provider: String,
    /// An [`IssueError::reason`](crate::issuer::IssueError::reason).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The provider's name.
    pub provider: String,
    /// What the request got: `served`, or the error code it was answered with.
    pub outcome: &'static str,
}

/// Every metric the broker exports, registered once.
pub struct Metrics {
    registry: Registry,
    /// Tokens obtained, by provider and kind (login or refresh).
    pub issuances: Family<KindLabels, Counter>,
    /// Failed issuance attempts, by provider and reason.
    pub issuance_failures: Family<ReasonLabels, Counter>,
    /// Token requests by outcome.
    pub token_requests: Family<OutcomeLabels, Counter>,
    /// Invalidations, `honoured` (caused a reissue) or `ignored` (the token was already
    /// replaced).
    pub invalidations: Family<OutcomeLabels, Counter>,
    /// How long issuer calls take, successful or not.
    pub issuer_latency: Family<ProviderLabel, Histogram>,
    /// Age of each provider's current token in seconds, set when scraped.
    pub token_age: Family<ProviderLabel, Gauge<f64, AtomicU64>>,
    /// 1 while a provider's refresh token is out of service until a reseed, set when scraped.
    pub needs_credentials: Family<ProviderLabel, Gauge>,
}

impl Metrics {
    /// Registers every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokenbroker");
        let issuances = Family::default();
        registry.register(
            "issuances",
            "Tokens obtained from issuers",
            issuances.clone(),
        );
        let issuance_failures = Family::default();
        registry.register(
            "issuance_failures",
            "Failed issuance attempts",
            issuance_failures.clone(),
        );
        let token_requests = Family::default();
        registry.register(
            "token_requests",
            "Token requests by outcome",
            token_requests.clone(),
        );
        let invalidations = Family::default();
        registry.register(
            "invalidations",
            "Invalidation reports, honoured or ignored",
            invalidations.clone(),
        );
        let issuer_latency = Family::<ProviderLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "issuer_latency_seconds",
            "Issuer call latency",
            issuer_latency.clone(),
        );
        let token_age = Family::default();
        registry.register(
            "token_age_seconds",
            "Age of the current token",
            token_age.clone(),
        );
        let needs_credentials = Family::default();
        registry.register(
            "needs_credentials",
            "1 while the provider waits for `tokenbroker reseed`",
            needs_credentials.clone(),
        );
        Self {
            registry,
            needs_credentials,
            issuances,
            issuance_failures,
            token_requests,
            invalidations,
            issuer_latency,
            token_age,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
