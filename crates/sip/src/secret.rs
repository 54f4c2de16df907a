//! Secrets (passwords, tokens) from the configuration that never show up in logs.

use std::fmt;
use std::path::PathBuf;

/// A password resolved at load time. `Debug` prints `***`; there is no
/// `Display`, read the value with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

/// Where a [`Secret`] came from (useful in logs; contains no secret data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `password = "..."` in the configuration file.
    Inline,
    /// `password_file = "..."` (e.g. a Kubernetes Secret volume).
    File(PathBuf),
    /// `password_env = "..."`.
    Env(String),
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>, source: SecretSource) -> Secret {
        Secret {
            value: value.into(),
            source,
        }
    }

    /// The secret value. Do not log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the value was read from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_value() {
        let s = Secret::new("hunter2", SecretSource::Inline);
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
