//! Events for home automation, sans-IO.
//!
//! * [`event`]: the doorbell, missed-call, voicemail and trunk events as flat JSON objects.
//! * [`dispatch`]: webhook delivery: bounded queue, one attempt in flight per webhook, retries
//!   with back-off, HMAC-SHA256 signatures; the shell performs the HTTP.
//! * [`http`]: the POST request and reading the answer's status.
//! * HMAC-SHA256 for the signature header: [`hmac`].

pub mod dispatch;
pub mod event;
pub mod hmac;
pub mod http;

pub use dispatch::{Attempt, DispatchStats, Dispatcher};
pub use event::{Data, Event};
