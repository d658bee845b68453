//! `tokenbroker token PROVIDER`: print a token from a running broker.

use crate::api::TokenBody;
use crate::cli::Format;
use crate::client::BrokerClient;
use crate::exit::{self, Exit};

/// Runs `tokenbroker token`; returns the exit code.
pub async fn run(broker: &str, provider: &str, format: Format) -> Result<u8, Exit> {
    let token = fetch(broker, provider).await?;
    match format {
        Format::Raw => println!("{}", token.access_token),
        Format::Header => println!("{}: {}", token.header_name, token.header_value),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&token)
                .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?
        ),
    }
    Ok(exit::OK)
}

/// A token from the broker at `broker`, with the client key from `TOKENBROKER_KEY`.
pub(crate) async fn fetch(broker: &str, provider: &str) -> Result<TokenBody, Exit> {
    let as_exit = |e: crate::client::ClientError| Exit::new(e.exit_code(), e.to_string());
    let client = BrokerClient::from_env(broker).map_err(as_exit)?;
    client.token(provider).await.map_err(as_exit)
}
