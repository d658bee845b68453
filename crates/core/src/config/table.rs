//! A reader over one TOML table that collects every problem instead of stopping at the first.
//!
//! `check` must report all that is wrong with a config at once, each with its key, which
//! serde's derive (first error wins) cannot do. Each getter records a typed problem under the
//! full dotted key and returns `None`; [`Table::finish`] reports the keys nobody read.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;

use super::{Problem, secret_ref};

/// The longest duration any setting accepts.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// One table of the config, with the dotted path that leads to it.
pub(crate) struct Table<'a> {
    path: String,
    table: &'a toml::Table,
    read: BTreeSet<&'a str>,
}

impl<'a> Table<'a> {
    pub(crate) fn new(path: impl Into<String>, table: &'a toml::Table) -> Self {
        Self {
            path: path.into(),
            table,
            read: BTreeSet::new(),
        }
    }

    /// The dotted key of `name` in this table, for messages.
    pub(crate) fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The keys of this table, to walk its sub-tables by name.
    pub(crate) fn keys(&self) -> Vec<&'a str> {
        self.table.keys().map(String::as_str).collect()
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.table.contains_key(name)
    }

    /// The raw value of `name`, marking it as read.
    pub(crate) fn value(&mut self, name: &'a str) -> Option<&'a toml::Value> {
        self.read.insert(name);
        self.table.get(name)
    }

    fn typed<T>(
        &mut self,
        name: &'a str,
        what: &str,
        problems: &mut Vec<Problem>,
        get: impl FnOnce(&'a toml::Value) -> Option<T>,
    ) -> Option<T> {
        let value = self.value(name)?;
        let typed = get(value);
        if typed.is_none() {
            problems.push(Problem::new(
                self.key(name),
                format!("expected {what}, found {}", value.type_str()),
            ));
        }
        typed
    }

    /// A string taken as written: a secret reference in it would be sent as is, so it is
    /// refused (only [`Table::secret`] and the login and refresh bodies resolve them).
    pub(crate) fn string(&mut self, name: &'a str, problems: &mut Vec<Problem>) -> Option<&'a str> {
        let text = self.raw_string(name, problems)?;
        if text.contains("${env:") || text.contains("${file:") {
            problems.push(Problem::new(
                self.key(name),
                "secret references are resolved only in login_body, refresh_body, \
                 client_secret, refresh_token, extra_params and store.url; write this value out",
            ));
            return None;
        }
        Some(text)
    }

    /// A string that may hold secrets, its `${env:..}` and `${file:..}` resolved.
    pub(crate) fn secret(
        &mut self,
        name: &'a str,
        problems: &mut Vec<Problem>,
    ) -> Option<SecretString> {
        let text = self.raw_string(name, problems)?;
        match secret_ref::resolve(text, false) {
            Ok(value) => Some(SecretString::from(value)),
            Err(e) => {
                problems.push(Problem::new(self.key(name), e.to_string()));
                None
            }
        }
    }

    fn raw_string(&mut self, name: &'a str, problems: &mut Vec<Problem>) -> Option<&'a str> {
        self.typed(name, "a string", problems, toml::Value::as_str)
    }

    pub(crate) fn integer(&mut self, name: &'a str, problems: &mut Vec<Problem>) -> Option<i64> {
        self.typed(name, "a whole number", problems, toml::Value::as_integer)
    }

    pub(crate) fn bool(&mut self, name: &'a str, problems: &mut Vec<Problem>) -> Option<bool> {
        self.typed(name, "true or false", problems, toml::Value::as_bool)
    }

    pub(crate) fn table(
        &mut self,
        name: &'a str,
        problems: &mut Vec<Problem>,
    ) -> Option<Table<'a>> {
        let key = self.key(name);
        self.typed(name, "a table", problems, toml::Value::as_table)
            .map(|t| Table::new(key, t))
    }

    pub(crate) fn string_list(
        &mut self,
        name: &'a str,
        problems: &mut Vec<Problem>,
    ) -> Option<Vec<&'a str>> {
        self.typed(name, "a list of strings", problems, |v| {
            v.as_array()?.iter().map(toml::Value::as_str).collect()
        })
    }

    /// A human duration such as `30s`, `2m`, `1h` or `500ms`.
    pub(crate) fn duration(
        &mut self,
        name: &'a str,
        problems: &mut Vec<Problem>,
    ) -> Option<Duration> {
        let text = self.string(name, problems)?;
        match humantime::parse_duration(text) {
            Ok(d) if d > MAX_DURATION => {
                problems.push(Problem::new(
                    self.key(name),
                    "longer than a year; surely a typo",
                ));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(Problem::new(
                    self.key(name),
                    format!("bad duration {text:?} ({e}); write e.g. \"30s\", \"2m\" or \"1h\""),
                ));
                None
            }
        }
    }

    /// A size in bytes: a whole number, or text such as `"512KiB"`, `"1MiB"`, `"2GiB"`.
    pub(crate) fn size(&mut self, name: &'a str, problems: &mut Vec<Problem>) -> Option<u64> {
        let value = self.value(name)?;
        let parsed = match value {
            toml::Value::Integer(n) => u64::try_from(*n).ok(),
            toml::Value::String(text) => parse_size(text),
            _ => None,
        };
        if parsed.is_none() {
            problems.push(Problem::new(
                self.key(name),
                "expected a size such as 1048576, \"512KiB\" or \"1MiB\"",
            ));
        }
        parsed
    }

    /// An absolute `http` or `https` URL.
    pub(crate) fn url(&mut self, name: &'a str, problems: &mut Vec<Problem>) -> Option<Url> {
        let text = self.string(name, problems)?;
        match Url::parse(text) {
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                problems.push(Problem::new(
                    self.key(name),
                    "credentials in a URL would be printed with it; put them in the body or a header",
                ));
                None
            }
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            Ok(_) => {
                problems.push(Problem::new(
                    self.key(name),
                    "expected an http or https URL",
                ));
                None
            }
            Err(e) => {
                problems.push(Problem::new(self.key(name), format!("bad URL ({e})")));
                None
            }
        }
    }

    /// Records a problem if `name` is absent (a present value of the wrong type has already
    /// been reported by its getter).
    pub(crate) fn require<T>(
        &self,
        name: &str,
        value: Option<T>,
        problems: &mut Vec<Problem>,
    ) -> Option<T> {
        if value.is_none() && !self.has(name) {
            problems.push(Problem::new(self.key(name), "missing required key"));
        }
        value
    }

    /// Reports every key of the table that no getter read.
    pub(crate) fn finish(self, problems: &mut Vec<Problem>) {
        for name in self.table.keys() {
            if !self.read.contains(name.as_str()) {
                problems.push(Problem::new(self.key(name), "unknown key"));
            }
        }
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}
