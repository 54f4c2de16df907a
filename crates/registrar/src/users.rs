//! The registrar's view of the user database.

use crate::Cidr;
use podpbx_sip::digest::Key;
use std::collections::HashMap;
use std::net::IpAddr;

/// One SIP account. The user name is both the digest username and the AOR user part
/// (compared case-sensitively, as SIP user parts are).
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// Password or precomputed HA1 (an HA1 must be made with the registrar's realm).
    pub secret: Key,
    /// Source networks this account may authenticate from; empty means anywhere.
    pub allowed_sources: Vec<Cidr>,
    /// Bindings kept for this AOR; more evict the oldest (see crate docs). At least 1.
    pub max_contacts: usize,
    /// The transport this account must register over (e.g. TLS); `None`: any.
    pub required_transport: Option<crate::Transport>,
    /// Accept RFC 2069 digest answers (no qop: no client nonce, no nonce count) from this
    /// user, for old doorbells and intercoms that cannot do better. Off by default.
    pub allow_rfc2069: bool,
}

impl User {
    /// A user with a password, allowed from anywhere, `max_contacts` 1.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        User {
            name: name.into(),
            secret: Key::Password(password.into()),
            allowed_sources: Vec::new(),
            max_contacts: 1,
            required_transport: None,
            allow_rfc2069: false,
        }
    }

    /// True if this user may authenticate from `ip`.
    pub fn allowed_from(&self, ip: IpAddr) -> bool {
        self.allowed_sources.is_empty() || self.allowed_sources.iter().any(|n| n.contains(ip))
    }
}

/// The set of accounts the registrar authenticates against (rebuilt from configuration).
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    users: HashMap<String, User>,
}

impl UserDb {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a user.
    pub fn insert(&mut self, user: User) {
        self.users.insert(user.name.clone(), user);
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<User> {
        self.users.remove(name)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Makes each password user's MD5 HA1 for `realm` once ([`Key::Prepared`]): the registrar
    /// verifies every request of its users in its one realm.
    pub(crate) fn prepare(&mut self, realm: &str) {
        for u in self.users.values_mut() {
            let key = std::mem::replace(&mut u.secret, Key::Password(String::new()));
            u.secret = key.prepared(&u.name, realm);
        }
    }
}

impl FromIterator<User> for UserDb {
    fn from_iter<I: IntoIterator<Item = User>>(iter: I) -> Self {
        let mut db = UserDb::new();
        for u in iter {
            db.insert(u);
        }
        db
    }
}
