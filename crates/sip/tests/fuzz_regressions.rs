//! Inputs found by the fuzz targets in `fuzz/` (see fuzz/README.md), kept as regression tests.
//! Each test names the target and the property that failed.

use podpbx_sip::digest::{Challenge, Credentials};

/// fuzz target `digest`: a challenge whose unquoted-on-output `algorithm` arrived as a quoted
/// string full of CRs was formatted back with the raw CRs, i.e. a header value podpbx writes
/// could carry CR/LF (header injection into a message built from a peer's challenge). The
/// quoted fields already dropped CR/LF; the token fields (`algorithm`, and `qop`/`nc` of
/// credentials) now do too.
#[test]
fn digest_token_fields_never_format_cr_or_lf() {
    let mut input = b"Digest realm=\"r\", nonce=\"n\", algorithm=\"".to_vec();
    input.extend(std::iter::repeat_n(b'\r', 131));
    input.extend_from_slice(b"auth    `    \"");
    let c = Challenge::parse(&input).expect("parses: CRs are allowed inside a quoted string");
    let out = c.to_header_value();
    assert!(!out.contains('\r') && !out.contains('\n'), "{out:?}");

    let header = "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:a\", response=\"x\", \
                  algorithm=\"MD5\r\nX-Injected: 1\", qop=\"auth\r\nX: 2\", nc=\"00000001\", cnonce=\"c\"";
    // qop with CR/LF is not a valid qop: parse succeeds only where the value is accepted.
    if let Ok(c) = Credentials::parse(header) {
        let out = c.to_header_value();
        assert!(!out.contains('\r') && !out.contains('\n'), "{out:?}");
    }
    let c = Credentials {
        username: "u".into(),
        realm: "r".into(),
        nonce: "n".into(),
        uri: "sip:a".into(),
        response: "x".into(),
        algorithm: Some("MD5\r\nX-Injected: 1".into()),
        qop: Some("auth\r\nX: 2".into()),
        nc: Some("00000001\n".into()),
        ..Credentials::default()
    };
    let out = c.to_header_value();
    assert!(!out.contains('\r') && !out.contains('\n'), "{out:?}");
}
