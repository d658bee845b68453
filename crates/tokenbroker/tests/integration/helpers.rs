//! `spawn_app()`: an emulated Control Room and a broker in front of it, in this process, on
//! loopback ports chosen by the OS, with client keys of known scopes.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::SecretString;
use tokenbroker::api::AppState;
use tokenbroker::client::BrokerClient;
use tokenbroker::server::Serving;
use tokenbroker_core::Config;
use tokenbroker_core::access::{hex, key_sha256, new_client_key};
use tokenbroker_core::seal::{Sealer, new_master_key};
use tokenbroker_emulator::{ControlRoom, RunningControlRoom};

pub(crate) const PROVIDER: &str = "controlroom";
/// A second provider, on the same emulator, that the scoped key may not use.
pub(crate) const OTHER: &str = "other";

/// How the emulator and the broker are set up.
pub(crate) struct Options {
    pub(crate) lifetime: Duration,
    pub(crate) login_latency: Duration,
    /// Extra lines for `[providers.controlroom]`; `{emulator}` in them stands for the
    /// emulator's URL.
    pub(crate) provider_extra: String,
    /// The upstream API of `controlroom`, for the proxy; the emulator itself by default.
    pub(crate) upstream: Option<String>,
    /// Log the Control Room token out when the broker stops.
    pub(crate) logout_on_shutdown: bool,
    /// The API key the broker logs in to `other` with (the emulator knows `other-k3y`).
    pub(crate) other_api_key: &'static str,
    /// Lines for `[server]` (the listener is the test's own).
    pub(crate) server_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(600),
            login_latency: Duration::ZERO,
            provider_extra: String::new(),
            upstream: None,
            logout_on_shutdown: false,
            other_api_key: "other-k3y",
            server_extra: String::new(),
        }
    }
}

/// A running broker and its emulated issuer.
pub(crate) struct TestApp {
    pub(crate) url: String,
    pub(crate) emulator: RunningControlRoom,
    /// A key for every provider (`["*"]`).
    pub(crate) all_key: String,
    /// A key for `controlroom` only.
    pub(crate) scoped_key: String,
    pub(crate) http: reqwest::Client,
    /// The config text the broker runs with (for CLI tests that start their own).
    pub(crate) config_text: String,
    /// The master key the store is sealed with.
    pub(crate) master_key: String,
    /// The directory of the store's file, removed when the app is dropped.
    pub(crate) store: tempfile::TempDir,
    /// Stopped (in the background) when the app is dropped.
    broker: Option<tokenbroker::server::Running>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            tokio::spawn(broker.stop());
        }
        self.emulator.shutdown();
    }
}

/// A sealer for a base64 master key.
pub(crate) fn sealer(master_key: &str) -> Sealer {
    Sealer::from_base64(&SecretString::from(master_key.to_owned()), "test").expect("a valid key")
}

pub(crate) async fn spawn_app(options: Options) -> TestApp {
    let emulator = ControlRoom::builder()
        .user("api-bot", "k3y-for-tests")
        .user("other-bot", "other-k3y")
        .token_lifetime(options.lifetime)
        .login_latency(options.login_latency)
        .spawn()
        .await
        .expect("the emulator starts");
    let all_key = new_client_key();
    let scoped_key = new_client_key();
    let store = tempfile::tempdir().expect("a temporary directory");
    let master_key = new_master_key();
    let config_text = config_text(
        &emulator.url(),
        &all_key,
        &scoped_key,
        &options,
        store.path(),
    );
    let broker = start_broker(&config_text, &master_key).await;
    TestApp {
        url: broker.url.clone(),
        emulator,
        all_key,
        scoped_key,
        http: reqwest::Client::new(),
        config_text,
        master_key,
        store,
        broker: Some(broker),
    }
}

pub(crate) async fn start_broker(
    config_text: &str,
    master_key: &str,
) -> tokenbroker::server::Running {
    let config = Config::parse(config_text).expect("the test config is valid");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let serving = Serving::new(&config.server);
    let state = AppState::start(config, sealer(master_key))
        .await
        .expect("the broker starts");
    tokenbroker::server::spawn(listener, state, serving).expect("the broker serves")
}

/// Serves `router` on a loopback port for the test's lifetime: an upstream for the proxy.
pub(crate) async fn upstream(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// `GET /v1/tokens/controlroom` on `base` with `key`: (generation, token).
pub(crate) async fn current(http: &reqwest::Client, base: &str, key: &str) -> (u64, String) {
    let body: serde_json::Value = http
        .get(format!("{base}/v1/tokens/{PROVIDER}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("the broker answers")
        .json()
        .await
        .expect("a token");
    (
        body["generation"].as_u64().expect("a generation"),
        body["access_token"].as_str().expect("a token").to_owned(),
    )
}

/// `GET /v1/providers` with `key`: the status and the JSON body.
pub(crate) async fn providers(app: &TestApp, key: &str) -> (StatusCode, serde_json::Value) {
    let response = app
        .http
        .get(format!("{}/v1/providers", app.url))
        .bearer_auth(key)
        .send()
        .await
        .expect("the broker answers");
    (response.status(), response.json().await.unwrap_or_default())
}

/// The most logins a run of `duration` may cause with tokens of `lifetime`: one per token
/// life, with the default `refresh_before` (a fifth), plus the first and one for rounding.
pub(crate) fn login_bound(lifetime: Duration, duration: Duration) -> u64 {
    let lead = lifetime / 5;
    (duration.as_secs_f64() / (lifetime - lead).as_secs_f64()).floor() as u64 + 2
}

fn config_text(
    emulator: &str,
    all_key: &str,
    scoped_key: &str,
    options: &Options,
    store: &Path,
) -> String {
    format!(
        r#"
[server]
{server}

[store]
path = "{store}/tokenbroker.db"

[providers.{PROVIDER}]
type = "json_login"
login_url = "{emulator}/v1/authentication"
login_body = {{ username = "api-bot", apiKey = "k3y-for-tests" }}
header = "X-Authorization"
prefix = ""
backoff_min = "500ms"
backoff_max = "2s"
timeout = "5s"
logout_url = "{emulator}/v1/authentication/logout"
logout_on_shutdown = {logout}
upstream = "{upstream}"
{extra}

[providers.{OTHER}]
type = "json_login"
login_url = "{emulator}/v1/authentication"
login_body = {{ username = "other-bot", apiKey = "{other_key}" }}

[clients.everything]
key_sha256 = "{all}"
providers = ["*"]
admin = true

[clients.scoped]
key_sha256 = "{scoped}"
providers = ["{PROVIDER}"]
"#,
        all = hex(&key_sha256(all_key)),
        scoped = hex(&key_sha256(scoped_key)),
        server = options.server_extra,
        extra = options.provider_extra.replace("{emulator}", emulator),
        upstream = options.upstream.as_deref().unwrap_or(emulator),
        logout = options.logout_on_shutdown,
        other_key = options.other_api_key,
        store = store.display(),
    )
}

impl TestApp {
    /// `GET /v1/proxy/controlroom/{path}` with the scoped key.
    pub(crate) async fn proxied_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/proxy/{PROVIDER}/{path}", self.url))
            .bearer_auth(&self.scoped_key)
            .send()
            .await
            .expect("the broker answers")
    }

    /// A broker client with the all-providers key.
    pub(crate) fn client(&self) -> BrokerClient {
        BrokerClient::new(&self.url, SecretString::from(self.all_key.clone())).expect("valid URL")
    }

    /// `GET /v1/tokens/{provider}` with `key`, returning the status, headers and JSON body.
    pub(crate) async fn get_token(
        &self,
        provider: &str,
        key: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, serde_json::Value) {
        let mut request = self.http.get(format!("{}/v1/tokens/{provider}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("the broker answers");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.expect("a JSON body");
        (status, headers, body)
    }

    /// Begins a graceful stop of the broker, as a signal would; the task ends when it has
    /// stopped.
    pub(crate) fn begin_stop(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let broker = self.broker.take().expect("the broker runs");
        tokio::spawn(broker.stop())
    }

    /// Stops the broker gracefully and starts a new one on the same store and key.
    pub(crate) async fn restart(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.stop().await.expect("the broker stops cleanly");
        }
        let broker = start_broker(&self.config_text, &self.master_key).await;
        self.url = broker.url.clone();
        self.broker = Some(broker);
    }

    /// `GET /v1/tokens/controlroom` from the broker at `base` with the all-providers key: the
    /// status and the JSON body, or the error of a broker that never answered.
    pub(crate) async fn token_at(
        &self,
        base: &str,
    ) -> reqwest::Result<(StatusCode, serde_json::Value)> {
        let response = self
            .http
            .get(format!("{base}/v1/tokens/{PROVIDER}"))
            .bearer_auth(&self.all_key)
            .send()
            .await?;
        let status = response.status();
        Ok((status, response.json().await?))
    }

    /// The bare token from the broker at `base` (`Accept: text/plain`).
    pub(crate) async fn plain_token(&self, base: &str) -> String {
        let response = self
            .http
            .get(format!("{base}/v1/tokens/{PROVIDER}"))
            .bearer_auth(&self.all_key)
            .header("Accept", "text/plain")
            .send()
            .await
            .expect("the broker answers");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        response.text().await.expect("a body")
    }

    /// The status of `GET {path}` without a key.
    pub(crate) async fn status_of(&self, path: &str) -> StatusCode {
        let response = self.http.get(format!("{}{path}", self.url)).send().await;
        response.expect("the broker answers").status()
    }

    /// `POST /v1/tokens/{provider}/invalidate` with the all-providers key.
    pub(crate) async fn invalidate(
        &self,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/v1/tokens/{PROVIDER}/invalidate", self.url))
            .bearer_auth(&self.all_key)
            .json(&body)
            .send()
            .await
            .expect("the broker answers");
        (
            response.status(),
            response.json().await.expect("a JSON body"),
        )
    }
}
