//! Secret references in config strings: `${env:NAME}` and `${file:PATH}`.
//!
//! They are resolved once, when the config is loaded, so that `check` can report each one
//! it cannot resolve, and so that the config file itself never has to hold a secret. The
//! placeholder `${token}` is left alone where the caller allows it: it stands for the
//! current token in a refresh body and is filled in at refresh time.

use std::fmt;

/// Where a reference could not be resolved, without the value of anything.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RefError {
    /// `${env:NAME}` names a variable that is not set (or not UTF-8).
    MissingEnv(String),
    /// `${file:PATH}` names a file that cannot be read.
    UnreadableFile(String, String),
    /// `${...}` is not one of the known forms; holds only the part before a `:`, since the
    /// rest may be a secret that merely looks like a reference.
    Unknown(String),
    /// A `${` without its `}`.
    Unclosed,
}

impl fmt::Display for RefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingEnv(name) => write!(f, "environment variable {name} is not set"),
            Self::UnreadableFile(path, why) => write!(f, "cannot read secret file {path}: {why}"),
            Self::Unknown(kind) => write!(
                f,
                "unknown reference kind {kind:?} in ${{...}}; use ${{env:NAME}} or ${{file:PATH}} \
                 (write $${{ for a literal ${{)"
            ),
            Self::Unclosed => write!(f, "unclosed ${{ in value"),
        }
    }
}

/// Replaces every `${env:..}` and `${file:..}` in `text`; `${token}` is kept as written when
/// `allow_token` is set and is an error otherwise.
pub(crate) fn resolve(text: &str, allow_token: bool) -> Result<String, RefError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            // `$${` is a literal `${`.
            out.push_str(&rest[..start]);
            out.push('{');
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(RefError::Unclosed)?;
        let inner = &after[..end];
        if let Some(name) = inner.strip_prefix("env:") {
            let value = std::env::var(name).map_err(|_| RefError::MissingEnv(name.to_owned()))?;
            out.push_str(&value);
        } else if let Some(path) = inner.strip_prefix("file:") {
            let value = std::fs::read_to_string(path)
                .map_err(|e| RefError::UnreadableFile(path.to_owned(), e.kind().to_string()))?;
            out.push_str(value.trim_end_matches(['\r', '\n']));
        } else if inner == "token" && allow_token {
            out.push_str("${token}");
        } else {
            let kind = inner.split_once(':').map_or("", |(kind, _)| kind);
            return Err(RefError::Unknown(kind.to_owned()));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_files_and_keeps_plain_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let text = format!("pre-${{file:{}}}-post", path.display());
        assert_eq!(resolve(&text, false).unwrap(), "pre-s3cret-post");
        assert_eq!(resolve("no refs", false).unwrap(), "no refs");
    }

    #[test]
    fn reports_what_it_cannot_resolve() {
        assert_eq!(
            resolve("${env:TOKENBROKER_SURELY_UNSET_VAR}", false),
            Err(RefError::MissingEnv("TOKENBROKER_SURELY_UNSET_VAR".into()))
        );
        assert_eq!(
            resolve("${vault:x}", false),
            Err(RefError::Unknown("vault".into()))
        );
        let secret_like = resolve("Pa${ss-w0rd}x", false).unwrap_err().to_string();
        assert!(!secret_like.contains("ss-w0rd"), "{secret_like}");
        assert_eq!(resolve("${env:X", false), Err(RefError::Unclosed));
        assert!(matches!(
            resolve("${file:/nonexistent/tokenbroker}", false),
            Err(RefError::UnreadableFile(..))
        ));
    }

    #[test]
    fn token_placeholder_only_where_allowed() {
        assert_eq!(resolve("${token}", true).unwrap(), "${token}");
        assert_eq!(
            resolve("${token}", false),
            Err(RefError::Unknown(String::new()))
        );
        assert_eq!(resolve("a$${b}c", false).unwrap(), "a${b}c");
    }
}
