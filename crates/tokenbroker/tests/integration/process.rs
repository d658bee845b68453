//! The broker as a separate process (`tokenbroker serve`), for tests that kill it, restart
//! it, or read its logs.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A `tokenbroker serve` child with its own config file and captured stderr.
pub(crate) struct ServeProcess {
    child: Child,
    pub(crate) url: String,
    /// Where the child's stderr (its logs) goes.
    pub(crate) log: PathBuf,
    _files: tempfile::TempDir,
}

/// The `tokenbroker` binary with no inherited broker settings.
pub(crate) fn tokenbroker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenbroker"));
    command
        .env_remove("TOKENBROKER_KEY")
        .env_remove("TOKENBROKER_URL")
        .env_remove("TOKENBROKER_MASTER_KEY")
        .env_remove("TOKENBROKER_NEW_MASTER_KEY")
        .env_remove("RUST_LOG");
    command
}

/// Runs a command to completion off the async runtime, which may be serving the broker the
/// command talks to.
pub(crate) async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("the command thread finishes")
}

impl ServeProcess {
    /// Starts `serve` with `config` (with no `listen`) and `master_key`, on a port the OS
    /// picks; [`ServeProcess::ready`] learns it from the broker's log.
    pub(crate) fn start(config: &str, master_key: &str) -> Self {
        let files = tempfile::tempdir().expect("a temporary directory");
        let path = files.path().join("tokenbroker.toml");
        let mut file = std::fs::File::create(&path).expect("config file");
        const LISTEN: &str = "[server]\nlisten = \"127.0.0.1:0\"\n";
        let config = match config.split_once("[server]\n") {
            Some((before, after)) => format!("{before}{LISTEN}{after}"),
            None => format!("{LISTEN}{config}"),
        };
        file.write_all(config.as_bytes()).expect("write config");
        let log = files.path().join("stderr.log");
        let child = tokenbroker()
            .args(["serve", "--config"])
            .arg(&path)
            .env("TOKENBROKER_MASTER_KEY", master_key)
            .stderr(std::fs::File::create(&log).expect("log file"))
            .stdout(Stdio::null())
            .spawn()
            .expect("serve starts");
        Self {
            child,
            url: String::new(),
            log,
            _files: files,
        }
    }

    /// Starts `count` brokers with the same `config` and `master_key` (sharing its store)
    /// and waits until each is ready.
    pub(crate) async fn start_ready(
        count: usize,
        config: &str,
        master_key: &str,
        http: &reqwest::Client,
    ) -> Vec<Self> {
        let mut brokers: Vec<Self> = (0..count)
            .map(|_| Self::start(config, master_key))
            .collect();
        for broker in &mut brokers {
            broker.ready(http).await;
        }
        brokers
    }

    /// Waits on the readiness probe (bounded), not on time.
    pub(crate) async fn ready(&mut self, http: &reqwest::Client) {
        let started = Instant::now();
        while self.url.is_empty() {
            // "tokenbroker serving listen=127.0.0.1:PORT ..."
            if let Some(address) = self
                .logs()
                .split_whitespace()
                .find_map(|word| word.strip_prefix("listen="))
            {
                self.url = format!("http://{address}");
                break;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("serve exited with {status}:\n{}", self.logs());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "serve never said where it listens:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("serve exited with {status}:\n{}", self.logs());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "serve never became ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A line of the broker's `/proc/PID/status`, in KiB (`VmRSS`, `VmHWM`).
    pub(crate) fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("the field is there")
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up.
    pub(crate) fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, then waits for the exit (a minute at most: then SIGKILL, and the test fails).
    pub(crate) async fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let waiting = tokio::task::spawn_blocking(move || {
            let status = self.child.wait().expect("reaped");
            (status, self)
        });
        match tokio::time::timeout(Duration::from_secs(60), waiting).await {
            Ok(exited) => {
                let (status, this) = exited.expect("the wait finishes");
                (status, this.logs())
            }
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("the broker did not exit within a minute of SIGTERM");
            }
        }
    }
}

impl Drop for ServeProcess {
    /// A test that ends (or fails) with the broker still running does not leave it behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
