//! The proxy's side of the upstream: per provider with an `upstream`, how to reach it (its
//! host, port and TLS roots), the `Host` and base path a request is sent with, and a pool
//! of keep-alive connections ([`pool`](super::pool)).
//!
//! Each of the server's workers gets pools of its own ([`Upstreams::for_worker`]): a
//! connection's task runs on the runtime that opened it, so a worker that only uses its
//! own connections never hands a request to another thread, and no two workers share a
//! lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use rustls::pki_types::ServerName;
use tokenbroker_core::config::ProviderConfig;
use tokenbroker_core::tls;
use tokio_rustls::TlsConnector;

use super::pool::{Endpoint, Pool};
use super::references::References;

/// One provider's upstream.
pub(super) struct Upstream {
    /// This worker's connections to it.
    pub(super) pool: Arc<Pool>,
    /// The `Host` every request to it carries.
    pub(super) host: HeaderValue,
    /// The base URL's path without its trailing slash (`""` for the root).
    pub(super) base_path: String,
    /// The header the provider's token goes in.
    pub(super) token_header: HeaderName,
    /// Its references to itself in an answer, as the client reaches them.
    pub(super) references: Arc<References>,
}

/// The upstreams of every provider that has one.
#[derive(Default)]
pub struct Upstreams {
    by_provider: BTreeMap<String, Upstream>,
}

impl Upstreams {
    /// The upstream of every provider of `providers` that has one; an `https` one is
    /// trusted through the system's roots and the bundled Mozilla ones, plus the provider's
    /// `upstream_ca`.
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
            let host = base.host_str().ok_or_else(|| invalid("no host"))?;
            let port = base
                .port_or_known_default()
                .ok_or_else(|| invalid("no port"))?;
            // An IPv6 address is written in brackets in a URL and without them on a socket.
            let bare_host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let tls = match base.scheme() {
                "http" => None,
                "https" => {
                    let roots = system_roots.get_or_insert_with(tls::system_roots).clone();
                    let name = ServerName::try_from(bare_host.clone())
                        .map_err(|_| invalid("bad host name for TLS"))?;
                    Some((TlsConnector::from(tls_config(provider, roots)?), name))
                }
                _ => return Err(invalid("the scheme is neither http nor https")),
            };
            let authority = match base.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            let base_path = base.path().trim_end_matches('/').to_owned();
            let references = References::new(base.clone(), &provider.name);
            let endpoint = Arc::new(Endpoint {
                host: bare_host,
                port,
                tls,
            });
            by_provider.insert(
                provider.name.clone(),
                Upstream {
                    pool: Arc::new(Pool::new(endpoint)),
                    host: HeaderValue::try_from(authority).map_err(|_| invalid("bad host"))?,
                    base_path,
                    token_header: HeaderName::from_bytes(provider.header.as_bytes())
                        .map_err(|_| invalid("bad header name"))?,
                    references: Arc::new(references),
                },
            );
        }
        Ok(Self { by_provider })
    }

    /// The same upstreams with pools of their own, which share no connection with these:
    /// for another of the server's workers.
    pub fn for_worker(&self) -> Self {
        let by_provider = self
            .by_provider
            .iter()
            .map(|(name, upstream)| {
                let upstream = Upstream {
                    pool: Arc::new(upstream.pool.for_worker()),
                    host: upstream.host.clone(),
                    base_path: upstream.base_path.clone(),
                    token_header: upstream.token_header.clone(),
                    references: upstream.references.clone(),
                };
                (name.clone(), upstream)
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

/// The TLS client setup of `provider`: `roots` plus its `upstream_ca`, HTTP/1.1 only.
fn tls_config(
    provider: &ProviderConfig,
    mut roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
    if let Some(path) = &provider.proxy.upstream_ca {
        tls::add_pem_file(&mut roots, path).map_err(|e| UpstreamError::Ca {
            provider: provider.name.clone(),
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let mut config = tls::client_config(roots).map_err(|e| UpstreamError::Client {
        provider: provider.name.clone(),
        reason: e.to_string(),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
