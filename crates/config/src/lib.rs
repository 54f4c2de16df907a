//! Typed, validated podpbx configuration from TOML.
//!
//! ```no_run
//! use std::path::Path;
//! // All problems, one per line, for `podpbx check` and config reload:
//! match podpbx_config::check(Path::new("podpbx.toml")) {
//!     Ok(config) => println!("{} users", config.users.len()),
//!     Err(errors) => eprintln!("{}", podpbx_config::format_errors(&errors)),
//! }
//! ```
//!
//! Every diagnostic reads `file:line:col: key.path: message`, for example
//! `podpbx.toml:12:1: sip.prot: unknown key, did you mean `port`?`.
//! The complete key reference is in `CONFIG.md` next to this crate's
//! `Cargo.toml`.

mod build;
mod cidr;
mod error;
mod home;
mod pattern;
mod reader;
mod schema;
mod suggest;
mod timespec;

use std::path::Path;

pub use build::{check_admin_token, MIN_ADMIN_TOKEN};
pub use cidr::{Cidr, CidrError};
pub use error::{format_errors, ConfigError};
pub use home::{valid_email, EmailConfig, SmtpTls};
pub use home::{
    EventKind, EventsConfig, FeatureCodes, ForwardTarget, Forwarding, HttpUrl, Mode, ModeMatch,
    UserVoicemail, VoicemailConfig, Webhook,
};
pub use pattern::{Pattern, PatternError};
pub use podpbx_sip::{Secret, SecretSource};
pub use schema::{
    Action, AdminConfig, CallSource, CallsConfig, Config, DigestAlgorithm, DnsConfig, Dtmf, Family,
    Group, Host, LogConfig, LogFormat, Match, MediaConfig, MediaPortLayout, NumberMatch, Origin,
    RegistrarConfig, RingStrategy, Rule, SecurityConfig, SipConfig, Srtp, StorageConfig, Target,
    TlsConfig, TlsVersion, Transport, Trunk, User, When,
};
pub use timespec::{Clock, LocalTime, TimeMatch};

/// The built-in development configuration (`config/podpbx.toml`): binds
/// `::1` and `127.0.0.1` port 5060 (UDP and TCP), stores data in `./data`,
/// and has demo users `1001`/`1002`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/podpbx.toml");

/// The file name used in diagnostics about [`EMBEDDED_DEFAULT`].
pub const EMBEDDED_DEFAULT_NAME: &str = "podpbx.toml";

/// Reads and validates the file at `path`, reporting every problem found
/// (in file order). Use this for `podpbx check --config FILE` and to
/// validate a new file before a reload.
pub fn check(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => check_str(&text, &name),
        Err(e) => Err(vec![ConfigError::unlocated(
            name,
            format!("cannot read configuration: {}", error::io_message(&e)),
        )]),
    }
}

/// Parses and validates `text`; `file_name` is only used in diagnostics.
/// Secrets (`password_file`, `password_env`) are resolved now.
pub fn check_str(text: &str, file_name: &str) -> Result<Config, Vec<ConfigError>> {
    let mut d = error::Diagnostics::new(file_name, text);
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            d.error(e.span(), "", format!("TOML syntax error: {message}"));
            return Err(d.into_sorted());
        }
    };
    let config = build::build(&mut d, doc.as_table());
    if d.errors.is_empty() {
        Ok(config)
    } else {
        Err(d.into_sorted())
    }
}

impl Config {
    /// Reads and validates the file at `path`; on failure returns the first
    /// problem (use [`check`] to get all of them).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        check(path).map_err(first)
    }

    /// Parses and validates `text`; `file_name` is only used in
    /// diagnostics. On failure returns the first problem (use [`check_str`]
    /// to get all of them).
    pub fn from_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        check_str(text, file_name).map_err(first)
    }

    /// The built-in development configuration ([`EMBEDDED_DEFAULT`]).
    /// A unit test guarantees it is valid; an error is still possible in
    /// principle, so it is returned rather than panicking.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::from_str(EMBEDDED_DEFAULT, EMBEDDED_DEFAULT_NAME)
    }
}

fn first(mut errors: Vec<ConfigError>) -> ConfigError {
    if errors.is_empty() {
        ConfigError::unlocated("", "invalid configuration")
    } else {
        errors.swap_remove(0)
    }
}

#[cfg(test)]
mod tests;
