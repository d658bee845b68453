//! `tokenbroker reseed PROVIDER`: put an `oauth2_refresh_token` provider that needs
//! credentials back in service with a new refresh token read from standard input. It writes
//! the store directly (sealed), so it works whether or not the broker runs; a running broker
//! picks the new token up the next time a consumer asks.

use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use tokenbroker_core::config::IssuerConfig;
use tokenbroker_core::seal::{Purpose, Sealer};
use tokenbroker_core::store::{AuditEvent, AuditKind};

use super::check::load;
use crate::exit::{self, Exit};

/// Runs `tokenbroker reseed`; returns the exit code.
pub async fn run(config: &Path, provider: &str) -> Result<u8, Exit> {
    let config = load(config)?;
    let settings = config.providers.get(provider).ok_or_else(|| {
        Exit::new(
            exit::USAGE,
            format!("no provider named {provider:?} in the config"),
        )
    })?;
    if !matches!(settings.issuer, IssuerConfig::RefreshToken(_)) {
        return Err(Exit::new(
            exit::USAGE,
            format!("{provider} is not an oauth2_refresh_token provider; only those are reseeded"),
        ));
    }
    let sealer = Sealer::from_env_or_file(config.store.key_file.as_deref())
        .map_err(|e| Exit::new(exit::CONFIG, e.to_string()))?;
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| {
        Exit::new(
            exit::FAILURE,
            format!("cannot read the refresh token from stdin: {e}"),
        )
    })?;
    let token = SecretString::from(text.trim().to_owned());
    if token.expose_secret().is_empty() || token.expose_secret().contains(char::is_whitespace) {
        return Err(Exit::new(
            exit::USAGE,
            "give the new refresh token, alone, on standard input",
        ));
    }
    let failure = |e: tokenbroker_core::store::StoreError| Exit::new(exit::FAILURE, e.to_string());
    let store = crate::backend::open(&config.store, crate::backend::Missing::Refuse)
        .await
        .map(|b| b.store)
        .map_err(failure)?;
    let current = store.load_refresh(provider).await.map_err(failure)?;
    let expected = current.map_or(0, |c| c.generation);
    let sealed = sealer.seal(
        provider,
        Purpose::RefreshToken,
        token.expose_secret().as_bytes(),
    );
    let generation = store
        .save_refresh(provider, expected, &sealed)
        .await
        .map_err(|e| Exit::new(exit::FAILURE, format!("nothing changed: {e} (retry)")))?;
    store
        .record(&AuditEvent {
            at: SystemTime::now(),
            provider: provider.to_owned(),
            kind: AuditKind::Reseeded,
            generation: Some(generation),
            detail: "new refresh token from `tokenbroker reseed`".to_owned(),
        })
        .await
        .map_err(failure)?;
    println!("{provider}: new refresh token stored; the broker uses it at its next issuance");
    Ok(exit::OK)
}
