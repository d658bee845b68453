//! A private PostgreSQL instance for fault tests: started with `initdb` + `pg_ctl` in a
//! temporary directory on a free port, stopped and started at will, and removed at the end.
//! The machine's own PostgreSQL is never touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A PostgreSQL server of this test's own.
pub(crate) struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub(crate) port: u16,
}

/// The directory of `initdb` and `pg_ctl`, if PostgreSQL's server binaries are installed.
fn server_binaries() -> Option<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin"))
        .find(|bin| bin.join("initdb").exists())
}

/// Runs a server binary, as the `postgres` user when this process is root (PostgreSQL
/// refuses to run as root).
fn run(bin: &Path, program: &str, args: &[&str]) -> Output {
    let path = bin.join(program);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    command
        .args(args)
        .output()
        .expect("a PostgreSQL server binary runs")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PrivatePostgres {
    /// Initialises and starts one, or says why not (the test is then skipped).
    pub(crate) fn start() -> Result<Self, String> {
        let bin = server_binaries().ok_or("PostgreSQL server binaries (initdb) not installed")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        if is_root() && Command::new("runuser").arg("--version").output().is_err() {
            return Err("running as root, and no runuser to run PostgreSQL as postgres".into());
        }
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status();
            if !chown.is_ok_and(|s| s.success()) {
                return Err("cannot hand the data directory to the postgres user".into());
            }
        }
        let data = dir.path().join("data");
        let init = run(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        if !init.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr)
            ));
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            probe.local_addr().map_err(|e| e.to_string())?.port()
        };
        let server = Self { dir, bin, port };
        server.resume()?;
        Ok(server)
    }

    /// The database URL.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.dir.path().join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        run(&self.bin, "pg_ctl", &all)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub(crate) fn resume(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let started = self.pg_ctl(&["-o", &options, "-l", log.to_str().unwrap(), "-w", "start"]);
        if started.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&started.stderr)
            ))
        }
    }

    /// Stops the server at once, cutting every connection.
    pub(crate) fn stop(&self) {
        let stopped = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        assert!(
            stopped.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}
