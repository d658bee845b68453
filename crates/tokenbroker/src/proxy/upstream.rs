//! The proxy's side of the upstream: one pooled keep-alive client per provider with an
//! `upstream`, its TLS roots, and the parts of its base URL a request URI is built from.
//!
//! Each of the server's workers gets clients of its own ([`Upstreams::for_worker`]): a
//! pooled connection's task runs on the runtime that opened it, so a worker that only uses
//! its own connections never hands a request to another thread.
//!
//! The clients are hyper's own (`hyper-util`'s pooled client over `hyper-rustls`), not
//! reqwest: a proxied request is already an `http::Request` with a streaming body, and
//! handing it over as it is saves the conversions and copies a convenience client makes
//! (measured in BENCHMARKS.md).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderName;
use axum::http::uri::{Authority, Scheme};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokenbroker_core::config::ProviderConfig;
use tokenbroker_core::tls;

/// How long an idle upstream connection is kept for the next request.
const IDLE: Duration = Duration::from_secs(90);

/// The pooled client every upstream request of a provider goes through.
pub(super) type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

/// One provider's upstream.
#[derive(Debug, Clone)]
pub(super) struct Upstream {
    pub(super) client: UpstreamClient,
    /// What a new client for another worker is built from.
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    /// The base URL's path without its trailing slash (`""` for the root).
    pub(super) base_path: String,
    /// The header the provider's token goes in.
    pub(super) token_header: HeaderName,
}

/// The upstreams of every provider that has one.
#[derive(Debug, Default)]
pub struct Upstreams {
    by_provider: BTreeMap<String, Upstream>,
}

impl Upstreams {
    /// Clients for every provider of `providers` that has an `upstream`: the system's
    /// trusted roots and the bundled Mozilla ones, plus the provider's `upstream_ca`.
    pub fn new<'a>(
        providers: impl Iterator<Item = &'a ProviderConfig>,
    ) -> Result<Self, UpstreamError> {
        let mut by_provider = BTreeMap::new();
        let mut system_roots = None;
        for provider in providers {
            let Some(base) = &provider.upstream else {
                continue;
            };
            let invalid = |reason: &str| UpstreamError::Client {
                provider: provider.name.clone(),
                reason: reason.to_owned(),
            };
            let roots = system_roots.get_or_insert_with(tls::system_roots).clone();
            let tls = tls_config(provider, roots)?;
            let connect_timeout = provider.proxy.upstream_timeout;
            let scheme = Scheme::try_from(base.scheme()).map_err(|_| invalid("bad scheme"))?;
            let host = base.host_str().ok_or_else(|| invalid("no host"))?;
            let authority = match base.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            let authority = Authority::try_from(authority).map_err(|_| invalid("bad host"))?;
            let token_header = HeaderName::from_bytes(provider.header.as_bytes())
                .map_err(|_| invalid("bad header name"))?;
            by_provider.insert(
                provider.name.clone(),
                Upstream {
                    client: client(tls.clone(), connect_timeout),
                    tls,
                    connect_timeout,
                    scheme,
                    authority,
                    base_path: base.path().trim_end_matches('/').to_owned(),
                    token_header,
                },
            );
        }
        Ok(Self { by_provider })
    }

    /// The same upstreams with clients of their own, whose pools share no connection with
    /// these: for another of the server's workers.
    pub fn for_worker(&self) -> Self {
        let by_provider = self
            .by_provider
            .iter()
            .map(|(name, upstream)| {
                let client = client(upstream.tls.clone(), upstream.connect_timeout);
                (
                    name.clone(),
                    Upstream {
                        client,
                        ..upstream.clone()
                    },
                )
            })
            .collect();
        Self { by_provider }
    }

    /// The upstream of `provider`, if it has one.
    pub(super) fn get(&self, provider: &str) -> Option<&Upstream> {
        self.by_provider.get(provider)
    }
}

/// Why the proxy's client of an upstream could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{provider}: cannot read upstream_ca {path}: {reason}")]
    Ca {
        provider: String,
        path: String,
        reason: String,
    },
    #[error("{provider}: cannot set up the upstream client: {reason}")]
    Client { provider: String, reason: String },
}

/// A pooled client over `tls` (or plain TCP, for an `http` upstream).
fn client(tls: rustls::ClientConfig, connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE)
        .build(connector)
}

/// The TLS client setup of `provider`: `roots` plus its `upstream_ca`.
fn tls_config(
    provider: &ProviderConfig,
    mut roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, UpstreamError> {
    if let Some(path) = &provider.proxy.upstream_ca {
        tls::add_pem_file(&mut roots, path).map_err(|e| UpstreamError::Ca {
            provider: provider.name.clone(),
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    tls::client_config(roots).map_err(|e| UpstreamError::Client {
        provider: provider.name.clone(),
        reason: e.to_string(),
    })
}
