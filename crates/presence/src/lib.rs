//! SIP event notification for podpbx, sans-IO.
//!
//! * [`mwi`]: RFC 3842 message-summary bodies (the message lamp).
//! * [`dialog_info`]: RFC 4235 dialog-info bodies (BLF keys, directed pickup).
//! * [`notifier`]: RFC 6665 subscriptions for both packages: SUBSCRIBE in, responses and
//!   NOTIFYs out, refresh, expiry, bounded per subscriber and in total; unsolicited MWI for
//!   phones that do not subscribe.

pub mod dialog_info;
pub mod mwi;
pub mod notifier;

pub use notifier::{Limits, Notifier, NotifierStats, NotifyId, Outgoing, Package, Response};
