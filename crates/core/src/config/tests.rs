//! Config validation: every kind of problem is reported, with its key, all at once.

use std::time::Duration;

use super::*;

const PROVIDER: &str = r#"
[providers.cr]
type = "json_login"
login_url = "http://127.0.0.1:9/v1/authentication"
login_body = { username = "bot", apiKey = "k" }
"#;

fn problems(text: &str) -> Vec<String> {
    Config::parse(text)
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn assert_problem(text: &str, key: &str, words: &str) {
    let found = problems(text);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with(&format!("{key}: ")) && p.contains(words)),
        "expected a problem at {key} mentioning {words:?}, got {found:#?}"
    );
}

#[test]
fn defaults_follow_the_spec() {
    let config = Config::parse(PROVIDER).expect("valid");
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8420");
    let cr = &config.providers["cr"];
    assert_eq!(cr.header, "Authorization");
    assert_eq!(cr.prefix, "Bearer ");
    assert!(cr.single_session, "json_login is single-session by default");
    assert_eq!(
        cr.refresh_lead(Duration::from_secs(600)),
        Duration::from_secs(120)
    );
    assert_eq!(
        cr.refresh_lead(Duration::from_secs(3600)),
        Duration::from_secs(300)
    );
    let IssuerConfig::JsonLogin(login) = &cr.issuer else {
        panic!("json_login");
    };
    assert_eq!(login.token_pointer, "/token");
    assert_eq!(login.lifetime, Duration::from_secs(1200));
}

#[test]
fn server_workers_default_to_one_per_cpu_and_are_bounded() {
    let config = Config::parse(PROVIDER).expect("valid");
    assert_eq!(config.server.workers, None, "unset: one per CPU");
    let config = Config::parse(&format!("[server]\nworkers = 3\n{PROVIDER}")).expect("valid");
    assert_eq!(config.server.workers.map(NonZeroUsize::get), Some(3));
    for bad in ["0", "-1", "1025"] {
        assert_problem(
            &format!("[server]\nworkers = {bad}\n{PROVIDER}"),
            "server.workers",
            "between 1 and 1024",
        );
    }
    assert_problem(
        &format!("[server]\nworkers = \"many\"\n{PROVIDER}"),
        "server.workers",
        "whole number",
    );
}

#[test]
fn server_idle_timeout_defaults_to_a_minute_and_must_be_positive() {
    let config = Config::parse(PROVIDER).expect("valid");
    assert_eq!(config.server.idle_timeout, Duration::from_secs(60));
    let config =
        Config::parse(&format!("[server]\nidle_timeout = \"5s\"\n{PROVIDER}")).expect("valid");
    assert_eq!(config.server.idle_timeout, Duration::from_secs(5));
    assert_problem(
        &format!("[server]\nidle_timeout = \"0s\"\n{PROVIDER}"),
        "server.idle_timeout",
        "longer than 0",
    );
    assert_problem(
        &format!("[server]\nidle_timeout = \"soon\"\n{PROVIDER}"),
        "server.idle_timeout",
        "bad duration",
    );
}

#[test]
fn invalid_toml_names_line_and_column() {
    assert_problem("[server]\nlisten = \n", "line 2, column 10", "invalid TOML");
}

#[test]
fn each_kind_of_problem_names_its_key() {
    assert_problem(
        "[providers.x]\ntype = \"saml\"\n",
        "providers.x.type",
        "unknown provider type",
    );
    assert_problem(
        "[providers.x]\nlogin_url = \"http://a/\"\n",
        "providers.x.type",
        "missing",
    );
    assert_problem(
        &format!("{PROVIDER}lifetime = \"twenty minutes\"\n"),
        "providers.cr.lifetime",
        "bad duration",
    );
    assert_problem(
        "[providers.cr]\ntype = \"json_login\"\nlogin_body = { u = \"x\" }\n",
        "providers.cr.login_url",
        "missing",
    );
    assert_problem(
        &format!(
            "{PROVIDER}[clients.bots]\nkey_sha256 = \"{}\"\nproviders = [\"nope\"]\n",
            "a".repeat(64)
        ),
        "clients.bots.providers",
        "unknown provider \"nope\"",
    );
    assert_problem(
        "[providers.cr]\ntype = \"json_login\"\nlogin_url = \"http://a/\"\n\
         login_body = { apiKey = \"${env:TOKENBROKER_TEST_SURELY_UNSET}\" }\n",
        "providers.cr.login_body.apiKey",
        "TOKENBROKER_TEST_SURELY_UNSET is not set",
    );
    // Where a reference is not resolved it would be sent as written.
    assert_problem(
        &format!("{PROVIDER}header = \"${{env:HEADER}}\"\n"),
        "providers.cr.header",
        "resolved only in login_body",
    );
    assert_problem(
        &format!("{PROVIDER}colour = \"blue\"\n"),
        "providers.cr.colour",
        "unknown key",
    );
    assert_problem(
        "[server]\nlisten = \"everywhere\"\n",
        "server.listen",
        "expected an address",
    );
    assert_problem(
        &format!("{PROVIDER}[clients.bots]\nkey_sha256 = \"xyz\"\nproviders = [\"*\"]\n"),
        "clients.bots.key_sha256",
        "64 hex digits",
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let text =
        "[server]\nlisten = 5\n[providers.a]\ntype = \"x\"\n[providers.b]\ntype = \"json_login\"\n";
    let found = problems(text);
    assert!(found.len() >= 4, "{found:#?}");
}

#[test]
fn secrets_do_not_print() {
    let config = Config::parse(
        "[providers.cr]\ntype = \"json_login\"\nlogin_url = \"http://a/\"\n\
         login_body = { apiKey = \"hunter2-secret\" }\n",
    )
    .unwrap();
    assert!(!format!("{config:?}").contains("hunter2-secret"));
}

#[test]
fn absurd_durations_and_urls_with_credentials_are_refused() {
    assert_problem(
        &format!("{PROVIDER}timeout = \"300000000y\"\n"),
        "providers.cr.timeout",
        "longer than a year",
    );
    assert_problem(
        &format!("{PROVIDER}max_issuances = \"1/18446744073709551615s\"\n"),
        "providers.cr.max_issuances",
        "at most a year",
    );
    assert_problem(
        &format!("{PROVIDER}upstream_timeout = \"0s\"\n"),
        "providers.cr.upstream_timeout",
        "longer than zero",
    );
    assert_problem(
        "[providers.cr]\ntype = \"json_login\"\nlogin_url = \"https://u:p@cr.example.com/\"\n\
         login_body = { a = \"b\" }\n",
        "providers.cr.login_url",
        "credentials in a URL",
    );
}

#[test]
fn a_config_that_could_not_serve_or_would_ignore_a_key_is_refused() {
    assert_problem("[server]\n", "providers", "no provider is configured");
    assert_problem(
        &format!("[store]\nurl = \"postgres://db/tb\"\npath = \"tb.db\"\n{PROVIDER}"),
        "store.path",
        "would not be used",
    );
}

#[test]
fn provider_names_need_no_encoding_in_a_path() {
    let named = |name: &str| PROVIDER.replace("[providers.cr]", &format!("[providers.{name}]"));
    assert!(Config::parse(&named("\"control-room_2.eu~x\"")).is_ok());
    for name in ["\"\"", "\"a/b c\"", "\"..\"", "\"caf\u{e9}\""] {
        let found = problems(&named(name));
        assert!(
            found.iter().any(|p| p.contains("goes in URL paths")),
            "{name}: {found:#?}"
        );
    }
}

#[test]
fn the_sync_interval_is_a_positive_duration_for_either_store() {
    let cluster =
        format!("[store]\nurl = \"postgres://db/tb\"\nsync_interval = \"250ms\"\n{PROVIDER}");
    let config = Config::parse(&cluster).expect("valid");
    assert_eq!(config.store.sync_interval, Some(Duration::from_millis(250)));
    let shared_file = format!("[store]\nsync_interval = \"2s\"\n{PROVIDER}");
    let config = Config::parse(&shared_file).expect("valid");
    assert_eq!(config.store.sync_interval, Some(Duration::from_secs(2)));
    assert_problem(
        &format!("[store]\nurl = \"postgres://db/tb\"\nsync_interval = \"0s\"\n{PROVIDER}"),
        "store.sync_interval",
        "longer than 0s",
    );
}
