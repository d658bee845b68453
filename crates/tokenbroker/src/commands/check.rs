//! `tokenbroker check`: validate the config, print every problem with its key; then what
//! `serve` would refuse at start besides: the master key, the listener's certificate and
//! key, and each upstream's TLS setup (`upstream_ca`).

use std::path::Path;

use tokenbroker_core::Config;
use tokenbroker_core::config::ConfigError;
use tokenbroker_core::seal::Sealer;

use crate::exit::{self, Exit};
use crate::proxy::Upstreams;

/// Runs `tokenbroker check`; returns the exit code.
pub fn run(path: &Path) -> Result<u8, Exit> {
    let config = load(path)?;
    let mut problems = Vec::new();
    if let Err(e) = Sealer::from_env_or_file(config.store.key_file.as_deref()) {
        problems.push(format!("master key: {e}"));
    }
    if let Some(files) = &config.server.tls
        && let Err(e) = crate::tls::server_config(files)
    {
        problems.push(format!("server.tls_cert, server.tls_key: {e}"));
    }
    for provider in config.providers.values() {
        if let Err(e) = Upstreams::new(std::iter::once(provider)) {
            // It names the provider first.
            problems.push(format!("providers.{e}"));
        }
    }
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
        return Err(Exit::new(
            exit::CONFIG,
            format!(
                "{} problem(s) in {}:\n{}",
                problems.len(),
                path.display(),
                list.join("\n")
            ),
        ));
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
