//! `tokenbroker.toml`: the raw TOML in, one validated [`Config`] out.
//!
//! Loading resolves every secret reference and checks every value, collecting *all* the
//! problems with their dotted keys (see [`table`]), so that `tokenbroker check` and `serve`
//! can print them at once. Nothing outside this module looks at raw TOML; everything else
//! takes the typed structs below, passed explicitly.

mod oauth2;
mod provider;
mod secret_ref;
mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use oauth2::{AuthMethod, ClientCredentialsConfig, OAuthClient, RefreshTokenConfig};
pub use provider::{
    IssuanceBudget, IssuerConfig, JsonLoginConfig, JsonTemplate, ProviderConfig, ProxyConfig,
};
use secrecy::{ExposeSecret, SecretString};
use table::Table;

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Where the API listens.
    pub server: ServerConfig,
    /// Where tokens are kept.
    pub store: StoreConfig,
    /// Consumers, keyed by client name.
    pub clients: BTreeMap<String, ClientConfig>,
    /// Identities whose tokens the broker owns, keyed by provider name.
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// `[server]`: where the broker listens.
#[derive(Debug)]
pub struct ServerConfig {
    /// The address the API binds.
    pub listen: SocketAddr,
    /// Serve HTTPS with these, when set: client keys cross networks.
    pub tls: Option<TlsFiles>,
    /// How many threads serve HTTP (`workers`); `None`: one per CPU.
    pub workers: Option<NonZeroUsize>,
    /// How long a client connection may go with no request being answered
    /// (`idle_timeout`): an idle keep-alive connection, or one that sends its head slowly,
    /// is closed after that. A request being answered is not bound by it.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls: None,
            workers: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// `server.idle_timeout` when unset: as long as nginx's `client_header_timeout`.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A PEM certificate chain and its PEM private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[store]`: where tokens survive restarts.
#[derive(Debug)]
pub struct StoreConfig {
    /// The embedded store's file (when no `url` is set).
    pub path: PathBuf,
    /// Where the master key is, when `TOKENBROKER_MASTER_KEY` is not set.
    pub key_file: Option<PathBuf>,
    /// A PostgreSQL store shared by a cluster of brokers; it may hold a password.
    pub url: Option<SecretString>,
    /// The PostgreSQL schema of this cluster's tables (default: the connection's).
    pub schema: Option<String>,
    /// How often each slot re-reads its stored token for other brokers' writes: with
    /// PostgreSQL in case a change notification was missed, with SQLite (which tells of
    /// none) for brokers sharing the file; `None` for the default.
    pub sync_interval: Option<Duration>,
}

/// `[clients.NAME]`: one consumer and what it may reach.
#[derive(Debug)]
pub struct ClientConfig {
    /// SHA-256 of the client key; the key itself is never stored.
    pub key_sha256: [u8; 32],
    /// The providers this client may get tokens for.
    pub providers: ProviderScope,
    /// Whether the client may read the operators' view (`GET /v1/providers`).
    pub admin: bool,
}

/// The providers a client may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderScope {
    /// `["*"]`: every provider, present and future.
    All,
    /// Exactly these providers.
    Only(BTreeSet<String>),
}

impl ProviderScope {
    /// Whether a client with this scope may use `provider`.
    pub fn allows(&self, provider: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.contains(provider),
        }
    }
}

/// One thing wrong with a config, under the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key (`providers.cr.lifetime`), or the position for a syntax error.
    pub key: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} problem(s) in {origin}:\n{}", problems.len(), list(problems))]
    Invalid {
        /// The file, or `<string>` for a config given as text.
        origin: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|problems| ConfigError::Invalid {
            origin: path.display().to_string(),
            problems,
        })
    }

    /// Validates config text, returning every problem found.
    pub fn parse(text: &str) -> Result<Self, Vec<Problem>> {
        let root: toml::Table = toml::from_str(text).map_err(|e| vec![syntax_problem(text, &e)])?;
        let mut problems = Vec::new();
        let mut top = Table::new("", &root);

        let server = match top.table("server", &mut problems) {
            Some(t) => server(t, &mut problems),
            None => Some(ServerConfig::default()),
        };
        let store = match top.table("store", &mut problems) {
            Some(t) => store(t, &mut problems),
            None => Some(StoreConfig {
                path: PathBuf::from("tokenbroker.db"),
                key_file: None,
                url: None,
                schema: None,
                sync_interval: None,
            }),
        };

        let mut providers = BTreeMap::new();
        if let Some(mut table) = top.table("providers", &mut problems) {
            for name in table.keys() {
                if !is_provider_name(name) {
                    problems.push(Problem::new(
                        format!("providers.{name:?}"),
                        "a provider's name goes in URL paths (/v1/tokens/NAME): use letters, \
                         digits, '-', '_', '~' and '.', but no leading '.'",
                    ));
                }
                if let Some(t) = table.table(name, &mut problems)
                    && let Some(p) = ProviderConfig::from_table(name, t, &mut problems)
                {
                    providers.insert(name.to_owned(), p);
                }
            }
        }
        if providers.is_empty() && problems.is_empty() {
            problems.push(Problem::new(
                "providers",
                "no provider is configured: the broker would have no token to give",
            ));
        }
        let provider_keys = root
            .get("providers")
            .and_then(toml::Value::as_table)
            .map(|t| t.keys().cloned().collect::<BTreeSet<_>>())
            .unwrap_or_default();

        let mut clients = BTreeMap::new();
        if let Some(mut table) = top.table("clients", &mut problems) {
            for name in table.keys() {
                if let Some(t) = table.table(name, &mut problems)
                    && let Some(c) = client(t, &provider_keys, &mut problems)
                {
                    clients.insert(name.to_owned(), c);
                }
            }
        }
        top.finish(&mut problems);

        match (server, store) {
            (Some(server), Some(store)) if problems.is_empty() => Ok(Self {
                server,
                store,
                clients,
                providers,
            }),
            _ => Err(problems),
        }
    }
}

/// Whether `name` can name a provider: it stands for itself in a URL path (no encoding, no
/// `.` or `..` segment).
pub fn is_provider_name(name: &str) -> bool {
    !name.starts_with('.')
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8420))
}

fn syntax_problem(text: &str, error: &toml::de::Error) -> Problem {
    let position = error.span().map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        format!("line {line}, column {column}")
    });
    Problem::new(
        position.unwrap_or_else(|| "config".to_owned()),
        format!("invalid TOML: {}", error.message().trim()),
    )
}

/// The most HTTP threads `server.workers` may ask for.
const MAX_WORKERS: usize = 1024;

fn server(mut t: Table<'_>, problems: &mut Vec<Problem>) -> Option<ServerConfig> {
    let listen = match t.string("listen", problems) {
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problems.push(Problem::new(
                    t.key("listen"),
                    format!("expected an address like \"127.0.0.1:8420\", found {text:?}"),
                ));
                None
            }
        },
        None if !t.has("listen") => Some(default_listen()),
        None => None,
    };
    let cert = t.string("tls_cert", problems).map(PathBuf::from);
    let key = t.string("tls_key", problems).map(PathBuf::from);
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => {
            problems.push(Problem::new(
                t.key("tls_cert"),
                "tls_cert and tls_key go together",
            ));
            None
        }
    };
    let workers = t.integer("workers", problems).and_then(|n| {
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_WORKERS)
            .and_then(NonZeroUsize::new);
        if n.is_none() {
            problems.push(Problem::new(
                t.key("workers"),
                format!("must be between 1 and {MAX_WORKERS}"),
            ));
        }
        n
    });
    let idle_timeout = match t.duration("idle_timeout", problems) {
        Some(Duration::ZERO) => {
            problems.push(Problem::new(
                t.key("idle_timeout"),
                "must be longer than 0: a connection needs time to send its request",
            ));
            None
        }
        Some(timeout) => Some(timeout),
        None if !t.has("idle_timeout") => Some(DEFAULT_IDLE_TIMEOUT),
        None => None,
    };
    t.finish(problems);
    Some(ServerConfig {
        listen: listen?,
        tls,
        workers,
        idle_timeout: idle_timeout?,
    })
}

fn store(mut t: Table<'_>, problems: &mut Vec<Problem>) -> Option<StoreConfig> {
    let given_path = t.string("path", problems);
    let path = given_path.unwrap_or("tokenbroker.db");
    let key_file = t.string("key_file", problems).map(PathBuf::from);
    let url = t.secret("url", problems).filter(|url| {
        let url = url.expose_secret();
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !postgres {
            problems.push(Problem::new(t.key("url"), "expected a postgres:// URL"));
        }
        postgres
    });
    let schema = t.string("schema", problems).map(str::to_owned);
    if schema.is_some() && url.is_none() {
        problems.push(Problem::new(t.key("schema"), "goes with url"));
    }
    if given_path.is_some() && url.is_some() {
        problems.push(Problem::new(
            t.key("path"),
            "is the embedded store's file; with url it would not be used",
        ));
    }
    let sync_interval = t.duration("sync_interval", problems);
    if sync_interval.is_some_and(|d| d.is_zero()) {
        problems.push(Problem::new(
            t.key("sync_interval"),
            "must be longer than 0s",
        ));
    }
    t.finish(problems);
    Some(StoreConfig {
        path: PathBuf::from(path),
        key_file,
        url,
        schema,
        sync_interval,
    })
}

fn client(
    mut t: Table<'_>,
    providers: &BTreeSet<String>,
    problems: &mut Vec<Problem>,
) -> Option<ClientConfig> {
    let hash = t.string("key_sha256", problems);
    let hash = t.require("key_sha256", hash, problems).and_then(|hex| {
        let parsed = parse_sha256_hex(hex);
        if parsed.is_none() {
            problems.push(Problem::new(
                t.key("key_sha256"),
                "expected 64 hex digits (the SHA-256 of the client key; `tokenbroker keys new` prints it)",
            ));
        }
        parsed
    });
    let names = t.string_list("providers", problems);
    let scope = t.require("providers", names, problems).map(|names| {
        if names == ["*"] {
            return ProviderScope::All;
        }
        for name in &names {
            if !providers.contains(*name) {
                problems.push(Problem::new(
                    t.key("providers"),
                    format!("unknown provider {name:?}"),
                ));
            }
        }
        ProviderScope::Only(names.into_iter().map(str::to_owned).collect())
    });
    let admin = t.bool("admin", problems).unwrap_or(false);
    t.finish(problems);
    Some(ClientConfig {
        key_sha256: hash?,
        providers: scope?,
        admin,
    })
}

fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
