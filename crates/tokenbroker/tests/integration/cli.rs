//! The binary itself: `check`, `keys new`, `token`, `exec` and `serve` as a user runs them.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokenbroker_core::access::{hex, key_sha256};

use crate::helpers::{Options, PROVIDER, spawn_app};

fn tokenbroker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenbroker"));
    command
        .env_remove("TOKENBROKER_KEY")
        .env_remove("TOKENBROKER_URL")
        .env_remove("RUST_LOG");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a blocking command off the async runtime (the broker it talks to runs on it).
async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("the command thread finishes")
}

fn check(config: &str) -> Output {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(config.as_bytes()).unwrap();
    tokenbroker()
        .args(["check", "--config"])
        .arg(file.path())
        .output()
        .unwrap()
}

const GOOD: &str = r#"
[providers.cr]
type = "json_login"
login_url = "https://cr.example.com/v1/authentication"
login_body = { username = "api-bot", apiKey = "${env:TB_TEST_CR_KEY}" }
"#;

#[test]
fn check_accepts_a_valid_config() {
    let out = {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(GOOD.as_bytes()).unwrap();
        tokenbroker()
            .env("TB_TEST_CR_KEY", "secret")
            .args(["check", "--config"])
            .arg(file.path())
            .output()
            .unwrap()
    };
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("OK (1 provider(s), 0 client(s))"));
}

#[test]
fn check_rejects_each_kind_of_bad_config_naming_the_key() {
    let cases = [
        (
            "[providers.cr]\ntype = \"kerberos\"\n",
            "providers.cr.type: unknown provider type",
        ),
        (
            "[providers.cr]\ntype = \"json_login\"\nlogin_body = { a = \"b\" }\n",
            "providers.cr.login_url: missing required key",
        ),
        (
            &format!("{GOOD}lifetime = \"soon\"\n"),
            "providers.cr.lifetime: bad duration",
        ),
        (
            &format!(
                "{GOOD}[clients.bots]\nkey_sha256 = \"{}\"\nproviders = [\"crm\"]\n",
                "0".repeat(64)
            ),
            "clients.bots.providers: unknown provider \"crm\"",
        ),
        (
            "[providers.cr\ntype = 1\n",
            "line 1, column 14: invalid TOML",
        ),
        (
            GOOD,
            "providers.cr.login_body.apiKey: environment variable TB_TEST_CR_KEY is not set",
        ),
    ];
    for (config, expected) in cases {
        let out = check(config);
        assert_eq!(out.status.code(), Some(78), "{config}");
        assert!(
            text(&out.stderr).contains(expected),
            "expected {expected:?} in {}",
            text(&out.stderr)
        );
    }
    let missing = tokenbroker()
        .args(["check", "--config", "/nonexistent/tokenbroker.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(78));
    assert!(
        text(&missing.stderr).contains("cannot read config file /nonexistent/tokenbroker.toml")
    );
}

#[test]
fn keys_new_prints_a_key_and_the_config_lines_with_its_hash() {
    let out = tokenbroker()
        .args(["keys", "new", "reporting-bots"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let key = stdout
        .lines()
        .find(|l| l.starts_with("tbk_"))
        .expect("a key line");
    assert!(stdout.contains("[clients.reporting-bots]"));
    assert!(stdout.contains(&format!("key_sha256 = \"{}\"", hex(&key_sha256(key)))));
    let again = tokenbroker()
        .args(["keys", "new", "reporting-bots"])
        .output()
        .unwrap();
    assert!(!text(&again.stdout).contains(key), "every key is new");
    let bad = tokenbroker()
        .args(["keys", "new", "bad name"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test]
async fn token_prints_the_token_in_each_format_with_documented_exit_codes() {
    let app = spawn_app(Options::default()).await;
    let token = |format: &str, key: &str, broker: &str| {
        let mut command = tokenbroker();
        command
            .args(["token", PROVIDER, "--format", format, "--broker", broker])
            .env("TOKENBROKER_KEY", key);
        output(command)
    };
    let raw = token("raw", &app.all_key, &app.url).await;
    assert_eq!(raw.status.code(), Some(0), "{}", text(&raw.stderr));
    let value = text(&raw.stdout).trim().to_owned();
    let header = token("header", &app.all_key, &app.url).await;
    assert_eq!(
        text(&header.stdout).trim(),
        format!("X-Authorization: {value}")
    );
    let json = token("json", &app.all_key, &app.url).await;
    let body: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(body["access_token"], value.as_str());

    let refused = token("raw", "tbk_unknown", &app.url).await;
    assert_eq!(refused.status.code(), Some(3));
    assert!(text(&refused.stderr).contains("unauthorized"));
    let unreachable = token("raw", &app.all_key, "http://127.0.0.1:9").await;
    assert_eq!(unreachable.status.code(), Some(69));
    let mut no_key = tokenbroker();
    no_key.args(["token", PROVIDER, "--broker", &app.url]);
    let no_key = output(no_key).await;
    assert!(text(&no_key.stderr).contains("TOKENBROKER_KEY"));
    assert_eq!(app.emulator.counters().logins, 1);
}

#[tokio::test]
async fn exec_passes_the_token_and_the_exit_code_through() {
    let app = spawn_app(Options::default()).await;
    let mut command = tokenbroker();
    command
        .args([
            "exec", PROVIDER, "--broker", &app.url, "--env", "CR_TOKEN", "--",
        ])
        .args([
            "sh",
            "-c",
            "test -n \"$CR_TOKEN\" && printf %s \"$CR_TOKEN\" && exit 7",
        ])
        .env("TOKENBROKER_KEY", &app.all_key);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let (_, _, body) = app.get_token(PROVIDER, Some(&app.all_key)).await;
    assert_eq!(text(&out.stdout), body["access_token"].as_str().unwrap());

    let mut missing = tokenbroker();
    missing
        .args([
            "exec",
            PROVIDER,
            "--broker",
            &app.url,
            "--",
            "/nonexistent/program",
        ])
        .env("TOKENBROKER_KEY", &app.all_key);
    assert_eq!(output(missing).await.status.code(), Some(127));
}

#[tokio::test]
async fn serve_answers_then_stops_cleanly_on_sigterm() {
    let app = spawn_app(Options::default()).await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{}",
        app.config_text
    );
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(config.as_bytes()).unwrap();
    let mut child = tokenbroker()
        .args(["serve", "--config"])
        .arg(file.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    // Wait on the readiness probe, not on time.
    let started = Instant::now();
    loop {
        if let Ok(r) = app.http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = app.plain_token(&url).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert_eq!(out.0.code(), Some(0), "{}", out.1);
    assert!(
        out.1.contains("token issued"),
        "one log line per issuance:\n{}",
        out.1
    );
    assert!(
        !out.1.contains(&token),
        "the token never appears in the logs"
    );
    assert!(
        !out.1.contains("k3y-for-tests"),
        "credentials never appear in the logs"
    );
}
