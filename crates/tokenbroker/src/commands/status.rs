//! `tokenbroker status`: every provider's state from a running broker, as a table.

use crate::client::BrokerClient;
use crate::commands::table::Table;
use crate::exit::{self, Exit};

/// Runs `tokenbroker status`; returns the exit code.
pub async fn run(broker: &str) -> Result<u8, Exit> {
    let as_exit = |e: crate::client::ClientError| Exit::new(e.exit_code(), e.to_string());
    let client = BrokerClient::from_env(broker).map_err(as_exit)?;
    let providers = client.providers().await.map_err(as_exit)?;
    let mut table = Table::new(&[
        "PROVIDER",
        "STATE",
        "GEN",
        "EXPIRES",
        "REFRESH AT",
        "ISSUED",
        "ISSUANCES",
        "LIVE",
        "LAST ERROR",
    ]);
    let dash = || "-".to_owned();
    for (name, p) in providers {
        table.row(vec![
            name,
            p.state,
            p.generation.to_string(),
            p.expires_at.unwrap_or_else(dash),
            p.refresh_at.unwrap_or_else(dash),
            p.last_issued_at.unwrap_or_else(dash),
            p.issuances.to_string(),
            p.live_tokens.to_string(),
            p.last_error
                .map_or_else(dash, |e| format!("{} {}", e.at, e.message)),
        ]);
    }
    print!("{table}");
    Ok(exit::OK)
}
