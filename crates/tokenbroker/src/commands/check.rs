//! `tokenbroker check`: validate the config, print every problem with its key; then what
//! `serve` would refuse at start besides: the master key, the listener's certificate and
//! key, and each upstream's TLS setup (`upstream_ca`).

use std::path::Path;

use tokenbroker_core::Config;
use tokenbroker_core::config::{ConfigError, Problem};
use tokenbroker_core::seal::Sealer;

use crate::exit::{self, Exit};
use crate::proxy::{UpstreamError, Upstreams};

/// Runs `tokenbroker check`; returns the exit code.
pub fn run(path: &Path) -> Result<u8, Exit> {
    let config = load(path)?;
    let mut problems = Vec::new();
    let mut problem = |key: String, message: String| problems.push(Problem { key, message });
    if let Err(e) = Sealer::from_env_or_file(config.store.key_file.as_deref()) {
        problem("master key".to_owned(), e.to_string());
    }
    if let Some(files) = &config.server.tls
        && let Err(e) = crate::tls::server_config(files)
    {
        problem("server.tls_cert, server.tls_key".to_owned(), e.to_string());
    }
    for provider in config.providers.values() {
        let key = |name: &str| format!("providers.{}.{name}", provider.name);
        match Upstreams::new(std::iter::once(provider)) {
            Ok(_) => {}
            Err(UpstreamError::Ca { path, reason, .. }) => {
                problem(key("upstream_ca"), format!("{path}: {reason}"));
            }
            Err(UpstreamError::Client { reason, .. }) => problem(key("upstream"), reason),
        }
    }
    if !problems.is_empty() {
        let invalid = ConfigError::Invalid {
            origin: path.display().to_string(),
            problems,
        };
        return Err(Exit::new(exit::CONFIG, invalid.to_string()));
    }
    println!(
        "{}: OK ({} provider(s), {} client(s))",
        path.display(),
        config.providers.len(),
        config.clients.len()
    );
    Ok(exit::OK)
}

/// Loads the config, or the exit that reports why it cannot be used.
pub(crate) fn load(path: &Path) -> Result<Config, Exit> {
    Config::load(path).map_err(|e| {
        let code = match e {
            ConfigError::Read { .. } | ConfigError::Invalid { .. } => exit::CONFIG,
        };
        Exit::new(code, e.to_string())
    })
}
