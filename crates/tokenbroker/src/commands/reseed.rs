//! `tokenbroker reseed PROVIDER`: put an `oauth2_refresh_token` provider that needs
//! credentials back in service with a new refresh token read from standard input. It writes
//! the store directly (sealed, once the master key is checked against the store's), so it
//! works whether or not the broker runs; a running broker picks the new token up the next
//! time a consumer asks. It takes the provider's issuance lease for the write, as a broker
//! does (the store fences refresh-token writes by it), so it never lands in the middle of an
//! issuance.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use tokenbroker_core::config::IssuerConfig;
use tokenbroker_core::identity::Identity;
use tokenbroker_core::seal::Sealer;
use tokenbroker_core::slot::store_given_refresh_token;
use tokenbroker_core::store::{AuditEvent, AuditKind, Lease, Store, StoreError};

use super::check::load;
use crate::exit::{self, Exit};

/// How long the reseed waits for an issuance under way (which holds the lease) to end:
/// longer than a broker's issuance lease, which is renewed only while an issuance runs.
const LEASE_WAIT: Duration = Duration::from_secs(10);

/// The reseed's own lease: it only writes two rows.
const LEASE_TTL: Duration = Duration::from_secs(3);

/// How soon to ask again for a lease another holder has.
const LEASE_POLL: Duration = Duration::from_millis(100);

/// Runs `tokenbroker reseed`; returns the exit code.
pub async fn run(config: &Path, provider: &str) -> Result<u8, Exit> {
    let config = load(config)?;
    let settings = config.providers.get(provider).ok_or_else(|| {
        Exit::new(
            exit::USAGE,
            format!("no provider named {provider:?} in the config"),
        )
    })?;
    let IssuerConfig::RefreshToken(settings) = &settings.issuer else {
        return Err(Exit::new(
            exit::USAGE,
            format!("{provider} is not an oauth2_refresh_token provider; only those are reseeded"),
        ));
    };
    // Stored as the configured client's, as the brokers will look for it.
    let identity = Identity::of_refresh_tokens(settings);
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
    let failure = |e: StoreError| Exit::new(exit::FAILURE, e.to_string());
    let store = crate::backend::open(&config.store, crate::backend::Missing::Refuse)
        .await
        .map(|b| b.store)
        .map_err(failure)?;
    // A token sealed with another key than the brokers' would not open for them.
    tokenbroker_core::broker::verify_key(&*store, &sealer)
        .await
        .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?;
    let holder = format!("reseed-{}", std::process::id());
    let fence = take_lease(&*store, provider, &holder).await?;
    let saved = save(&*store, provider, fence, &sealer, &identity, &token).await;
    // Released whatever happened; if that fails too, the lease expires within LEASE_TTL.
    let _ = store.release_lease(provider, &holder).await;
    let generation = saved?;
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

/// Takes the provider's issuance lease, waiting (bounded) for an issuance under way to end.
async fn take_lease(store: &dyn Store, provider: &str, holder: &str) -> Result<u64, Exit> {
    let deadline = tokio::time::Instant::now() + LEASE_WAIT;
    loop {
        let lease = store
            .acquire_lease(provider, holder, LEASE_TTL)
            .await
            .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?;
        match lease {
            Lease::Granted { fence } => return Ok(fence),
            Lease::HeldElsewhere { .. } if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(LEASE_POLL).await;
            }
            Lease::HeldElsewhere { .. } => {
                return Err(Exit::new(
                    exit::FAILURE,
                    format!(
                        "a broker has been issuing for {provider} for over {}s; nothing changed (retry)",
                        LEASE_WAIT.as_secs()
                    ),
                ));
            }
        }
    }
}

/// Seals `token` and stores it as the successor of the stored refresh token, under the
/// lease grant `fence`; returns its generation.
async fn save(
    store: &dyn Store,
    provider: &str,
    fence: u64,
    sealer: &Sealer,
    identity: &Identity,
    token: &SecretString,
) -> Result<u64, Exit> {
    let nothing_changed =
        |e: StoreError| Exit::new(exit::FAILURE, format!("nothing changed: {e} (retry)"));
    let current = store
        .load_refresh(provider)
        .await
        .map_err(nothing_changed)?;
    let expected = current.map_or(0, |c| c.generation);
    store_given_refresh_token(store, sealer, identity, provider, fence, expected, token)
        .await
        .map_err(nothing_changed)?
        .ok_or_else(|| {
            Exit::new(
                exit::USAGE,
                "this refresh token was stored before, and so sent; nothing changed (give a new one)",
            )
        })
}
