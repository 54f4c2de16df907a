//! SIP response status codes (RFC 3261 §7.2, §21) with their standard reason phrases.
//!
//! A [`StatusCode`] is a number in `100..=699`; the class is its first digit. Codes defined by
//! RFC 3261 and by the extensions podpbx meets (events, session timers, PRACK, security
//! agreement, outbound, identity, info packages, ...) have named constants and a canonical reason
//! phrase; any other code in range is still a valid status (RFC 3261 §8.1.3.2: an unknown code is
//! treated as the x00 code of its class) and gets its class's generic phrase.
//!
//! ```
//! use podpbx_sip::StatusCode;
//! let busy = StatusCode::BUSY_HERE;
//! assert_eq!(busy.to_string(), "486 Busy Here");
//! assert!(busy.is_client_error() && busy.is_final());
//! assert_eq!(StatusCode::try_from(499u16).unwrap().reason(), "Client Error");
//! assert!(StatusCode::new(99).is_none());
//! ```

use std::fmt;

/// A SIP response status code, `100..=699`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(u16);

/// The class of a status code (RFC 3261 §7.2): its first digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// 1xx: the request is being processed (not final).
    Provisional,
    /// 2xx: the request succeeded.
    Success,
    /// 3xx: the request should be tried elsewhere.
    Redirection,
    /// 4xx: the request cannot be fulfilled at this server as it is.
    ClientError,
    /// 5xx: the server failed to fulfil a valid request.
    ServerError,
    /// 6xx: the request cannot be fulfilled at any server.
    GlobalFailure,
}

/// A number outside `100..=699` used as a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid SIP status code {0} (must be 100..=699)")]
pub struct InvalidStatusCode(pub u16);

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, $reason:literal; )*) => {
        impl StatusCode {
            $( $(#[$doc])* pub const $name: StatusCode = StatusCode($code); )*
        }

        /// The canonical reason phrase of a registered code.
        const fn canonical(code: u16) -> Option<&'static str> {
            match code {
                $( $code => Some($reason), )*
                _ => None,
            }
        }
    };
}

codes! {
    // 1xx (RFC 3261 §21.1, RFC 6228)
    TRYING = 100, "Trying";
    RINGING = 180, "Ringing";
    CALL_IS_BEING_FORWARDED = 181, "Call Is Being Forwarded";
    QUEUED = 182, "Queued";
    SESSION_PROGRESS = 183, "Session Progress";
    /// RFC 6228.
    EARLY_DIALOG_TERMINATED = 199, "Early Dialog Terminated";
    // 2xx (RFC 3261 §21.2, RFC 6665, RFC 5839)
    OK = 200, "OK";
    /// RFC 6665 (SUBSCRIBE/REFER); deprecated for other uses.
    ACCEPTED = 202, "Accepted";
    /// RFC 5839.
    NO_NOTIFICATION = 204, "No Notification";
    // 3xx (RFC 3261 §21.3)
    MULTIPLE_CHOICES = 300, "Multiple Choices";
    MOVED_PERMANENTLY = 301, "Moved Permanently";
    MOVED_TEMPORARILY = 302, "Moved Temporarily";
    USE_PROXY = 305, "Use Proxy";
    ALTERNATIVE_SERVICE = 380, "Alternative Service";
    // 4xx (RFC 3261 §21.4 and extensions)
    BAD_REQUEST = 400, "Bad Request";
    UNAUTHORIZED = 401, "Unauthorized";
    PAYMENT_REQUIRED = 402, "Payment Required";
    FORBIDDEN = 403, "Forbidden";
    NOT_FOUND = 404, "Not Found";
    METHOD_NOT_ALLOWED = 405, "Method Not Allowed";
    NOT_ACCEPTABLE = 406, "Not Acceptable";
    PROXY_AUTHENTICATION_REQUIRED = 407, "Proxy Authentication Required";
    REQUEST_TIMEOUT = 408, "Request Timeout";
    GONE = 410, "Gone";
    /// RFC 3903.
    CONDITIONAL_REQUEST_FAILED = 412, "Conditional Request Failed";
    REQUEST_ENTITY_TOO_LARGE = 413, "Request Entity Too Large";
    REQUEST_URI_TOO_LONG = 414, "Request-URI Too Long";
    UNSUPPORTED_MEDIA_TYPE = 415, "Unsupported Media Type";
    UNSUPPORTED_URI_SCHEME = 416, "Unsupported URI Scheme";
    /// RFC 4412.
    UNKNOWN_RESOURCE_PRIORITY = 417, "Unknown Resource-Priority";
    BAD_EXTENSION = 420, "Bad Extension";
    EXTENSION_REQUIRED = 421, "Extension Required";
    /// RFC 4028 (session timers).
    SESSION_INTERVAL_TOO_SMALL = 422, "Session Interval Too Small";
    INTERVAL_TOO_BRIEF = 423, "Interval Too Brief";
    /// RFC 6442.
    BAD_LOCATION_INFORMATION = 424, "Bad Location Information";
    /// RFC 8224.
    USE_IDENTITY_HEADER = 428, "Use Identity Header";
    /// RFC 3892.
    PROVIDE_REFERRER_IDENTITY = 429, "Provide Referrer Identity";
    /// RFC 5626 (outbound).
    FLOW_FAILED = 430, "Flow Failed";
    /// RFC 5079.
    ANONYMITY_DISALLOWED = 433, "Anonymity Disallowed";
    /// RFC 8224.
    BAD_IDENTITY_INFO = 436, "Bad Identity Info";
    /// RFC 8224.
    UNSUPPORTED_CREDENTIAL = 437, "Unsupported Credential";
    /// RFC 8224.
    INVALID_IDENTITY_HEADER = 438, "Invalid Identity Header";
    /// RFC 5626 (outbound).
    FIRST_HOP_LACKS_OUTBOUND_SUPPORT = 439, "First Hop Lacks Outbound Support";
    /// RFC 5393.
    MAX_BREADTH_EXCEEDED = 440, "Max-Breadth Exceeded";
    /// RFC 6086 (INFO packages).
    BAD_INFO_PACKAGE = 469, "Bad Info Package";
    /// RFC 5360.
    CONSENT_NEEDED = 470, "Consent Needed";
    TEMPORARILY_UNAVAILABLE = 480, "Temporarily Unavailable";
    CALL_OR_TRANSACTION_DOES_NOT_EXIST = 481, "Call/Transaction Does Not Exist";
    LOOP_DETECTED = 482, "Loop Detected";
    TOO_MANY_HOPS = 483, "Too Many Hops";
    ADDRESS_INCOMPLETE = 484, "Address Incomplete";
    AMBIGUOUS = 485, "Ambiguous";
    BUSY_HERE = 486, "Busy Here";
    REQUEST_TERMINATED = 487, "Request Terminated";
    NOT_ACCEPTABLE_HERE = 488, "Not Acceptable Here";
    /// RFC 6665 (events).
    BAD_EVENT = 489, "Bad Event";
    REQUEST_PENDING = 491, "Request Pending";
    UNDECIPHERABLE = 493, "Undecipherable";
    /// RFC 3329.
    SECURITY_AGREEMENT_REQUIRED = 494, "Security Agreement Required";
    // 5xx (RFC 3261 §21.5 and extensions)
    SERVER_INTERNAL_ERROR = 500, "Server Internal Error";
    NOT_IMPLEMENTED = 501, "Not Implemented";
    BAD_GATEWAY = 502, "Bad Gateway";
    SERVICE_UNAVAILABLE = 503, "Service Unavailable";
    SERVER_TIMEOUT = 504, "Server Time-out";
    VERSION_NOT_SUPPORTED = 505, "Version Not Supported";
    MESSAGE_TOO_LARGE = 513, "Message Too Large";
    /// RFC 8599.
    PUSH_NOTIFICATION_SERVICE_NOT_SUPPORTED = 555, "Push Notification Service Not Supported";
    /// RFC 3312.
    PRECONDITION_FAILURE = 580, "Precondition Failure";
    // 6xx (RFC 3261 §21.6 and extensions)
    BUSY_EVERYWHERE = 600, "Busy Everywhere";
    DECLINE = 603, "Decline";
    DOES_NOT_EXIST_ANYWHERE = 604, "Does Not Exist Anywhere";
    NOT_ACCEPTABLE_ANYWHERE = 606, "Not Acceptable";
    /// RFC 8197.
    UNWANTED = 607, "Unwanted";
    /// RFC 8688.
    REJECTED = 608, "Rejected";
}

impl StatusCode {
    /// `code` as a status code; `None` outside `100..=699`.
    pub const fn new(code: u16) -> Option<StatusCode> {
        if code >= 100 && code <= 699 {
            Some(StatusCode(code))
        } else {
            None
        }
    }

    /// The number.
    pub const fn code(self) -> u16 {
        self.0
    }

    /// The standard reason phrase: the registered one, or the generic phrase of the class for
    /// an unregistered code (e.g. 499 -> "Client Error").
    pub const fn reason(self) -> &'static str {
        match canonical(self.0) {
            Some(r) => r,
            None => match self.class() {
                StatusClass::Provisional => "Provisional",
                StatusClass::Success => "Success",
                StatusClass::Redirection => "Redirection",
                StatusClass::ClientError => "Client Error",
                StatusClass::ServerError => "Server Error",
                StatusClass::GlobalFailure => "Global Failure",
            },
        }
    }

    /// The registered reason phrase, if the code is registered.
    pub const fn canonical_reason(self) -> Option<&'static str> {
        canonical(self.0)
    }

    /// The class (first digit).
    pub const fn class(self) -> StatusClass {
        match self.0 / 100 {
            1 => StatusClass::Provisional,
            2 => StatusClass::Success,
            3 => StatusClass::Redirection,
            4 => StatusClass::ClientError,
            5 => StatusClass::ServerError,
            _ => StatusClass::GlobalFailure,
        }
    }

    /// The x00 code of the class: how a UA treats a code it does not know (RFC 3261 §8.1.3.2).
    pub const fn class_code(self) -> StatusCode {
        StatusCode(self.0 / 100 * 100)
    }

    /// 1xx.
    pub const fn is_provisional(self) -> bool {
        self.0 < 200
    }
    /// 2xx.
    pub const fn is_success(self) -> bool {
        self.0 >= 200 && self.0 < 300
    }
    /// 3xx.
    pub const fn is_redirection(self) -> bool {
        self.0 >= 300 && self.0 < 400
    }
    /// 4xx.
    pub const fn is_client_error(self) -> bool {
        self.0 >= 400 && self.0 < 500
    }
    /// 5xx.
    pub const fn is_server_error(self) -> bool {
        self.0 >= 500 && self.0 < 600
    }
    /// 6xx.
    pub const fn is_global_failure(self) -> bool {
        self.0 >= 600
    }
    /// 2xx..6xx: ends the transaction.
    pub const fn is_final(self) -> bool {
        self.0 >= 200
    }
    /// 3xx..6xx: the request did not succeed.
    pub const fn is_failure(self) -> bool {
        self.0 >= 300
    }
    /// 4xx..6xx.
    pub const fn is_error(self) -> bool {
        self.0 >= 400
    }
    /// 401 or 407: a digest challenge (RFC 3261 §22).
    pub const fn is_challenge(self) -> bool {
        self.0 == 401 || self.0 == 407
    }
}

impl fmt::Display for StatusCode {
    /// `486 Busy Here`, as in a status line or a sipfrag.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

impl fmt::Debug for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatusCode({})", self.0)
    }
}

impl From<StatusCode> for u16 {
    fn from(s: StatusCode) -> u16 {
        s.0
    }
}

impl TryFrom<u16> for StatusCode {
    type Error = InvalidStatusCode;
    fn try_from(code: u16) -> Result<StatusCode, InvalidStatusCode> {
        StatusCode::new(code).ok_or(InvalidStatusCode(code))
    }
}

impl PartialEq<u16> for StatusCode {
    fn eq(&self, other: &u16) -> bool {
        self.0 == *other
    }
}

impl PartialEq<StatusCode> for u16 {
    fn eq(&self, other: &StatusCode) -> bool {
        *self == other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_and_conversions() {
        assert_eq!(StatusCode::new(99), None);
        assert_eq!(StatusCode::new(700), None);
        assert_eq!(StatusCode::new(100), Some(StatusCode::TRYING));
        assert_eq!(StatusCode::new(699).map(u16::from), Some(699));
        assert_eq!(StatusCode::try_from(0u16), Err(InvalidStatusCode(0)));
        assert_eq!(u16::from(StatusCode::BUSY_HERE), 486);
        assert_eq!(StatusCode::OK, 200u16);
        assert_eq!(200u16, StatusCode::OK);
    }

    #[test]
    fn reasons_are_the_rfc_phrases() {
        let cases = [
            (100, "Trying"),
            (183, "Session Progress"),
            (202, "Accepted"),
            (407, "Proxy Authentication Required"),
            (420, "Bad Extension"),
            (422, "Session Interval Too Small"),
            (423, "Interval Too Brief"),
            (481, "Call/Transaction Does Not Exist"),
            (482, "Loop Detected"),
            (483, "Too Many Hops"),
            (488, "Not Acceptable Here"),
            (489, "Bad Event"),
            (491, "Request Pending"),
            (494, "Security Agreement Required"),
            (503, "Service Unavailable"),
            (504, "Server Time-out"),
            (603, "Decline"),
        ];
        for (code, reason) in cases {
            let s = StatusCode::new(code).unwrap();
            assert_eq!(s.reason(), reason, "{code}");
            assert_eq!(s.canonical_reason(), Some(reason));
            assert_eq!(s.to_string(), format!("{code} {reason}"));
        }
        // Unregistered codes: the class's phrase, and the x00 code for behaviour.
        let odd = StatusCode::new(499).unwrap();
        assert_eq!(odd.canonical_reason(), None);
        assert_eq!(odd.reason(), "Client Error");
        assert_eq!(odd.class_code(), StatusCode::BAD_REQUEST);
        assert_eq!(StatusCode::new(699).unwrap().reason(), "Global Failure");
        assert_eq!(StatusCode::new(299).unwrap().reason(), "Success");
    }

    #[test]
    fn classes() {
        let all = |p: fn(StatusCode) -> bool| -> Vec<u16> {
            [100, 199, 200, 299, 300, 399, 400, 499, 500, 599, 600, 699]
                .into_iter()
                .filter(|c| p(StatusCode::new(*c).unwrap()))
                .collect()
        };
        assert_eq!(all(StatusCode::is_provisional), [100, 199]);
        assert_eq!(all(StatusCode::is_success), [200, 299]);
        assert_eq!(all(StatusCode::is_redirection), [300, 399]);
        assert_eq!(all(StatusCode::is_client_error), [400, 499]);
        assert_eq!(all(StatusCode::is_server_error), [500, 599]);
        assert_eq!(all(StatusCode::is_global_failure), [600, 699]);
        assert_eq!(all(StatusCode::is_final).len(), 10);
        assert_eq!(all(StatusCode::is_failure).len(), 8);
        assert_eq!(all(StatusCode::is_error).len(), 6);
        assert_eq!(StatusCode::RINGING.class(), StatusClass::Provisional);
        assert_eq!(StatusCode::DECLINE.class(), StatusClass::GlobalFailure);
        assert!(StatusCode::UNAUTHORIZED.is_challenge());
        assert!(StatusCode::PROXY_AUTHENTICATION_REQUIRED.is_challenge());
        assert!(!StatusCode::FORBIDDEN.is_challenge());
    }
}
