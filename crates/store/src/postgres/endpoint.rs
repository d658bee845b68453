//! Where the database is and how to reach it: the connection string read into tokio-postgres's
//! `Config`, the TLS it asks for, and a name for messages that never carries the password.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and no
//! `sslrootcert`; libpq's `verify-ca`, `verify-full` and `sslrootcert` are taken out of a
//! URL's query here before tokio-postgres reads the rest. TLS is rustls on the ring provider,
//! and it always verifies the server's certificate and name: against `sslrootcert` when the
//! URL names a PEM file, else against the system's roots plus the webpki roots. That makes
//! `require` as strict as `verify-full` (libpq's `require` does not verify): the store holds
//! the issuance lease that keeps two brokers from logging in at once, and a man in the middle
//! must not be able to hand it out. `disable`, `allow`, `prefer` and no `sslmode` connect
//! without TLS.

use std::path::PathBuf;
use std::time::Duration;

use tokenbroker_core::store::{StoreError, StoreErrorKind};
use tokenbroker_core::tls;
use tokio_postgres::config::{Host, SslMode};

/// How long to wait for a connection when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection string, read.
pub(super) struct Endpoint {
    /// What tokio-postgres connects with (`sslmode` already set to what `tls` says).
    pub(super) config: tokio_postgres::Config,
    /// The TLS connector, or `None` for a plain connection.
    pub(super) tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// `postgres://host:port/dbname`: no user, no password, no query.
    pub(super) name: String,
}

/// Where the trusted roots come from.
enum Roots {
    /// The system's store and the webpki roots.
    System,
    /// The PEM file `sslrootcert` names.
    File(PathBuf),
}

impl Endpoint {
    /// Reads `url` (a `postgres://` URL or libpq `key=value` pairs).
    pub(super) fn parse(url: &str) -> Result<Self, StoreError> {
        let (rest, sslmode, rootcert) = take_tls_params(url)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            let why = std::error::Error::source(&e)
                .map(ToString::to_string)
                // A syntax error quotes one character of the string, maybe of the password.
                .filter(|why| !why.starts_with("unexpected character"))
                .map_or_else(String::new, |why| format!(": {why}"));
            invalid(format!(
                "the PostgreSQL URL cannot be read{why} (the URL is not shown: it may hold a password)"
            ))
        })?;
        let tls_wanted = match sslmode.as_deref() {
            None => config.get_ssl_mode() == SslMode::Require,
            Some("disable" | "allow" | "prefer") => false,
            Some("require" | "verify-ca" | "verify-full") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "unknown sslmode {other:?} in the PostgreSQL URL (disable, prefer, require, \
                     verify-ca or verify-full)"
                )));
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tokenbroker");
        }
        let name = describe(&config);
        let tls = if tls_wanted {
            config.ssl_mode(SslMode::Require);
            let roots = match rootcert {
                Some(path) if path != "system" => Roots::File(PathBuf::from(path)),
                _ => Roots::System,
            };
            Some(connector(&roots, &name)?)
        } else {
            config.ssl_mode(SslMode::Disable);
            None
        };
        Ok(Self { config, tls, name })
    }
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query; `key=value` strings are left whole
/// (tokio-postgres reads their `sslmode` itself).
fn take_tls_params(url: &str) -> Result<(String, Option<String>, Option<String>), StoreError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut sslmode, mut rootcert, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => sslmode = Some(percent_decode(value)?),
            "sslrootcert" => rootcert = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, sslmode, rootcert))
}

/// Decodes `%XX` escapes (and nothing else, as in a URL's query).
fn percent_decode(value: &str) -> Result<String, StoreError> {
    let bad = || invalid("a malformed %-escape in the PostgreSQL URL's query".to_owned());
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = tail.get(..2).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            bytes.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).map_err(|_| bad())
}

/// `postgres://host:port/dbname`, from the parsed config so that no user or password slips in.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(index)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    format!(
        "postgres://{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    )
}

/// The rustls connector (ring provider) trusting `roots`.
fn connector(
    roots: &Roots,
    name: &str,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let store = match roots {
        Roots::System => tls::system_roots(),
        Roots::File(path) => {
            let mut store = rustls::RootCertStore::empty();
            tls::add_pem_file(&mut store, path).map_err(|e| {
                invalid(format!("store {name}: sslrootcert {}: {e}", path.display()))
            })?;
            store
        }
    };
    let config =
        tls::client_config(store).map_err(|e| invalid(format!("store {name}: TLS setup: {e}")))?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A connection string or TLS setting that cannot work: nothing to retry until the config
/// changes, but the store is unusable all the same.
fn invalid(message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_are_taken_out_of_a_url() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u:p@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, _) = take_tls_params("host=h sslmode=require").unwrap();
        assert_eq!((rest.as_str(), mode), ("host=h sslmode=require", None));
    }

    #[test]
    fn the_name_carries_no_credentials() {
        let endpoint = Endpoint::parse("postgres://alice:s3cret@db.example:6543/prod").unwrap();
        assert_eq!(endpoint.name, "postgres://db.example:6543/prod");
        assert!(endpoint.tls.is_none());
        let endpoint = Endpoint::parse("host=h user=bob password=s3cret sslmode=require").unwrap();
        assert_eq!(endpoint.name, "postgres://h:5432/");
        assert!(endpoint.tls.is_some());
    }

    #[test]
    fn bad_urls_are_refused_without_the_password() {
        for url in [
            "postgres://alice:s3cret@h/db?sslmode=sometimes",
            "postgres://alice:s3cret@h/db?nonsense=1",
            "postgres://alice:s3cret@h/db?sslmode=%zz",
        ] {
            let error = Endpoint::parse(url).err().unwrap();
            assert!(!error.message.contains("s3cret"), "{}", error.message);
        }
        let missing = "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem";
        let error = Endpoint::parse(missing).err().unwrap();
        assert!(error.message.contains("sslrootcert"), "{}", error.message);
    }
}
