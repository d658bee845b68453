//! `tokenbroker keys new CLIENT` and `keys master`.

use tokenbroker_core::access::{hex, key_sha256, new_client_key};
use tokenbroker_core::config::is_provider_name;
use tokenbroker_core::seal::new_master_key;

use crate::exit::{self, Exit};

/// Prints a new client key once, and the config lines that hold its hash and grant it
/// `providers` (none given: every one, `"*"`).
pub fn new_client(client: &str, providers: &[String]) -> Result<u8, Exit> {
    let valid = !client.is_empty()
        && client
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(Exit::new(
            exit::USAGE,
            format!("bad client name {client:?}: use letters, digits, '-' and '_'"),
        ));
    }
    // `*` (every provider) is what no names give, and means nothing beside names.
    let providers = match providers {
        [every] if every == "*" => &[],
        names => names,
    };
    if let Some(bad) = providers.iter().find(|name| !is_provider_name(name)) {
        return Err(Exit::new(
            exit::USAGE,
            format!(
                "bad provider name {bad:?} in --providers: use letters, digits, '-', '_', '~' \
                 and '.', but no leading '.' (or '*' alone, for every provider)"
            ),
        ));
    }
    let key = new_client_key();
    println!(
        "# client key for {client:?}; shown only now: give it to the client as TOKENBROKER_KEY"
    );
    println!("{key}");
    println!();
    if providers.is_empty() {
        println!(
            "# add to tokenbroker.toml (\"*\" is every provider: list only those this client \
             needs):"
        );
    } else {
        println!("# add to tokenbroker.toml:");
    }
    println!("[clients.{client}]");
    println!("key_sha256 = \"{}\"", hex(&key_sha256(&key)));
    let granted: Vec<String> = match providers {
        [] => vec!["\"*\"".to_owned()],
        names => names.iter().map(|name| format!("\"{name}\"")).collect(),
    };
    println!("providers = [{}]", granted.join(", "));
    Ok(exit::OK)
}

/// Prints a new master key for encryption at rest.
pub fn master() -> Result<u8, Exit> {
    println!("{}", new_master_key());
    Ok(exit::OK)
}
