//! `tokenbroker store rekey`: re-seal every stored secret under a new master key, in one
//! transaction. Run it while the broker is stopped, then restart the broker with the new
//! key: a broker still running with the old key would seal new tokens with it.

use std::path::Path;
use std::sync::Arc;

use secrecy::SecretString;
use tokenbroker_core::seal::{MASTER_KEY_ENV, Sealer};
use tokenbroker_core::store::Reseal;

use super::check::load;
use crate::exit::{self, Exit};

/// The environment variable that holds the new master key.
pub const NEW_MASTER_KEY_ENV: &str = "TOKENBROKER_NEW_MASTER_KEY";

/// Runs `tokenbroker store rekey`; returns the exit code.
pub async fn run(config: &Path) -> Result<u8, Exit> {
    let config = load(config)?;
    let usage = |message: String| Exit::new(exit::CONFIG, message);
    let old = Sealer::from_env_or_file(config.store.key_file.as_deref())
        .map_err(|e| usage(e.to_string()))?;
    let new_text = std::env::var(NEW_MASTER_KEY_ENV)
        .ok()
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| {
            usage(format!(
                "set {NEW_MASTER_KEY_ENV} to the new key (`tokenbroker keys master` makes one)"
            ))
        })?;
    let new = Sealer::from_base64(&SecretString::from(new_text), NEW_MASTER_KEY_ENV)
        .map_err(|e| usage(e.to_string()))?;
    let store = crate::backend::open(&config.store, crate::backend::Missing::Refuse)
        .await
        .map(|b| b.store)
        .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?;
    let (old, new) = (Arc::new(old), Arc::new(new));
    let reseal: Reseal = Arc::new(move |row| {
        let plain = old.open(row.provider, row.purpose, row.sealed)?;
        Ok(new.seal(row.provider, row.purpose, &plain))
    });
    let count = store.rekey(reseal).await.map_err(|e| {
        Exit::new(
            exit::FAILURE,
            format!(
                "nothing changed: {e} (is {MASTER_KEY_ENV} the key the store was sealed with?)"
            ),
        )
    })?;
    let store = match &config.store.url {
        Some(_) => "the PostgreSQL store".to_owned(),
        None => config.store.path.display().to_string(),
    };
    println!(
        "re-sealed {count} value(s) in {store}; start the broker with {MASTER_KEY_ENV} set to the new key"
    );
    Ok(exit::OK)
}
