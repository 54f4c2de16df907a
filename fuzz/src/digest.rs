//! Digest header parsing (`podpbx_sip::digest`): `Challenge::parse` and `Credentials::parse` on
//! any bytes, the header values podpbx writes back from them, the trunk-side `DigestClient`
//! answering a hostile provider's challenge, and the registrar-side `DigestServer::verify` on
//! hostile credentials.
//!
//! Oracles (besides "never panics"): a value podpbx formats never contains CR or LF (header
//! injection into our own requests) and parses again with the same realm/nonce/username;
//! `verify` never accepts credentials built from fuzzed input.
//!
//! Also compiled into `crates/sip/tests/corpus_replay.rs` (`#[path]`): `podpbx_sip` only.

use podpbx_sip::digest::{
    Algorithm, Challenge, Credentials, DigestClient, DigestServer, ServerConfig, VerifyOutcome,
};
use std::hint::black_box;
use std::time::Instant;

/// Runs one input through everything; panics only when an oracle fails.
pub fn run(data: &[u8]) {
    // The whole input as one header value, and every line of it as one value each (a 401 may
    // carry several WWW-Authenticate headers).
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    challenge(data);
    credentials(data);
    for v in &values {
        challenge(v);
        credentials(v);
    }
    client(&values);
    server(data);
}

fn no_crlf(what: &str, s: &str) {
    assert!(
        !s.contains('\r') && !s.contains('\n'),
        "{what} formatted with CR/LF (header injection): {s:?}"
    );
}

fn strip_crlf(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

fn challenge(v: &[u8]) {
    let Ok(c) = Challenge::parse(v) else { return };
    black_box((c.algorithm(), c.offers(podpbx_sip::digest::Qop::Auth)));
    let out = c.to_header_value();
    no_crlf("Challenge", &out);
    black_box(c.to_string());
    // Only the values podpbx itself would send must re-parse; a challenge with a raw
    // algorithm token containing separators is the peer's text and is never re-emitted
    // (the client answers with `Algorithm::as_str`).
    if c.algorithm
        .as_deref()
        .is_none_or(|a| Algorithm::parse(a).is_some())
    {
        let again = Challenge::parse(&out)
            .unwrap_or_else(|e| panic!("formatted challenge does not parse ({e}): {out:?}"));
        assert_eq!(again.realm, strip_crlf(&c.realm));
        assert_eq!(again.nonce, strip_crlf(&c.nonce));
        assert_eq!(again.stale, c.stale);
    }
}

fn credentials(v: &[u8]) {
    let Ok(c) = Credentials::parse(v) else { return };
    black_box((c.algorithm(), c.nc_value()));
    let out = c.to_header_value();
    no_crlf("Credentials", &out);
    black_box(c.to_string());
    // Re-parsing is checked on podpbx's own credentials (the client below): peer text such as
    // `algorithm="a b"` is not a token and cannot round-trip unquoted.
}

fn client(values: &[&[u8]]) {
    let mut cl = DigestClient::new("1001", "secret-pw", b"seed".to_vec());
    if cl.on_challenge(values).is_err() {
        return;
    }
    let Some(auth) = cl.authorization("REGISTER", "sip:provider.example", b"") else {
        return;
    };
    no_crlf("Authorization", &auth);
    let creds = Credentials::parse(&auth)
        .unwrap_or_else(|e| panic!("our Authorization does not parse ({e}): {auth:?}"));
    assert_eq!(creds.username, "1001");
    let cur = cl.current().expect("challenge kept");
    assert_eq!(creds.realm, strip_crlf(&cur.realm));
    assert_eq!(creds.nonce, strip_crlf(&cur.nonce));
    // A second request reuses the nonce with the next nc.
    if let Some(second) = cl.authorization("INVITE", "sip:0301234@provider.example", b"v=0\r\n") {
        no_crlf("Authorization", &second);
    }
    // A re-challenge (stale or not) must never panic either.
    black_box(cl.on_challenge(values).is_ok());
}

fn server(data: &[u8]) {
    let now = Instant::now();
    let mut srv = DigestServer::new(ServerConfig::new("podpbx", vec![7u8; 32]), now);
    let nonce = srv.new_nonce(now);
    let secret = podpbx_sip::digest::Key::Password("secret-pw".into());
    for v in [data] {
        let Ok(c) = Credentials::parse(v) else {
            continue;
        };
        for s in [Some(&secret), None] {
            let out = srv.verify(now, &c, "REGISTER", b"", s);
            // The fuzzer cannot know the password's hash for a nonce minted now: anything it
            // builds must be refused (an Ok would mean verify accepts a wrong response).
            if c.nonce == nonce {
                assert!(
                    !matches!(out, VerifyOutcome::Ok { .. }),
                    "forged credentials accepted: {c:?}"
                );
            }
            black_box(out);
        }
    }
    black_box(srv.challenge_values(now, true));
    srv.purge(now);
}
