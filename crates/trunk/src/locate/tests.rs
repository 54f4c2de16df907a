//! The RFC 3263 locator in virtual time: every query is answered (or not) by the test.

use super::*;

const SEED: [u8; 16] = [7; 16];

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn naptr(order: u16, pref: u16, service: &str, rep: &str, ttl: u32) -> Record {
    Record {
        ttl,
        data: RData::Naptr(Naptr {
            order,
            preference: pref,
            flags: "S".into(),
            services: service.into(),
            replacement: rep.into(),
        }),
    }
}

fn srv(priority: u16, weight: u16, port: u16, target: &str, ttl: u32) -> Record {
    Record {
        ttl,
        data: RData::Srv(Srv {
            priority,
            weight,
            port,
            target: target.into(),
        }),
    }
}

fn aaaa(ip: &str, ttl: u32) -> Record {
    Record {
        ttl,
        data: RData::Aaaa(ip.parse().unwrap()),
    }
}

fn a(ip: &str, ttl: u32) -> Record {
    Record {
        ttl,
        data: RData::A(ip.parse().unwrap()),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn locator(port: Option<u16>, transport: Transport, ipv4: bool) -> Locator {
    Locator::new(LocatorConfig::new(
        "Provider.Test.",
        port,
        transport,
        ipv4,
        SEED,
    ))
}

/// Starts `l` (for `provider.test`, UDP), answers "no NAPTR" and returns the SRV query's id.
fn srv_query(l: &mut Locator, t0: Instant) -> u64 {
    l.start(t0);
    let id = expect(l, "provider.test", RecordType::Naptr);
    l.handle_answer(t0, id, Err(LookupError::NotFound));
    expect(l, "_sip._udp.provider.test", RecordType::Srv)
}

/// Takes the one pending query and checks what it asks.
fn expect(l: &mut Locator, name: &str, rtype: RecordType) -> u64 {
    let q = l.poll_query().expect("a query");
    assert_eq!((q.name.as_str(), q.rtype), (name, rtype), "query");
    q.id
}

#[test]
fn explicit_port_asks_only_the_address_records_of_the_family() {
    let t0 = Instant::now();
    let mut l = locator(Some(5080), Transport::Udp, false);
    assert_eq!(l.poll_query(), None, "nothing before start");
    l.start(t0);
    let id = expect(&mut l, "provider.test", RecordType::Aaaa);
    assert_eq!(l.poll_query(), None);
    assert_eq!(l.status().state, "resolving");
    l.handle_answer(
        t0,
        id,
        Ok(vec![
            a("203.0.113.9", 60),
            aaaa("2001:db8::9", 300),
            aaaa("2001:db8::8", 120),
        ]),
    );
    assert_eq!(
        l.targets(),
        [addr("[2001:db8::9]:5080"), addr("[2001:db8::8]:5080")]
    );
    assert_eq!(l.status().state, "resolved");
    // The smallest TTL of the records used (the A record was not used).
    assert_eq!(l.status().expires_at, Some(t0 + s(120)));

    let mut l4 = locator(Some(5060), Transport::Udp, true);
    l4.start(t0);
    let id = expect(&mut l4, "provider.test", RecordType::A);
    l4.handle_answer(
        t0,
        id,
        Ok(vec![aaaa("2001:db8::9", 60), a("203.0.113.9", 60)]),
    );
    assert_eq!(l4.targets(), [addr("203.0.113.9:5060")]);
}

#[test]
fn naptr_srv_and_addresses_in_rfc3263_order() {
    let t0 = Instant::now();
    let mut l = locator(None, Transport::Udp, false);
    l.start(t0);
    let id = expect(&mut l, "provider.test", RecordType::Naptr);
    l.handle_answer(
        t0,
        id,
        Ok(vec![
            naptr(10, 50, "SIP+D2T", "_sip._tcp.provider.test.", 600),
            naptr(20, 10, "SIP+D2U", "_sip._udp.second.test.", 600),
            naptr(10, 60, "SIP+D2U", "_sip._udp.provider.test.", 600),
        ]),
    );
    // The UDP record with the lowest order wins; the TCP one is not ours.
    let id = expect(&mut l, "_sip._udp.provider.test", RecordType::Srv);
    l.handle_answer(
        t0,
        id,
        Ok(vec![
            srv(20, 10, 5060, "backup.provider.test.", 300),
            srv(10, 10, 5070, "main.provider.test.", 300),
        ]),
    );
    let q1 = expect(&mut l, "main.provider.test", RecordType::Aaaa);
    let q2 = expect(&mut l, "backup.provider.test", RecordType::Aaaa);
    assert_eq!(l.poll_query(), None);
    // Answers may come in any order; the list keeps SRV priority order.
    l.handle_answer(t0, q2, Ok(vec![aaaa("2001:db8::2", 30)]));
    assert!(
        l.targets().is_empty(),
        "not done before every target answered"
    );
    l.handle_answer(t0, q1, Ok(vec![aaaa("2001:db8::1", 3600)]));
    assert_eq!(
        l.targets(),
        [addr("[2001:db8::1]:5070"), addr("[2001:db8::2]:5060")]
    );
    assert_eq!(l.status().expires_at, Some(t0 + s(30)));
}

#[test]
fn tcp_trunk_uses_d2t_and_tcp_srv_name() {
    let t0 = Instant::now();
    let mut l = locator(None, Transport::Tcp, false);
    l.start(t0);
    let id = expect(&mut l, "provider.test", RecordType::Naptr);
    l.handle_answer(
        t0,
        id,
        Ok(vec![naptr(
            10,
            10,
            "SIP+D2U",
            "_sip._udp.provider.test",
            60,
        )]),
    );
    // Only a UDP NAPTR: fall back to the TCP SRV name.
    expect(&mut l, "_sip._tcp.provider.test", RecordType::Srv);
}

#[test]
fn tls_trunk_uses_sips_d2t_and_falls_back_to_5061() {
    let t0 = Instant::now();
    let mut l = locator(None, Transport::Tls, false);
    l.start(t0);
    let id = expect(&mut l, "provider.test", RecordType::Naptr);
    l.handle_answer(
        t0,
        id,
        Ok(vec![
            naptr(10, 10, "SIP+D2T", "_sip._tcp.provider.test", 60),
            naptr(20, 10, "SIPS+D2T", "_sips._tcp.provider.test", 60),
        ]),
    );
    let id = expect(&mut l, "_sips._tcp.provider.test", RecordType::Srv);
    l.handle_answer(t0, id, Err(LookupError::NotFound));
    let id = expect(&mut l, "provider.test", RecordType::Aaaa);
    l.handle_answer(t0, id, Ok(vec![aaaa("2001:db8::5", 60)]));
    assert_eq!(l.targets(), [addr("[2001:db8::5]:5061")]);
}

#[test]
fn no_naptr_then_no_srv_falls_back_to_the_name_on_5060() {
    let t0 = Instant::now();
    let mut l = locator(None, Transport::Udp, false);
    let id = srv_query(&mut l, t0);
    l.handle_answer(t0, id, Err(LookupError::NotFound));
    let id = expect(&mut l, "provider.test", RecordType::Aaaa);
    l.handle_answer(t0, id, Ok(vec![aaaa("2001:db8::5", 60)]));
    assert_eq!(l.targets(), [addr("[2001:db8::5]:5060")]);
}

#[test]
fn a_failing_naptr_lookup_still_tries_srv() {
    let t0 = Instant::now();
    let mut l = locator(None, Transport::Udp, false);
    l.start(t0);
    let id = expect(&mut l, "provider.test", RecordType::Naptr);
    l.handle_answer(t0, id, Err(LookupError::Failed("SERVFAIL".into())));
    expect(&mut l, "_sip._udp.provider.test", RecordType::Srv);
}

#[test]
fn next_naptr_replacement_when_the_first_srv_name_is_empty() {
    let t0 = Instant::now();
    let mut l = locator(None, Transport::Udp, false);
    l.start(t0);
    let id = expect(&mut l, "provider.test", RecordType::Naptr);
    l.handle_answer(
        t0,
        id,
        Ok(vec![
            naptr(10, 10, "SIP+D2U", "_sip._udp.a.test", 60),
            naptr(10, 20, "SIP+D2U", "_sip._udp.b.test", 60),
        ]),
    );
    let id = expect(&mut l, "_sip._udp.a.test", RecordType::Srv);
    l.handle_answer(t0, id, Err(LookupError::NotFound));
    let id = expect(&mut l, "_sip._udp.b.test", RecordType::Srv);
    l.handle_answer(t0, id, Ok(vec![srv(1, 1, 5060, "b1.test", 60)]));
    expect(&mut l, "b1.test", RecordType::Aaaa);
}

#[test]
fn dot_target_means_not_offered() {
    let t0 = Instant::now();
    let mut l = locator(None, Transport::Udp, false);
    let id = srv_query(&mut l, t0);
    l.handle_answer(t0, id, Ok(vec![srv(0, 0, 0, ".", 60)]));
    assert_eq!(l.poll_query(), None, "no address lookup for `.`");
    let st = l.status();
    assert_eq!(st.state, "unresolved");
    assert!(st.last_error.unwrap().contains("not offered"));
}

#[test]
fn unresolvable_at_start_is_retried_with_backoff_until_it_resolves() {
    let t0 = Instant::now();
    let mut l = locator(Some(5060), Transport::Udp, false);
    l.start(t0);
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..8 {
        let id = expect(&mut l, "provider.test", RecordType::Aaaa);
        l.handle_answer(now, id, Err(LookupError::NotFound));
        let st = l.status();
        assert_eq!(st.state, "unresolved");
        assert!(st.targets.is_empty());
        assert!(st.last_error.as_deref().unwrap().contains("no AAAA record"));
        let next = l.poll_timeout().expect("a retry is scheduled");
        assert_eq!(st.next_attempt, Some(next));
        delays.push(next - now);
        // Nothing happens before the retry is due.
        l.handle_timeout(next - Duration::from_millis(1));
        assert_eq!(l.poll_query(), None);
        now = next;
        l.handle_timeout(now);
    }
    // 1, 2, 4, 8, 16, 32, 60, 60 s, each jittered into [0.75, 1.0] of its nominal value.
    let nominal = [1, 2, 4, 8, 16, 32, 60, 60];
    for (d, n) in delays.iter().zip(nominal) {
        let n = s(n);
        assert!(*d <= n && *d >= n.mul_f64(0.75), "{d:?} vs {n:?}");
    }
    assert_eq!(l.status().failures, 8);
    let id = expect(&mut l, "provider.test", RecordType::Aaaa);
    l.handle_answer(now, id, Ok(vec![aaaa("2001:db8::7", 60)]));
    let st = l.status();
    assert_eq!(st.state, "resolved");
    assert_eq!(st.failures, 0);
    assert_eq!(st.last_error, None);
    assert_eq!(st.resolutions, 9);
}

#[test]
fn ttl_expiry_re_resolves_and_a_failure_keeps_the_old_list_as_stale() {
    let t0 = Instant::now();
    let mut l = locator(Some(5060), Transport::Udp, false);
    l.start(t0);
    let id = expect(&mut l, "provider.test", RecordType::Aaaa);
    l.handle_answer(t0, id, Ok(vec![aaaa("2001:db8::1", 40)]));
    let g = l.generation();
    assert_eq!(l.poll_timeout(), Some(t0 + s(40)));
    l.handle_timeout(t0 + s(39));
    assert_eq!(l.poll_query(), None, "not before the TTL");
    let t1 = t0 + s(40);
    l.handle_timeout(t1);
    let id = expect(&mut l, "provider.test", RecordType::Aaaa);
    assert_eq!(
        l.targets(),
        [addr("[2001:db8::1]:5060")],
        "kept while resolving"
    );
    l.handle_answer(t1, id, Err(LookupError::Failed("SERVFAIL".into())));
    let st = l.status();
    assert_eq!(st.state, "stale");
    assert_eq!(st.targets, [addr("[2001:db8::1]:5060")]);
    assert_eq!(l.generation(), g);
    let t2 = l.poll_timeout().unwrap();
    l.handle_timeout(t2);
    let id = expect(&mut l, "provider.test", RecordType::Aaaa);
    // The provider moved: the new address replaces the old one.
    l.handle_answer(t2, id, Ok(vec![aaaa("2001:db8::2", 7200)]));
    assert_eq!(l.targets(), [addr("[2001:db8::2]:5060")]);
    assert_ne!(l.generation(), g);
    assert_eq!(l.status().state, "resolved");
    assert_eq!(l.poll_timeout(), Some(t2 + s(7200)));
}

#[test]
fn ttl_is_clamped() {
    let t0 = Instant::now();
    let mut l = locator(Some(5060), Transport::Udp, false);
    l.start(t0);
    let id = expect(&mut l, "provider.test", RecordType::Aaaa);
    l.handle_answer(t0, id, Ok(vec![aaaa("2001:db8::1", 0)]));
    assert_eq!(
        l.poll_timeout(),
        Some(t0 + s(10)),
        "TTL 0 raised to min_ttl"
    );
    let t1 = t0 + s(10);
    l.handle_timeout(t1);
    let id = expect(&mut l, "provider.test", RecordType::Aaaa);
    l.handle_answer(t1, id, Ok(vec![aaaa("2001:db8::1", u32::MAX)]));
    assert_eq!(l.poll_timeout(), Some(t1 + s(86_400)));
}

#[test]
fn a_lost_answer_times_out_and_late_answers_are_ignored() {
    let t0 = Instant::now();
    let mut l = locator(None, Transport::Udp, false);
    l.start(t0);
    let id = expect(&mut l, "provider.test", RecordType::Naptr);
    assert_eq!(l.poll_timeout(), Some(t0 + s(30)));
    l.handle_timeout(t0 + s(30));
    let st = l.status();
    assert_eq!(st.state, "unresolved");
    assert!(st.last_error.unwrap().contains("no answer"));
    // The answer arrives after the run was given up: nothing changes.
    l.handle_answer(
        t0 + s(31),
        id,
        Ok(vec![naptr(1, 1, "SIP+D2U", "_sip._udp.x", 60)]),
    );
    assert_eq!(l.poll_query(), None);
    assert_eq!(l.status().state, "unresolved");
}

#[test]
fn same_host_on_two_ports_is_looked_up_once() {
    let t0 = Instant::now();
    let mut l = locator(None, Transport::Udp, false);
    let id = srv_query(&mut l, t0);
    l.handle_answer(
        t0,
        id,
        Ok(vec![
            srv(1, 0, 5060, "sbc.provider.test", 60),
            srv(2, 0, 5062, "sbc.provider.test", 60),
        ]),
    );
    let q = expect(&mut l, "sbc.provider.test", RecordType::Aaaa);
    assert_eq!(l.poll_query(), None);
    l.handle_answer(t0, q, Ok(vec![aaaa("2001:db8::1", 60)]));
    assert_eq!(
        l.targets(),
        [addr("[2001:db8::1]:5060"), addr("[2001:db8::1]:5062")]
    );
}

#[test]
fn srv_targets_without_addresses() {
    let t0 = Instant::now();
    let mut l = locator(None, Transport::Udp, true);
    let id = srv_query(&mut l, t0);
    l.handle_answer(
        t0,
        id,
        Ok(vec![
            srv(1, 0, 5060, "a.test", 60),
            srv(2, 0, 5060, "b.test", 60),
        ]),
    );
    let qa = expect(&mut l, "a.test", RecordType::A);
    let qb = expect(&mut l, "b.test", RecordType::A);
    l.handle_answer(t0, qa, Err(LookupError::NotFound));
    // One target without an address does not sink the others.
    l.handle_answer(t0, qb, Ok(vec![a("198.51.100.2", 60)]));
    assert_eq!(l.targets(), [addr("198.51.100.2:5060")]);

    let mut l = locator(None, Transport::Udp, true);
    let id = srv_query(&mut l, t0);
    l.handle_answer(t0, id, Ok(vec![srv(1, 0, 5060, "a.test", 60)]));
    let qa = expect(&mut l, "a.test", RecordType::A);
    l.handle_answer(t0, qa, Ok(vec![a("0.0.0.0", 60), a("224.0.0.1", 60)]));
    let st = l.status();
    assert!(
        st.targets.is_empty(),
        "unspecified and multicast are never targets"
    );
    assert!(st.last_error.unwrap().contains("no SRV target"));
}

/// RFC 2782: within a priority, a record is first with probability weight / total.
#[test]
fn srv_weights_share_the_first_place() {
    let t0 = Instant::now();
    let mut firsts = [0u32; 3];
    for i in 0..2000u32 {
        let mut seed = [0u8; 16];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        let mut l = Locator::new(LocatorConfig::new(
            "p.test",
            None,
            Transport::Udp,
            true,
            seed,
        ));
        l.start(t0);
        let id = expect(&mut l, "p.test", RecordType::Naptr);
        l.handle_answer(t0, id, Err(LookupError::NotFound));
        let id = expect(&mut l, "_sip._udp.p.test", RecordType::Srv);
        l.handle_answer(
            t0,
            id,
            Ok(vec![
                srv(5, 0, 1, "zero.test", 60),
                srv(5, 60, 2, "sixty.test", 60),
                srv(5, 30, 3, "thirty.test", 60),
                srv(9, 100, 4, "later.test", 60),
            ]),
        );
        let mut order = Vec::new();
        while let Some(q) = l.poll_query() {
            order.push(q.name);
        }
        assert_eq!(order.len(), 4);
        assert_eq!(
            order[3], "later.test",
            "a higher priority value always comes last"
        );
        match order[0].as_str() {
            "zero.test" => firsts[0] += 1,
            "sixty.test" => firsts[1] += 1,
            "thirty.test" => firsts[2] += 1,
            other => panic!("{other}"),
        }
    }
    // Expected shares 0/91, 60/91, 30/91 of 2000 (the running sum starts at 0, so weight 0
    // wins only when the draw is exactly 0).
    assert!(firsts[0] < 40, "{firsts:?}");
    assert!((1200..1450).contains(&firsts[1]), "{firsts:?}");
    assert!((550..780).contains(&firsts[2]), "{firsts:?}");
}

#[test]
fn stop_silences_the_locator() {
    let t0 = Instant::now();
    let mut l = locator(Some(5060), Transport::Udp, false);
    l.start(t0);
    let id = expect(&mut l, "provider.test", RecordType::Aaaa);
    l.stop();
    assert_eq!(l.poll_timeout(), None);
    l.handle_answer(t0, id, Ok(vec![aaaa("2001:db8::1", 60)]));
    assert!(l.targets().is_empty());
    assert_eq!(l.status().state, "idle");
}
