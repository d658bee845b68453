//! `tokenbroker check`: validate the config, print every problem with its key.

use std::path::Path;

use tokenbroker_core::Config;
use tokenbroker_core::config::ConfigError;

use crate::exit::{self, Exit};

/// Runs `tokenbroker check`; returns the exit code.
pub fn run(path: &Path) -> Result<u8, Exit> {
    let config = load(path)?;
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
