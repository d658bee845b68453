//! The binary itself: `check`, `demo`'s arguments, `keys new`, `token`, `exec` and `serve` as
//! a user runs them.

use std::io::Write;
use std::process::Output;

use tokenbroker_core::access::{hex, key_sha256};

use crate::helpers::{Options, PROVIDER, spawn_app};
use crate::process::{ServeProcess, output, tokenbroker};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `check` of `config`, with a master key in the environment.
fn check(config: &str) -> Output {
    let key = tokenbroker_core::seal::new_master_key();
    check_with(config, &[("TOKENBROKER_MASTER_KEY", &key)])
}

/// `check` of `config`, with `env` (and no master key unless it holds one).
fn check_with(config: &str, env: &[(&str, &str)]) -> Output {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(config.as_bytes()).unwrap();
    tokenbroker()
        .envs(env.iter().copied())
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
    let key = tokenbroker_core::seal::new_master_key();
    let out = check_with(
        GOOD,
        &[
            ("TB_TEST_CR_KEY", "secret"),
            ("TOKENBROKER_MASTER_KEY", &key),
        ],
    );
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
    // What `serve` would refuse at start besides the config's own keys.
    let with_key = format!(
        "{}upstream = \"https://cr.example.com\"\n",
        GOOD.replace("${env:TB_TEST_CR_KEY}", "k")
    );
    let files = format!(
        "[server]\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n\
         {with_key}upstream_ca = \"/nonexistent/ca.pem\"\n"
    );
    for (out, expected) in [
        (check_with(&with_key, &[]), "master key: "),
        (check(&files), "server.tls_cert, server.tls_key: "),
        (
            check(&files),
            "providers.cr.upstream_ca: /nonexistent/ca.pem: cannot read it",
        ),
    ] {
        assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
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
fn demo_refuses_a_duration_nobody_would_watch_before_it_starts() {
    let out = tokenbroker()
        .args(["demo", "--duration", "300000000000y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--duration"),
        "{}",
        text(&out.stderr)
    );
}

/// Ctrl-C (or SIGTERM) in the middle of the demo ends it with 130 (143) and leaves no
/// temporary store behind (it holds the broker's sealed tokens).
#[test]
fn an_interrupted_demo_removes_its_store() {
    stopped_demo("-INT", 130);
    stopped_demo("-TERM", 143);
}

/// Runs the demo, sends it `signal` once its store exists, and checks it ends with `code`
/// and without its store.
fn stopped_demo(signal: &str, code: i32) {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Reaped(Some(
        tokenbroker()
            .env("TMPDIR", tmp.path())
            .args(["demo", "--duration", "10m"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let child = demo.0.as_mut().unwrap();
    // The first line comes after the store's directory is made.
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("tokenbroker demo:"), "{first}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "the store"
    );
    let pid = child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let child = demo.0.take().unwrap();
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let out = ended
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or_else(|_| {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
            panic!("the demo did not end within 30 s of {signal}")
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the store's directory is gone"
    );
}

/// A child process, killed if the test ends (by a failed assertion) while it holds it.
struct Reaped(Option<std::process::Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
    let every = tokenbroker()
        .args(["keys", "new", "bots", "--providers", "*"])
        .output()
        .unwrap();
    assert!(text(&every.stdout).contains("providers = [\"*\"]\n"));
    for bad in [
        &["bad name"][..],
        &["bots", "--providers", "cr,.hidden"],
        &["bots", "--providers", "cr,*"],
    ] {
        let out = tokenbroker()
            .args(["keys", "new"])
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

/// The lines `keys new --providers` prints make a config `check` takes, granting those
/// providers, and only if they are configured.
#[test]
fn keys_new_lines_for_named_providers_pass_check() {
    let check_lines = |providers: &str| {
        let out = tokenbroker()
            .args(["keys", "new", "bots", "--providers", providers])
            .output()
            .unwrap();
        assert!(out.status.success());
        let stdout = text(&out.stdout);
        let lines = stdout
            .split_once("[clients.bots]")
            .expect("the config lines")
            .1;
        let master = tokenbroker_core::seal::new_master_key();
        let config = format!("{GOOD}\n[clients.bots]{lines}");
        let checked = check_with(
            &config,
            &[
                ("TB_TEST_CR_KEY", "secret"),
                ("TOKENBROKER_MASTER_KEY", &master),
            ],
        );
        (config, checked)
    };
    let (config, checked) = check_lines("cr");
    assert!(config.contains("providers = [\"cr\"]\n"), "{config}");
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let (_, refused) = check_lines("cr,crm");
    assert_eq!(refused.status.code(), Some(78), "crm is no provider here");
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
    assert_eq!(
        no_key.status.code(),
        Some(2),
        "a missing key is a usage error"
    );
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
    let mut serve = ServeProcess::start(&app.config_text, &app.master_key);
    serve.ready(&app.http).await;
    let token = app.plain_token(&serve.url).await;
    let (status, logs) = serve.terminate().await;
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(
        logs.contains("token issued"),
        "one log line per issuance:\n{logs}"
    );
    assert!(
        !logs.contains(&token),
        "the token never appears in the logs"
    );
    assert!(
        !logs.contains("k3y-for-tests"),
        "credentials never appear in the logs"
    );
}
