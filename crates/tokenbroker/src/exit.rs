//! Exit codes that scripts can rely on (documented in the README).

use std::process::ExitCode;

/// Done.
pub const OK: u8 = 0;
/// Something failed at run time (I/O, a server error, a demo that could not start).
pub const FAILURE: u8 = 1;
/// Bad command-line usage (clap's own code).
pub const USAGE: u8 = 2;
/// The broker refused the request: missing or unknown key, provider not allowed or unknown.
pub const REFUSED: u8 = 3;
/// The broker could not hand out a token: the issuer failed, timed out or is unreachable.
pub const NO_TOKEN: u8 = 4;
/// The broker itself is unreachable (sysexits `EX_UNAVAILABLE`).
pub const BROKER_UNREACHABLE: u8 = 69;
/// The config file is invalid (sysexits `EX_CONFIG`).
pub const CONFIG: u8 = 78;
/// `exec`: the command was found but could not be run (as in a POSIX shell).
pub const CANNOT_EXECUTE: u8 = 126;
/// `exec`: the command was not found (as in a POSIX shell).
pub const NOT_FOUND: u8 = 127;
/// Stopped by SIGINT before it was done (`demo`; as a shell reports a program SIGINT
/// killed).
pub const INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM before it was done (`demo`; as a shell reports a program SIGTERM
/// killed).
pub const TERMINATED: u8 = 143;

/// An error that ends the process with a given code after printing its message.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Exit {
    fn from(e: anyhow::Error) -> Self {
        Self::new(FAILURE, format!("{e:#}"))
    }
}

/// Prints the error (if any) and turns the outcome into the process's exit code.
pub fn report(outcome: Result<u8, Exit>) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(exit) => {
            eprintln!("tokenbroker: {}", exit.message);
            ExitCode::from(exit.code)
        }
    }
}
