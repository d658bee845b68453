//! `tokenbroker audit [PROVIDER] [--since 1h]`: the audit trail from the store, as a table.
//! It reads the store directly, so it works while the broker is down; it needs no master
//! key, since the audit holds no secret.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::check::load;
use crate::commands::table::Table;
use crate::exit::{self, Exit};

/// Runs `tokenbroker audit`; returns the exit code.
pub async fn run(config: &Path, provider: Option<&str>, since: Duration) -> Result<u8, Exit> {
    let config = load(config)?;
    let store = crate::backend::open(&config.store, crate::backend::Missing::Refuse)
        .await
        .map(|b| b.store)
        .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?;
    let from = SystemTime::now()
        .checked_sub(since)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let events = store
        .audit(provider, from)
        .await
        .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?;
    let mut table = Table::new(&["TIME", "PROVIDER", "EVENT", "GEN", "DETAIL"]);
    for event in &events {
        table.row(vec![
            humantime::format_rfc3339_seconds(event.at).to_string(),
            event.provider.clone(),
            event.kind.as_str().to_owned(),
            event
                .generation
                .map_or_else(|| "-".to_owned(), |g| g.to_string()),
            event.detail.clone(),
        ]);
    }
    print!("{table}");
    if events.is_empty() {
        let since = humantime::format_duration(since);
        match provider {
            // A provider no longer configured keeps its trail; a typo has none.
            Some(name) if !config.providers.contains_key(name) => eprintln!(
                "no audit events for {name:?} in the last {since}, and no provider of that \
                 name in the config"
            ),
            _ => eprintln!("no audit events in the last {since}"),
        }
    }
    Ok(exit::OK)
}
