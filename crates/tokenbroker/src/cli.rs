//! The command line (SPEC "Command line"): argument definitions and dispatch. Each command's
//! work lives in [`crate::commands`] or [`crate::demo`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands;
use crate::exit::{self, Exit};

/// Holds the credentials of enterprise APIs and hands out their short-lived tokens, so that
/// per identity tokens are issued as rarely as the provider allows, never two at once, and
/// no consumer sees a 401 caused by another.
#[derive(Debug, Parser)]
#[command(name = "tokenbroker", version, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage, 3 refused by the broker, \
4 no token available, 69 broker unreachable, 78 invalid config; `exec` passes the command's own."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (logs to stderr; RUST_LOG overrides the level).
    Serve {
        #[arg(long, default_value = "tokenbroker.toml")]
        config: PathBuf,
    },
    /// Validate the config: exit 0, or print every problem with its key and exit 78.
    Check {
        #[arg(long, default_value = "tokenbroker.toml")]
        config: PathBuf,
    },
    /// Print a token from a running broker (client key from TOKENBROKER_KEY).
    Token {
        provider: String,
        #[command(flatten)]
        broker: BrokerArgs,
        /// raw: the bare token; header: "Name: value" as the upstream API wants it; json:
        /// the broker's whole answer.
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
    },
    /// Run a command with a fresh token in an environment variable; exits with its code.
    Exec {
        provider: String,
        #[command(flatten)]
        broker: BrokerArgs,
        /// The variable that carries the token.
        #[arg(long, default_value = "TOKEN")]
        env: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Every provider's state from a running broker (admin key from TOKENBROKER_KEY).
    Status {
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// The audit trail (issuances, refreshes, invalidations, failures) from the store.
    Audit {
        /// Only this provider.
        provider: Option<String>,
        /// How far back (e.g. 30m, 1h, 7d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        since: Duration,
        #[arg(long, default_value = "tokenbroker.toml")]
        config: PathBuf,
    },
    /// Put an oauth2_refresh_token provider that needs credentials back in service with a
    /// new refresh token read from standard input.
    Reseed {
        provider: String,
        #[arg(long, default_value = "tokenbroker.toml")]
        config: PathBuf,
    },
    /// Maintain the store.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Generate keys.
    Keys {
        #[command(subcommand)]
        kind: KeyKind,
    },
    /// Run the self-contained demonstration on an emulated Control Room.
    Demo {
        /// How many jobs share the one API user.
        #[arg(long, default_value_t = 6)]
        jobs: usize,
        /// How long each half of the Control Room act runs (e.g. 20s, 1m); the capped-pool
        /// act takes half as long.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Keep the broker and the emulator up afterwards and print curl lines to try.
        #[arg(long)]
        serve: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// The broker's base URL.
    #[arg(long, env = "TOKENBROKER_URL", default_value = "http://127.0.0.1:8420")]
    pub broker: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Raw,
    Header,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Re-seal every stored secret under a new master key (TOKENBROKER_NEW_MASTER_KEY);
    /// stop the broker first.
    Rekey {
        #[arg(long, default_value = "tokenbroker.toml")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyKind {
    /// A new client key: printed once, with the config lines that hold its hash.
    New {
        /// The client's name in the config (letters, digits, '-' and '_').
        client: String,
        /// The providers it may use, comma-separated, or "*" for every one [default: "*"].
        #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
        providers: Vec<String>,
    },
    /// A master key for encryption at rest (32 random bytes, base64).
    Master,
}

/// Parses the command line, runs the command, and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            return exit::report(Err(Exit::new(
                exit::FAILURE,
                format!("cannot start the runtime: {e}"),
            )));
        }
    };
    exit::report(runtime.block_on(run(cli.command)))
}

async fn run(command: Command) -> Result<u8, Exit> {
    match command {
        Command::Serve { config } => commands::serve::run(&config).await,
        Command::Check { config } => commands::check::run(&config),
        Command::Token {
            provider,
            broker,
            format,
        } => commands::token::run(&broker.broker, &provider, format).await,
        Command::Exec {
            provider,
            broker,
            env,
            command,
        } => commands::exec::run(&broker.broker, &provider, &env, &command).await,
        Command::Status { broker } => commands::status::run(&broker.broker).await,
        Command::Audit {
            provider,
            since,
            config,
        } => commands::audit::run(&config, provider.as_deref(), since).await,
        Command::Reseed { provider, config } => commands::reseed::run(&config, &provider).await,
        Command::Store {
            action: StoreAction::Rekey { config },
        } => commands::rekey::run(&config).await,
        Command::Keys {
            kind: KeyKind::New { client, providers },
        } => commands::keys::new_client(&client, &providers),
        Command::Keys {
            kind: KeyKind::Master,
        } => commands::keys::master(),
        Command::Demo {
            jobs,
            duration,
            serve,
        } => crate::demo::run(jobs, duration, serve).await,
    }
}

/// Logs to stderr, `RUST_LOG` overriding `default`.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: logs sent to a file or a collector stay plain text.
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
