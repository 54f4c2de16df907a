//! Digest authentication: RFC worked examples, own vectors (made with an independent MD5/SHA-256
//! implementation), server verification outcomes, client behaviour, malformed input.
//! Wrapped in `mod digest` so `cargo test -p podpbx-sip digest` selects every test here.

mod digest {
    use podpbx_sip::digest::*;
    use std::time::{Duration, Instant};

    const RFC2617_CHALLENGE: &str = "Digest\r\n                 realm=\"testrealm@host.com\",\r\n                 qop=\"auth,auth-int\",\r\n                 nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\r\n                 opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";

    const RFC2617_CREDENTIALS: &str = "Digest username=\"Mufasa\",\r\n                 realm=\"testrealm@host.com\",\r\n                 nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\r\n                 uri=\"/dir/index.html\",\r\n                 qop=auth,\r\n                 nc=00000001,\r\n                 cnonce=\"0a4f113b\",\r\n                 response=\"6629fae49393a05397450978507c4ef1\",\r\n                 opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";

    #[test]
    fn rfc2617_example_parses_and_computes() {
        let ch = Challenge::parse(RFC2617_CHALLENGE).expect("challenge");
        assert_eq!(ch.realm, "testrealm@host.com");
        assert_eq!(ch.nonce, "dcd98b7102dd2f0e8b11d0f600bfb0c093");
        assert_eq!(
            ch.opaque.as_deref(),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
        assert_eq!(ch.qop, vec!["auth".to_string(), "auth-int".to_string()]);
        assert_eq!(ch.algorithm(), Some(Algorithm::Md5));
        assert!(!ch.stale);

        let cr = Credentials::parse(RFC2617_CREDENTIALS).expect("credentials");
        assert_eq!(cr.username, "Mufasa");
        assert_eq!(cr.uri, "/dir/index.html");
        assert_eq!(cr.nc_value(), Some(1));
        assert_eq!(cr.cnonce.as_deref(), Some("0a4f113b"));

        let h1 = ha1(
            HashAlg::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let q = QopInput {
            qop: Qop::Auth,
            nc: "00000001",
            cnonce: "0a4f113b",
        };
        let r = compute_response(
            Algorithm::Md5,
            &h1,
            &cr.nonce,
            Some(q),
            "GET",
            "/dir/index.html",
            b"",
        );
        assert_eq!(r.as_deref(), Some("6629fae49393a05397450978507c4ef1"));
        assert_eq!(cr.response, "6629fae49393a05397450978507c4ef1");
    }

    const RFC7616_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC7616_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    #[test]
    fn rfc7616_md5_example() {
        let h1 = ha1(
            HashAlg::Md5,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let q = QopInput {
            qop: Qop::Auth,
            nc: "00000001",
            cnonce: RFC7616_CNONCE,
        };
        let r = compute_response(
            Algorithm::Md5,
            &h1,
            RFC7616_NONCE,
            Some(q),
            "GET",
            "/dir/index.html",
            b"",
        );
        assert_eq!(r.as_deref(), Some("8ca523f5e9506fed4657c9700eebdbec"));
    }

    #[test]
    fn rfc7616_sha256_example() {
        let ch = Challenge::parse(
        "Digest\r\n realm=\"http-auth@example.org\",\r\n qop=\"auth, auth-int\",\r\n algorithm=SHA-256,\r\n \
         nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
    )
    .expect("challenge");
        assert_eq!(ch.algorithm(), Some(Algorithm::Sha256));
        assert!(ch.offers(Qop::Auth) && ch.offers(Qop::AuthInt));
        let h1 = ha1(
            HashAlg::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let q = QopInput {
            qop: Qop::Auth,
            nc: "00000001",
            cnonce: RFC7616_CNONCE,
        };
        let r = compute_response(
            Algorithm::Sha256,
            &h1,
            RFC7616_NONCE,
            Some(q),
            "GET",
            "/dir/index.html",
            b"",
        );
        assert_eq!(
            r.as_deref(),
            Some("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")
        );
    }

    #[test]
    fn rfc2069_style_without_qop() {
        // RFC 2617 example inputs hashed without qop: H(HA1:nonce:HA2).
        let h1 = ha1(
            HashAlg::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let r = compute_response(
            Algorithm::Md5,
            &h1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            None,
            "GET",
            "/dir/index.html",
            b"",
        );
        assert_eq!(r.as_deref(), Some("670fd8c2df070c60b045671b8b24ff02"));
        let h1 = ha1(HashAlg::Md5, "doorbell", "pbx.example", "s3cr3t");
        let r = compute_response(
            Algorithm::Md5,
            &h1,
            "abc123",
            None,
            "REGISTER",
            "sip:pbx.example",
            b"",
        );
        assert_eq!(r.as_deref(), Some("3e2a853f9853f320ac5029b54d1d028c"));
    }

    #[test]
    fn sess_and_auth_int_vectors() {
        let q = QopInput {
            qop: Qop::Auth,
            nc: "0000000a",
            cnonce: "cn0ce",
        };
        let b = ha1(HashAlg::Md5, "alice", "pbx.example", "pw");
        let r = compute_response(
            Algorithm::Md5Sess,
            &b,
            "nonceX",
            Some(q),
            "REGISTER",
            "sip:pbx.example",
            b"",
        );
        assert_eq!(r.as_deref(), Some("a6f2c0387589964f3fc65a0b29026b1e"));
        let b = ha1(HashAlg::Sha256, "alice", "pbx.example", "pw");
        let r = compute_response(
            Algorithm::Sha256Sess,
            &b,
            "nonceX",
            Some(q),
            "REGISTER",
            "sip:pbx.example",
            b"",
        );
        assert_eq!(
            r.as_deref(),
            Some("770b4b5117528028b6db6975d51b8282510292a61300e26b0c74addc5c2c9913")
        );
        // -sess needs a cnonce, hence qop.
        assert_eq!(
            compute_response(Algorithm::Md5Sess, &b, "n", None, "REGISTER", "sip:x", b""),
            None
        );
        let b = ha1(HashAlg::Md5, "alice", "pbx.example", "pw");
        let q = QopInput {
            qop: Qop::AuthInt,
            nc: "00000001",
            cnonce: "cn",
        };
        let r = compute_response(
            Algorithm::Md5,
            &b,
            "nonceY",
            Some(q),
            "MESSAGE",
            "sip:bob@pbx.example",
            b"hello",
        );
        assert_eq!(r.as_deref(), Some("c48c10f4d373a56acebe6ef2fbede117"));
    }

    #[test]
    fn nc_is_hexadecimal() {
        assert_eq!(parse_nc("00000001"), Some(1));
        assert_eq!(parse_nc("0000000a"), Some(10));
        assert_eq!(parse_nc("0000000A"), Some(10));
        assert_eq!(parse_nc("00000010"), Some(16));
        assert_eq!(parse_nc("ffffffff"), Some(u32::MAX));
        assert_eq!(parse_nc("1"), Some(1));
        assert_eq!(parse_nc(""), None);
        assert_eq!(parse_nc("000000001"), None);
        assert_eq!(parse_nc("0000000g"), None);
        assert_eq!(parse_nc("+0000001"), None);
    }

    #[test]
    fn param_names_case_insensitive_unknown_ignored_escapes() {
        let c = Credentials::parse(
            "digest USERNAME=\"a\\\"b\\\\c\", Realm=\"r\", NONCE=n1, Uri=\"sip:x\", Response=\"ABCDEF\", \
         foo=\"bar, baz\", ALGORITHM=md5, x-extension=token",
        )
        .expect("parse");
        assert_eq!(c.username, "a\"b\\c");
        assert_eq!(c.realm, "r");
        assert_eq!(c.nonce, "n1");
        assert_eq!(c.algorithm(), Some(Algorithm::Md5));
        // Formatting escapes again and parses back to the same value.
        let text = c.to_header_value();
        let again = Credentials::parse(&text).expect("roundtrip");
        assert_eq!(again, c);
    }

    #[test]
    fn challenge_format_roundtrip() {
        let ch = Challenge {
            realm: "pbx \"x\"".into(),
            nonce: "abc".into(),
            opaque: Some("o".into()),
            domain: None,
            stale: true,
            algorithm: Some("SHA-256".into()),
            qop: vec!["auth".into()],
            userhash: false,
        };
        let v = ch.to_header_value();
        assert!(v.starts_with("Digest realm=\"pbx \\\"x\\\"\""), "{v}");
        assert!(v.contains("stale=true"));
        assert_eq!(Challenge::parse(&v).expect("parse"), ch);
    }

    #[test]
    fn non_digest_scheme_is_reported() {
        // RFC 4475 regaut01.
        assert_eq!(
            Credentials::parse("NoOneKnowsThisScheme opaque-data=here"),
            Err(DigestParseError::NotDigest("NoOneKnowsThisScheme".into()))
        );
        assert!(matches!(
            Credentials::parse("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Err(DigestParseError::NotDigest(_))
        ));
        // "Digestive" is not "Digest".
        assert!(matches!(
            Challenge::parse("Digestive realm=\"x\", nonce=\"y\""),
            Err(DigestParseError::NotDigest(_))
        ));
    }

    #[test]
    fn malformed_inputs() {
        let bad: &[&[u8]] = &[
        b"",
        b"   ",
        b"Digest",
        b"Digest ",
        b"Digest realm",
        b"Digest realm=",
        b"Digest realm=\"unterminated",
        b"Digest realm=\"x\" nonce=\"y\"",
        b"Digest =\"x\"",
        b"Digest realm=\"a\\",
        b"Digest username=\"a\", username=\"b\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\"",
        // qop without cnonce / nc
        b"Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth, nc=00000001",
        b"Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth, cnonce=\"c\"",
        b"Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth, cnonce=\"c\", nc=xyz",
        b"Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth, cnonce=\"c\", nc=123456789",
        // missing required
        b"Digest realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\"",
        b"Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\"",
        // not UTF-8
        b"Digest username=\"\xff\xfe\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\"",
    ];
        for b in bad {
            assert!(
                matches!(Credentials::parse(b), Err(DigestParseError::Malformed(_))),
                "should be malformed: {:?}",
                String::from_utf8_lossy(b)
            );
        }
        assert!(matches!(
            Challenge::parse("Digest nonce=\"n\""),
            Err(DigestParseError::Malformed(_))
        ));
        assert!(matches!(
            Challenge::parse("Digest realm=\"r\""),
            Err(DigestParseError::Malformed(_))
        ));
    }

    #[test]
    fn parser_never_panics_on_garbage() {
        // Deterministic pseudo-random bytes biased towards the syntax characters.
        let alphabet = b"Digest =\",\\ \r\n\tabcnonce";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 48) as usize;
            let mut v = b"Digest ".to_vec();
            let mut y = x;
            for _ in 0..len {
                y = y
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let b = if y >> 60 == 0 {
                    (y >> 32) as u8
                } else {
                    alphabet[((y >> 33) % alphabet.len() as u64) as usize]
                };
                v.push(b);
            }
            let _ = Credentials::parse(&v);
            let _ = Challenge::parse(&v);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Server
    // ------------------------------------------------------------------------------------------

    const REALM: &str = "pbx.example";

    fn server(now: Instant) -> DigestServer {
        let mut cfg = ServerConfig::new(REALM, b"0123456789abcdef0123456789abcdef".to_vec());
        cfg.nonce_ttl = Duration::from_secs(60);
        cfg.algorithms = vec![Algorithm::Sha256, Algorithm::Md5, Algorithm::Md5Sess];
        DigestServer::new(cfg, now)
    }

    fn pw(p: &str) -> Key {
        Key::Password(p.into())
    }

    /// Builds credentials the way a client would.
    fn creds(
        user: &str,
        pass: &str,
        nonce: &str,
        alg: Algorithm,
        qop: Option<(&str, &str)>,
    ) -> Credentials<'static> {
        let uri = "sip:pbx.example";
        let h1 = ha1(alg.hash(), user, REALM, pass);
        let q = qop.map(|(nc, cnonce)| QopInput {
            qop: Qop::Auth,
            nc,
            cnonce,
        });
        let response =
            compute_response(alg, &h1, nonce, q, "REGISTER", uri, b"").expect("response");
        Credentials {
            username: user.to_string().into(),
            realm: REALM.into(),
            nonce: nonce.to_string().into(),
            uri: uri.into(),
            response: response.into(),
            algorithm: Some(alg.as_str().into()),
            cnonce: qop.map(|(_, c)| c.to_string().into()),
            qop: qop.map(|_| "auth".into()),
            nc: qop.map(|(nc, _)| nc.to_string().into()),
            ..Default::default()
        }
    }

    #[test]
    fn server_challenges_one_per_algorithm() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let ch = s.challenges(t0, false);
        assert_eq!(ch.len(), 3);
        assert_eq!(ch[0].algorithm(), Some(Algorithm::Sha256));
        assert!(ch
            .iter()
            .all(|c| c.nonce == ch[0].nonce && c.realm == REALM && c.offers(Qop::Auth)));
        let v = s.challenge_values(t0, true);
        assert!(
            v[0].contains("stale=true")
                && v[0].contains("algorithm=SHA-256")
                && v[0].contains("qop=\"auth\"")
        );
        // Fresh nonce each time.
        assert_ne!(Challenge::parse(&v[0]).expect("parse").nonce, ch[0].nonce);
    }

    /// A prepared key (its MD5 HA1 made once for one user and realm) verifies exactly what its
    /// password does, for every algorithm, and never lends its HA1 to another name or realm.
    #[test]
    fn a_prepared_key_verifies_what_its_password_does() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let mut check = |key: &Key, user: &str, pass: &str, alg: Algorithm| {
            let n = s.new_nonce(t0);
            let c = creds(user, pass, &n, alg, Some(("00000001", "c1")));
            s.verify(t0, &c, "REGISTER", b"", Some(key))
        };
        let prepared = pw("secret").prepared("alice", REALM);
        assert!(matches!(prepared, Key::Prepared { .. }));
        assert_eq!(format!("{prepared:?}"), "Key::Prepared(..)");
        assert_eq!(prepared.password(), Some("secret"));
        for alg in [Algorithm::Md5, Algorithm::Sha256, Algorithm::Md5Sess] {
            for (user, pass, ok) in [
                ("alice", "secret", true),
                ("alice", "wrong", false),
                // The HA1 was made for alice: bob's answer with alice's password must be checked
                // against H(bob:realm:secret), which it matches, not against alice's HA1.
                ("bob", "secret", true),
            ] {
                let with_prepared = check(&prepared, user, pass, alg);
                let with_password = check(&pw("secret"), user, pass, alg);
                assert_eq!(with_prepared, with_password, "{alg:?} {user} {pass}");
                assert_eq!(
                    matches!(with_prepared, VerifyOutcome::Ok { .. }),
                    ok,
                    "{alg:?} {user} {pass}: {with_prepared:?}"
                );
            }
        }
        // Made for another realm, or for a user whose name is a prefix of this one: the stored
        // HA1 would be wrong here, so the password is used.
        for key in [
            pw("secret").prepared("alice", "other.example"),
            pw("secret").prepared("ali", REALM),
        ] {
            let got = check(&key, "alice", "secret", Algorithm::Md5);
            assert!(matches!(got, VerifyOutcome::Ok { .. }), "{got:?}");
        }
    }

    #[test]
    fn server_verifies_md5_sha256_sess_and_2069() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let sec = pw("secret");
        for (alg, qop) in [
            (Algorithm::Md5, Some(("00000001", "c1"))),
            (Algorithm::Sha256, Some(("00000001", "c1"))),
            (Algorithm::Md5Sess, Some(("00000001", "c1"))),
            (Algorithm::Md5, None),
        ] {
            let n = s.new_nonce(t0);
            let c = creds("alice", "secret", &n, alg, qop);
            assert_eq!(
                s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
                VerifyOutcome::Ok {
                    username: "alice".into()
                },
                "{alg:?}"
            );
        }
        // Upper-case hex response accepted.
        let n = s.new_nonce(t0);
        let mut c = creds(
            "alice",
            "secret",
            &n,
            Algorithm::Md5,
            Some(("00000001", "c")),
        );
        c.response = c.response.to_ascii_uppercase().into();
        assert!(matches!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
        // Precomputed HA1.
        let n = s.new_nonce(t0);
        let c = creds(
            "alice",
            "secret",
            &n,
            Algorithm::Md5,
            Some(("00000001", "c")),
        );
        let stored = Key::Ha1 {
            hash: HashAlg::Md5,
            hex: ha1(HashAlg::Md5, "alice", REALM, "secret"),
        };
        assert!(matches!(
            s.verify(t0, &c, "REGISTER", b"", Some(&stored)),
            VerifyOutcome::Ok { .. }
        ));
        // ...which cannot verify SHA-256.
        let n = s.new_nonce(t0);
        let c = creds(
            "alice",
            "secret",
            &n,
            Algorithm::Sha256,
            Some(("00000001", "c")),
        );
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", Some(&stored)),
            VerifyOutcome::BadResponse
        );
    }

    #[test]
    fn server_wrong_password_unknown_user_wrong_realm_method_uri() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let sec = pw("secret");
        let n = s.new_nonce(t0);
        let c = creds(
            "alice",
            "guess",
            &n,
            Algorithm::Md5,
            Some(("00000001", "c")),
        );
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::BadResponse
        );
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", None),
            VerifyOutcome::UnknownUser
        );
        let good = creds(
            "alice",
            "secret",
            &n,
            Algorithm::Md5,
            Some(("00000002", "c")),
        );
        // Hashed for REGISTER, presented with INVITE.
        assert_eq!(
            s.verify(t0, &good, "INVITE", b"", Some(&sec)),
            VerifyOutcome::BadResponse
        );
        // digest-uri changed after hashing.
        let mut moved = good.clone();
        moved.uri = "sip:other.example".into();
        assert_eq!(
            s.verify(t0, &moved, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::BadResponse
        );
        let mut other_realm = good.clone();
        other_realm.realm = "elsewhere".into();
        assert_eq!(
            s.verify(t0, &other_realm, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::WrongRealm
        );
        assert!(matches!(
            s.verify(t0, &good, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
    }

    #[test]
    fn server_stale_after_ttl_and_foreign_nonce() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let sec = pw("secret");
        let n = s.new_nonce(t0);
        let c = creds(
            "alice",
            "secret",
            &n,
            Algorithm::Md5,
            Some(("00000001", "c")),
        );
        assert_eq!(
            s.verify(
                t0 + Duration::from_secs(61),
                &c,
                "REGISTER",
                b"",
                Some(&sec)
            ),
            VerifyOutcome::Stale
        );
        // Within the TTL it is fine.
        assert!(matches!(
            s.verify(
                t0 + Duration::from_secs(59),
                &c,
                "REGISTER",
                b"",
                Some(&sec)
            ),
            VerifyOutcome::Ok { .. }
        ));
        // A nonce we never issued (or from before a restart, another key) with a right response.
        let c = creds(
            "alice",
            "secret",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Algorithm::Md5,
            Some(("00000001", "c")),
        );
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Stale
        );
        let mut other = server(t0);
        let n = other.new_nonce(t0);
        let mut tampered = n.clone();
        tampered.replace_range(0..1, if n.starts_with('0') { "1" } else { "0" });
        let c = creds(
            "alice",
            "secret",
            &tampered,
            Algorithm::Md5,
            Some(("00000001", "c")),
        );
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Stale
        );
        // Expired nonce with a wrong password is a bad response, not stale.
        let n = s.new_nonce(t0);
        let c = creds("alice", "nope", &n, Algorithm::Md5, Some(("00000001", "c")));
        assert_eq!(
            s.verify(
                t0 + Duration::from_secs(120),
                &c,
                "REGISTER",
                b"",
                Some(&sec)
            ),
            VerifyOutcome::BadResponse
        );
    }

    #[test]
    fn server_nc_replay() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let sec = pw("secret");
        let n = s.new_nonce(t0);
        let c1 = creds(
            "alice",
            "secret",
            &n,
            Algorithm::Md5,
            Some(("00000001", "c")),
        );
        assert!(matches!(
            s.verify(t0, &c1, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
        // Same nonce+nc again (Dahua/Hikvision style refresh, or a replay).
        assert_eq!(
            s.verify(t0, &c1, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Replay
        );
        // nc 0x0a > 1: accepted; then 0x09 is a replay, 0x10 accepted (hex, 16 > 10).
        let c10 = creds(
            "alice",
            "secret",
            &n,
            Algorithm::Md5,
            Some(("0000000a", "c")),
        );
        assert!(matches!(
            s.verify(t0, &c10, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
        let c9 = creds(
            "alice",
            "secret",
            &n,
            Algorithm::Md5,
            Some(("00000009", "c")),
        );
        assert_eq!(
            s.verify(t0, &c9, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Replay
        );
        let c16 = creds(
            "alice",
            "secret",
            &n,
            Algorithm::Md5,
            Some(("00000010", "c")),
        );
        assert!(matches!(
            s.verify(t0, &c16, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
        // RFC 2069 nonces are single use.
        let n = s.new_nonce(t0);
        let c = creds("doorbell", "secret", &n, Algorithm::Md5, None);
        assert!(matches!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Replay
        );
        // A replay with a wrong response is just a bad response.
        let mut bad = c1.clone();
        bad.response = "00000000000000000000000000000000".into();
        assert_eq!(
            s.verify(t0, &bad, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::BadResponse
        );
    }

    #[test]
    fn server_nc_table_is_bounded_and_evicted_nonces_go_stale() {
        let t0 = Instant::now();
        let mut cfg = ServerConfig::new(REALM, b"k".to_vec());
        cfg.max_tracked_nonces = 8;
        let mut s = DigestServer::new(cfg, t0);
        let sec = pw("pw");
        let first = s.new_nonce(t0);
        let c = creds("u", "pw", &first, Algorithm::Md5, Some(("00000001", "c")));
        assert!(matches!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
        for _ in 0..100 {
            let n = s.new_nonce(t0);
            let c = creds("u", "pw", &n, Algorithm::Md5, Some(("00000001", "c")));
            assert!(matches!(
                s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
                VerifyOutcome::Ok { .. }
            ));
            assert!(s.tracked_nonces() <= 8);
        }
        // The first nonce's nc state was evicted: it cannot be replay-checked, so it is stale.
        let c = creds("u", "pw", &first, Algorithm::Md5, Some(("00000001", "c")));
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Stale
        );
    }

    #[test]
    fn server_rejects_unoffered_or_unsupported() {
        let t0 = Instant::now();
        let mut cfg = ServerConfig::new(REALM, b"k".to_vec());
        cfg.allow_no_qop = false;
        let mut s = DigestServer::new(cfg, t0); // MD5 only
        let sec = pw("pw");
        let n = s.new_nonce(t0);
        let c = creds("u", "pw", &n, Algorithm::Sha256, Some(("00000001", "c")));
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Malformed
        );
        let c = creds("u", "pw", &n, Algorithm::Md5, None);
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Malformed
        );
        let mut c = creds("u", "pw", &n, Algorithm::Md5, Some(("00000001", "c")));
        c.algorithm = Some("SHA-512-256".into());
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Malformed
        );
        let mut c = creds("u", "pw", &n, Algorithm::Md5, Some(("00000001", "c")));
        c.qop = Some("auth-conf".into());
        assert_eq!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Malformed
        );
        // Absent algorithm means MD5.
        let mut c = creds("u", "pw", &n, Algorithm::Md5, Some(("00000001", "c")));
        c.algorithm = None;
        assert!(matches!(
            s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
    }

    #[test]
    fn server_garbage_nonces_do_not_panic() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let sec = pw("secret");
        for nonce in [
            "",
            "x",
            "ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé",
            &"f".repeat(64),
            &"0".repeat(64),
        ] {
            let c = creds(
                "alice",
                "secret",
                nonce,
                Algorithm::Md5,
                Some(("00000001", "c")),
            );
            assert_eq!(
                s.verify(t0, &c, "REGISTER", b"", Some(&sec)),
                VerifyOutcome::Stale,
                "{nonce}"
            );
        }
    }

    // ------------------------------------------------------------------------------------------
    // Client
    // ------------------------------------------------------------------------------------------

    #[test]
    fn client_answers_server_with_qop_and_increments_nc() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let sec = pw("secret");
        let mut cl = DigestClient::new("alice", "secret", b"seed".to_vec());
        assert_eq!(cl.authorization("REGISTER", "sip:pbx.example", b""), None);
        let values = s.challenge_values(t0, false);
        cl.on_challenge(&values).expect("usable");
        assert_eq!(
            cl.current().and_then(Challenge::algorithm),
            Some(Algorithm::Sha256)
        );
        let a1 = cl
            .authorization("REGISTER", "sip:pbx.example", b"")
            .expect("auth");
        let c1 = Credentials::parse(&a1).expect("parse");
        assert_eq!(c1.nc.as_deref(), Some("00000001"));
        assert_eq!(c1.algorithm(), Some(Algorithm::Sha256));
        assert!(matches!(
            s.verify(t0, &c1, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
        cl.on_success();
        let a2 = cl
            .authorization("REGISTER", "sip:pbx.example", b"")
            .expect("auth");
        let c2 = Credentials::parse(&a2).expect("parse");
        assert_eq!(c2.nc.as_deref(), Some("00000002"));
        assert_ne!(c1.cnonce, c2.cnonce);
        assert!(matches!(
            s.verify(t0, &c2, "REGISTER", b"", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
    }

    #[test]
    fn client_rfc2069_and_md5_only_secret() {
        let mut cl = DigestClient::with_secret(
            "doorbell",
            Key::Ha1 {
                hash: HashAlg::Md5,
                hex: ha1(HashAlg::Md5, "doorbell", "pbx.example", "s3cr3t"),
            },
            b"x".to_vec(),
        );
        // SHA-256 offered first, but the stored HA1 is MD5: the MD5 challenge is used.
        cl.on_challenge(&[
            "Digest realm=\"pbx.example\", nonce=\"abc123\", algorithm=SHA-256",
            "Digest realm=\"pbx.example\", nonce=\"abc123\"",
        ])
        .expect("usable");
        let v = cl
            .authorization("REGISTER", "sip:pbx.example", b"")
            .expect("auth");
        let c = Credentials::parse(&v).expect("parse");
        assert_eq!(c.qop, None);
        assert_eq!(c.nc, None);
        assert_eq!(c.cnonce, None);
        assert_eq!(c.response, "3e2a853f9853f320ac5029b54d1d028c");
    }

    #[test]
    fn client_follows_stale_and_gives_up_on_rejection() {
        let mut cl = DigestClient::new("alice", "pw", b"s".to_vec());
        assert_eq!(
            cl.on_challenge(&["Basic realm=\"x\""]),
            Err(ClientError::NoUsableChallenge)
        );
        assert_eq!(
            cl.on_challenge(&["Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256"]),
            Err(ClientError::NoUsableChallenge)
        );
        cl.on_challenge(&["Digest realm=\"r\", nonce=\"n1\", qop=\"auth\""])
            .expect("first");
        let _ = cl.authorization("REGISTER", "sip:r", b"");
        // Stale: follow the new nonce, nc restarts.
        cl.on_challenge(&["Digest realm=\"r\", nonce=\"n2\", qop=\"auth\", stale=true"])
            .expect("stale");
        let a = cl.authorization("REGISTER", "sip:r", b"").expect("auth");
        let c = Credentials::parse(&a).expect("parse");
        assert_eq!((&*c.nonce, c.nc.as_deref()), ("n2", Some("00000001")));
        // Same nonce, not stale, after answering: rejected.
        assert_eq!(
            cl.on_challenge(&["Digest realm=\"r\", nonce=\"n2\", qop=\"auth\""]),
            Err(ClientError::Rejected)
        );

        // A server rotating nonces without stale: one retry, then rejected.
        let mut cl = DigestClient::new("alice", "pw", b"s".to_vec());
        cl.on_challenge(&["Digest realm=\"r\", nonce=\"a\""])
            .expect("first");
        let _ = cl.authorization("REGISTER", "sip:r", b"");
        cl.on_challenge(&["Digest realm=\"r\", nonce=\"b\""])
            .expect("retry");
        let _ = cl.authorization("REGISTER", "sip:r", b"");
        assert_eq!(
            cl.on_challenge(&["Digest realm=\"r\", nonce=\"c\""]),
            Err(ClientError::Rejected)
        );
    }

    #[test]
    fn client_uses_auth_int_when_only_option() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let nonce = s.new_nonce(t0);
        let mut cl = DigestClient::new("alice", "secret", b"s".to_vec());
        let ch = format!(
            "Digest realm=\"pbx.example\", nonce=\"{nonce}\", qop=\"auth-int\", algorithm=MD5"
        );
        cl.on_challenge(&[ch]).expect("usable");
        let a = cl
            .authorization("MESSAGE", "sip:bob@pbx.example", b"hi")
            .expect("auth");
        let c = Credentials::parse(&a).expect("parse");
        assert_eq!(c.qop.as_deref(), Some("auth-int"));
        let sec = pw("secret");
        assert!(matches!(
            s.verify(t0, &c, "MESSAGE", b"hi", Some(&sec)),
            VerifyOutcome::Ok { .. }
        ));
        assert_eq!(
            s.verify(t0, &c, "MESSAGE", b"tampered", Some(&sec)),
            VerifyOutcome::BadResponse
        );
    }

    #[test]
    fn auth_kind_names() {
        assert_eq!(AuthKind::Www.status(), 401);
        assert_eq!(AuthKind::Proxy.status(), 407);
        assert_eq!(AuthKind::Www.challenge_header(), "WWW-Authenticate");
        assert_eq!(AuthKind::Proxy.credentials_header(), "Proxy-Authorization");
        assert_eq!(AuthKind::from_status(407), Some(AuthKind::Proxy));
        assert_eq!(AuthKind::from_status(403), None);
    }
}
