//! `tokenbroker exec PROVIDER -- CMD`: run a command with a fresh token in its environment
//! and exit with the command's own code.

use std::io::ErrorKind;

use crate::exit::{self, Exit};

/// Runs `tokenbroker exec`; returns the exit code.
pub async fn run(broker: &str, provider: &str, env: &str, command: &[String]) -> Result<u8, Exit> {
    if env.is_empty() || env.contains(['=', '\0']) {
        return Err(Exit::new(exit::USAGE, format!("bad variable name {env:?}")));
    }
    let token = super::token::fetch(broker, provider).await?;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Exit::new(exit::USAGE, "no command given after --"))?;
    let status = tokio::process::Command::new(program)
        .args(args)
        .env(env, &token.access_token)
        .status()
        .await
        .map_err(|e| {
            let code = if e.kind() == ErrorKind::NotFound {
                exit::NOT_FOUND
            } else {
                exit::CANNOT_EXECUTE
            };
            Exit::new(code, format!("cannot run {program:?}: {e}"))
        })?;
    Ok(child_code(status))
}

/// The child's exit code; killed by a signal, 128 + the signal as a shell reports it.
fn child_code(status: std::process::ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(exit::FAILURE);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + (signal & 0x7f)).unwrap_or(exit::FAILURE);
        }
    }
    exit::FAILURE
}
