//! SIP for podpbx: messages, URIs, typed header accessors, transactions and digest auth, and
//! the SIP vocabulary every crate above shares: [`Transport`], [`Flow`] and [`Peer`]
//! ([`flow`], with the RFC 3261 §18.2.2 response address), the capability set announced in
//! Allow/Accept/Supported ([`caps`]).
//!
//! Everything here is sans-IO: no sockets, no clock reads. Callers pass bytes and `now` in and get
//! parsed messages, bytes to send and timers to arm back.

pub mod builder;
pub mod capacity;
pub mod caps;
pub mod checks;
pub mod digest;
pub mod flow;
pub mod headers;
pub mod ident;
pub mod message;
pub mod rel100;
pub mod replaces;
mod secret;
pub mod session_timer;
pub mod source;
pub mod status;
pub mod text;
pub mod time;
pub mod transaction;
pub mod uri;

pub use builder::{RequestBuilder, ResponseBuilder};
pub use flow::{Flow, Peer, Transport};
pub use headers::{CSeq, Contact, ContactList, NameAddr, Params, Via};
pub use ident::IdGen;
pub use message::{Framing, HeaderName, Message, Method, ParseError, StartLine};
pub use secret::{Secret, SecretSource};
pub use source::SourceKey;
pub use status::{InvalidStatusCode, StatusClass, StatusCode};
pub use uri::{Host, Uri};
