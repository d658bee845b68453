//! `tokenbroker keys new CLIENT` and `keys master`.

use tokenbroker_core::access::{hex, key_sha256, new_client_key};
use tokenbroker_core::seal::new_master_key;

use crate::exit::{self, Exit};

/// Prints a new client key once, and the config lines that hold its hash.
pub fn new_client(client: &str) -> Result<u8, Exit> {
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
    let key = new_client_key();
    println!(
        "# client key for {client:?}; shown only now: give it to the client as TOKENBROKER_KEY"
    );
    println!("{key}");
    println!();
    println!("# add to tokenbroker.toml (list only the providers this client needs):");
    println!("[clients.{client}]");
    println!("key_sha256 = \"{}\"", hex(&key_sha256(&key)));
    println!("providers = [\"*\"]");
    Ok(exit::OK)
}

/// Prints a new master key for encryption at rest.
pub fn master() -> Result<u8, Exit> {
    println!("{}", new_master_key());
    Ok(exit::OK)
}
