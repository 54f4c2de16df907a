//! Transaction layer tests in virtual time, through the parser-free `*_info` entry points.

use bytes::Bytes;
use podpbx_sip::transaction::{
    ClientKey, ClientState, ClientTxId, Limits, RequestDisposition, RequestInfo,
    ResponseDisposition, ResponseInfo, ServerKey, ServerState, ServerTxId, Timers,
    TransactionLayer, TxError, TxEvent, TxId, TxStats,
};
use podpbx_sip::{Method, Peer, Transport};
use std::cell::Cell;
use std::time::{Duration, Instant};

fn udp() -> Peer {
    Peer {
        addr: "192.0.2.10:5060".parse().unwrap(),
        transport: Transport::Udp,
        conn: 0,
    }
}

fn tcp() -> Peer {
    Peer {
        addr: "192.0.2.20:40000".parse().unwrap(),
        transport: Transport::Tcp,
        conn: 7,
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Drives a layer in virtual time and records what it emits, stamped with the offset from t0.
struct Harness {
    l: TransactionLayer,
    t0: Instant,
    now: Instant,
    sent: Vec<(Duration, Peer, Bytes)>,
    events: Vec<(Duration, TxEvent)>,
}

impl Harness {
    fn new(timers: Timers) -> Harness {
        Harness::with_limits(timers, Limits::default())
    }

    fn with_limits(timers: Timers, limits: Limits) -> Harness {
        let t0 = Instant::now();
        Harness {
            l: TransactionLayer::new(timers, limits),
            t0,
            now: t0,
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let at = self.now - self.t0;
        while let Some(t) = self.l.poll_transmit() {
            self.sent.push((at, t.peer, t.data));
        }
        while let Some(e) = self.l.poll_event() {
            self.events.push((at, e));
        }
    }

    /// Runs every timer up to `t0 + until`, firing each exactly at its deadline.
    fn run_until(&mut self, until: Duration) {
        let end = self.t0 + until;
        self.drain();
        while let Some(at) = self.l.poll_timeout() {
            if at > end {
                break;
            }
            self.now = at.max(self.now);
            self.l.handle_timeout(self.now);
            self.drain();
        }
        self.now = end.max(self.now);
    }

    fn take_sent(&mut self) -> Vec<(Duration, Bytes)> {
        self.drain();
        self.sent.drain(..).map(|(t, _, d)| (t, d)).collect()
    }

    fn sent_times(&mut self) -> Vec<Duration> {
        self.take_sent().into_iter().map(|(t, _)| t).collect()
    }

    fn take_events(&mut self) -> Vec<(Duration, TxEvent)> {
        self.drain();
        std::mem::take(&mut self.events)
    }

    fn send(
        &mut self,
        branch: &'static str,
        method: Method,
        wire: &'static str,
        peer: Peer,
    ) -> ClientTxId {
        let id = self
            .l
            .send_request(self.now, b(branch), method, b(wire), peer)
            .expect("send_request");
        self.drain();
        id
    }

    fn respond_info(
        &mut self,
        branch: &'static str,
        method: Method,
        status: u16,
    ) -> ResponseDisposition {
        let info = ResponseInfo {
            status,
            branch: b(branch),
            method,
        };
        let d = self.l.on_response_info(self.now, &info, |_| Some(b("ACK")));
        self.drain();
        d
    }

    fn request(&mut self, branch: &'static str, method: Method, peer: Peer) -> RequestDisposition {
        let info = RequestInfo {
            method,
            branch: b(branch),
            sent_by: b("192.0.2.10:5060"),
        };
        let d = self.l.on_request_info(self.now, info, peer);
        self.drain();
        d
    }

    fn answer(&mut self, id: ServerTxId, status: u16, wire: &'static str) {
        self.l
            .send_response(self.now, id, status, b(wire))
            .expect("send_response");
        self.drain();
    }
}

fn secs(v: &[f64]) -> Vec<Duration> {
    v.iter().map(|s| Duration::from_secs_f64(*s)).collect()
}

fn new_id(d: RequestDisposition) -> ServerTxId {
    match d {
        RequestDisposition::New(id) => id,
        other => panic!("expected New, got {other:?}"),
    }
}

/// Named so that `cargo test -p podpbx-sip transaction` selects every test here.
mod transaction {
    use super::*;

    // ----- INVITE client -------------------------------------------------------------------------

    #[test]
    fn invite_client_udp_timer_a_schedule_and_timer_b() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        assert_eq!(h.l.client_state(id), Some(ClientState::Calling));
        h.run_until(Duration::from_secs(40));
        assert_eq!(h.sent_times(), secs(&[0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]));
        assert_eq!(
            h.take_events(),
            vec![
                (Duration::from_secs(32), TxEvent::Timeout(TxId::Client(id))),
                (
                    Duration::from_secs(32),
                    TxEvent::Terminated(TxId::Client(id))
                ),
            ]
        );
        assert_eq!(h.l.client_state(id), None);
        assert!(h.l.is_empty());
        assert_eq!(h.l.poll_timeout(), None);
    }

    #[test]
    fn invite_client_retransmits_the_exact_bytes_to_the_same_peer() {
        let mut h = Harness::new(Timers::default());
        h.send("z9hG4bKa", Method::Invite, "INVITE sip:x SIP/2.0", udp());
        h.run_until(Duration::from_secs(2));
        assert_eq!(h.sent.len(), 3);
        for (_, peer, data) in &h.sent {
            assert_eq!(*peer, udp());
            assert_eq!(data.as_ref(), b"INVITE sip:x SIP/2.0");
        }
    }

    #[test]
    fn invite_client_t1_100ms_scales_the_schedule() {
        let mut h = Harness::new(Timers {
            t1: ms(100),
            ..Timers::default()
        });
        let id = h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        h.run_until(Duration::from_secs(10));
        assert_eq!(h.sent_times(), secs(&[0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3]));
        let ev = h.take_events();
        assert_eq!(ev[0], (ms(6400), TxEvent::Timeout(TxId::Client(id))));
    }

    #[test]
    fn invite_client_tcp_does_not_retransmit_but_timer_b_runs() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKa", Method::Invite, "INVITE", tcp());
        h.run_until(Duration::from_secs(40));
        assert_eq!(h.sent_times(), secs(&[0.0]));
        assert_eq!(
            h.take_events()[0],
            (Duration::from_secs(32), TxEvent::Timeout(TxId::Client(id)))
        );
    }

    #[test]
    fn invite_client_provisional_stops_a_and_b_then_non2xx_acked_and_timer_d() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        h.run_until(ms(1000));
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 180),
            ResponseDisposition::Deliver(id)
        );
        assert_eq!(h.l.client_state(id), Some(ClientState::Proceeding));
        // No retransmission and no Timer B while Proceeding: the TU decides when to CANCEL.
        assert_eq!(h.l.poll_timeout(), None);
        h.run_until(Duration::from_secs(100));
        assert_eq!(h.sent_times(), secs(&[0.0, 0.5]));
        assert!(h.take_events().is_empty());
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 183),
            ResponseDisposition::Deliver(id)
        );

        let calls = Cell::new(0);
        let info = ResponseInfo {
            status: 486,
            branch: b("z9hG4bKa"),
            method: Method::Invite,
        };
        let d = h.l.on_response_info(h.now, &info, |invite| {
            calls.set(calls.get() + 1);
            assert_eq!(invite.as_ref(), b"INVITE");
            Some(b("ACK 486"))
        });
        assert_eq!(d, ResponseDisposition::Deliver(id));
        assert_eq!(h.l.client_state(id), Some(ClientState::Completed));
        assert_eq!(
            h.take_sent(),
            vec![(Duration::from_secs(100), b("ACK 486"))]
        );

        // A retransmitted final is absorbed and re-ACKed from the stored ACK.
        h.run_until(Duration::from_secs(110));
        let d = h.l.on_response_info(h.now, &info, |_| {
            calls.set(calls.get() + 1);
            Some(b("other"))
        });
        assert_eq!(d, ResponseDisposition::Absorbed(id));
        assert_eq!(calls.get(), 1);
        assert_eq!(
            h.take_sent(),
            vec![(Duration::from_secs(110), b("ACK 486"))]
        );
        // Provisional and 2xx after the final are absorbed, not delivered.
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 180),
            ResponseDisposition::Absorbed(id)
        );
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 200),
            ResponseDisposition::Absorbed(id)
        );
        assert!(h.take_sent().is_empty());

        // Timer D: 32 s after the first final response.
        h.run_until(ms(131_999));
        assert_eq!(h.l.client_state(id), Some(ClientState::Completed));
        h.run_until(Duration::from_secs(132));
        assert_eq!(h.l.client_state(id), None);
        assert_eq!(
            h.take_events(),
            vec![(
                Duration::from_secs(132),
                TxEvent::Terminated(TxId::Client(id))
            )]
        );
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 486),
            ResponseDisposition::Stray
        );
    }

    #[test]
    fn invite_client_timer_d_is_32s_even_with_small_t1() {
        let mut h = Harness::new(Timers {
            t1: ms(100),
            ..Timers::default()
        });
        let id = h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 503),
            ResponseDisposition::Deliver(id)
        );
        h.run_until(ms(31_999));
        assert_eq!(h.l.client_state(id), Some(ClientState::Completed));
        h.run_until(ms(32_000));
        assert_eq!(h.l.client_state(id), None);
    }

    #[test]
    fn invite_client_tcp_timer_d_zero() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKa", Method::Invite, "INVITE", tcp());
        h.take_sent();
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 404),
            ResponseDisposition::Deliver(id)
        );
        // The ACK still goes out once, then the transaction is gone at once.
        assert_eq!(h.take_sent(), vec![(Duration::ZERO, b("ACK"))]);
        assert_eq!(h.l.client_state(id), None);
        assert_eq!(
            h.take_events(),
            vec![(Duration::ZERO, TxEvent::Terminated(TxId::Client(id)))]
        );
        assert_eq!(h.l.poll_timeout(), None);
    }

    #[test]
    fn invite_client_2xx_accepted_timer_m_delivers_more_2xx() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        h.run_until(ms(700));
        h.take_sent();
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 200),
            ResponseDisposition::Deliver(id)
        );
        assert_eq!(h.l.client_state(id), Some(ClientState::Accepted));
        // The TU sends the 2xx ACK, not the transaction, and retransmissions stop.
        h.run_until(Duration::from_secs(10));
        assert!(h.take_sent().is_empty());
        // 2xx retransmissions / other forks still reach the TU (RFC 6026 §7.2).
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 200),
            ResponseDisposition::Deliver(id)
        );
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 183),
            ResponseDisposition::Absorbed(id)
        );
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 486),
            ResponseDisposition::Absorbed(id)
        );
        assert!(h.take_sent().is_empty());
        // Timer M = 64*T1 from the first 2xx at 0.7 s.
        h.run_until(ms(32_699));
        assert_eq!(h.l.client_state(id), Some(ClientState::Accepted));
        h.run_until(ms(32_700));
        assert_eq!(h.l.client_state(id), None);
        assert_eq!(
            h.take_events(),
            vec![(ms(32_700), TxEvent::Terminated(TxId::Client(id)))]
        );
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 200),
            ResponseDisposition::Stray
        );
    }

    #[test]
    fn invite_client_tcp_2xx_still_uses_timer_m() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKa", Method::Invite, "INVITE", tcp());
        h.respond_info("z9hG4bKa", Method::Invite, 200);
        h.run_until(ms(31_999));
        assert_eq!(h.l.client_state(id), Some(ClientState::Accepted));
        h.run_until(ms(32_000));
        assert_eq!(h.l.client_state(id), None);
    }

    #[test]
    fn invite_client_without_ack_builder_still_completes() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        h.take_sent();
        let info = ResponseInfo {
            status: 480,
            branch: b("z9hG4bKa"),
            method: Method::Invite,
        };
        assert_eq!(
            h.l.on_response_info(h.now, &info, |_| None),
            ResponseDisposition::Deliver(id)
        );
        assert_eq!(h.l.client_state(id), Some(ClientState::Completed));
        assert!(h.take_sent().is_empty());
    }

    // ----- non-INVITE client ---------------------------------------------------------------------

    #[test]
    fn non_invite_client_udp_timer_e_capped_at_t2_and_timer_f() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKo", Method::Options, "OPTIONS", udp());
        assert_eq!(h.l.client_state(id), Some(ClientState::Trying));
        h.run_until(Duration::from_secs(40));
        assert_eq!(
            h.sent_times(),
            secs(&[0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        );
        assert_eq!(
            h.take_events(),
            vec![
                (Duration::from_secs(32), TxEvent::Timeout(TxId::Client(id))),
                (
                    Duration::from_secs(32),
                    TxEvent::Terminated(TxId::Client(id))
                ),
            ]
        );
    }

    #[test]
    fn non_invite_client_after_provisional_timer_e_runs_at_t2() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKo", Method::Register, "REGISTER", udp());
        h.run_until(ms(200));
        assert_eq!(
            h.respond_info("z9hG4bKo", Method::Register, 100),
            ResponseDisposition::Deliver(id)
        );
        assert_eq!(h.l.client_state(id), Some(ClientState::Proceeding));
        h.run_until(Duration::from_secs(40));
        // The pending E fires at 0.5 s, then every T2 = 4 s; F still ends it at 32 s.
        assert_eq!(
            h.sent_times(),
            secs(&[0.0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5])
        );
        assert_eq!(
            h.take_events()[0],
            (Duration::from_secs(32), TxEvent::Timeout(TxId::Client(id)))
        );
    }

    #[test]
    fn non_invite_client_custom_t1_t2() {
        let mut h = Harness::new(Timers {
            t1: ms(100),
            t2: ms(300),
            t4: ms(1000),
        });
        let id = h.send("z9hG4bKo", Method::Options, "OPTIONS", udp());
        h.run_until(ms(1500));
        assert_eq!(h.sent_times(), secs(&[0.0, 0.1, 0.3, 0.6, 0.9, 1.2, 1.5]));
        h.run_until(Duration::from_secs(7));
        assert_eq!(
            h.take_events()[0],
            (ms(6400), TxEvent::Timeout(TxId::Client(id)))
        );
    }

    #[test]
    fn non_invite_client_final_then_timer_k_t4() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKo", Method::Bye, "BYE", udp());
        h.run_until(ms(1000));
        assert_eq!(
            h.respond_info("z9hG4bKo", Method::Bye, 200),
            ResponseDisposition::Deliver(id)
        );
        assert_eq!(h.l.client_state(id), Some(ClientState::Completed));
        h.take_sent();
        assert_eq!(
            h.respond_info("z9hG4bKo", Method::Bye, 200),
            ResponseDisposition::Absorbed(id)
        );
        assert_eq!(
            h.respond_info("z9hG4bKo", Method::Bye, 100),
            ResponseDisposition::Absorbed(id)
        );
        // Completed absorbs without retransmitting or ACKing.
        h.run_until(ms(5999));
        assert!(h.take_sent().is_empty());
        assert_eq!(h.l.client_state(id), Some(ClientState::Completed));
        h.run_until(ms(6000));
        assert_eq!(h.l.client_state(id), None);
        assert!(h
            .take_events()
            .contains(&(ms(6000), TxEvent::Terminated(TxId::Client(id)))));
    }

    #[test]
    fn non_invite_client_tcp_no_retransmit_and_timer_k_zero() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKo", Method::Bye, "BYE", tcp());
        h.run_until(Duration::from_secs(10));
        assert_eq!(h.sent_times(), secs(&[0.0]));
        assert_eq!(
            h.respond_info("z9hG4bKo", Method::Bye, 481),
            ResponseDisposition::Deliver(id)
        );
        assert_eq!(h.l.client_state(id), None);
        assert_eq!(
            h.take_events(),
            vec![(
                Duration::from_secs(10),
                TxEvent::Terminated(TxId::Client(id))
            )]
        );
    }

    #[test]
    fn non_invite_client_tcp_timer_f() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKo", Method::Bye, "BYE", tcp());
        h.run_until(Duration::from_secs(40));
        assert_eq!(
            h.take_events()[0],
            (Duration::from_secs(32), TxEvent::Timeout(TxId::Client(id)))
        );
    }

    #[test]
    fn client_matching_uses_branch_and_cseq_method() {
        let mut h = Harness::new(Timers::default());
        let inv = h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        let cancel = h.send("z9hG4bKa", Method::Cancel, "CANCEL", udp());
        assert_ne!(inv, cancel);
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Cancel, 200),
            ResponseDisposition::Deliver(cancel)
        );
        assert_eq!(h.l.client_state(inv), Some(ClientState::Calling));
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Invite, 487),
            ResponseDisposition::Deliver(inv)
        );
        assert_eq!(
            h.respond_info("z9hG4bKb", Method::Invite, 200),
            ResponseDisposition::Stray
        );
        assert_eq!(
            h.respond_info("z9hG4bKa", Method::Bye, 200),
            ResponseDisposition::Stray
        );
        assert_eq!(
            h.l.find_client(&ClientKey {
                branch: b("z9hG4bKa"),
                method: Method::Invite
            }),
            Some(inv)
        );
    }

    #[test]
    fn client_rejects_ack_duplicates_and_bad_status() {
        let mut h = Harness::new(Timers::default());
        assert_eq!(
            h.l.send_request(h.now, b("z9hG4bKa"), Method::Ack, b("ACK"), udp()),
            Err(TxError::AckIsNotATransaction)
        );
        h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        assert_eq!(
            h.l.send_request(h.now, b("z9hG4bKa"), Method::Invite, b("INVITE"), udp()),
            Err(TxError::Duplicate)
        );
        for status in [0, 99, 700, 999, u16::MAX] {
            assert_eq!(
                h.respond_info("z9hG4bKa", Method::Invite, status),
                ResponseDisposition::Stray
            );
        }
        assert_eq!(h.l.len(), 1);
    }

    // ----- INVITE server -------------------------------------------------------------------------

    #[test]
    fn invite_server_provisional_resent_on_retransmission() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKs", Method::Invite, udp()));
        assert_eq!(h.l.server_state(id), Some(ServerState::Proceeding));
        assert_eq!(h.l.server_method(id), Some(&Method::Invite));
        // Nothing sent yet: a retransmission is absorbed silently.
        assert_eq!(
            h.request("z9hG4bKs", Method::Invite, udp()),
            RequestDisposition::Retransmission(id)
        );
        assert!(h.take_sent().is_empty());
        h.answer(id, 100, "100");
        h.answer(id, 180, "180");
        assert_eq!(h.take_sent().len(), 2);
        assert_eq!(
            h.request("z9hG4bKs", Method::Invite, udp()),
            RequestDisposition::Retransmission(id)
        );
        assert_eq!(h.take_sent(), vec![(Duration::ZERO, b("180"))]);
        // Proceeding has no timers: the TU decides how long it rings.
        assert_eq!(h.l.poll_timeout(), None);
    }

    #[test]
    fn invite_server_non2xx_timer_g_until_timer_h() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKs", Method::Invite, udp()));
        h.answer(id, 486, "486");
        assert_eq!(h.l.server_state(id), Some(ServerState::Completed));
        h.run_until(Duration::from_secs(40));
        assert_eq!(
            h.sent_times(),
            secs(&[0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        );
        assert_eq!(
            h.take_events(),
            vec![
                (Duration::from_secs(32), TxEvent::Timeout(TxId::Server(id))),
                (
                    Duration::from_secs(32),
                    TxEvent::Terminated(TxId::Server(id))
                ),
            ]
        );
        assert_eq!(h.l.server_state(id), None);
        // With the transaction gone, a late retransmission is a new request again.
        assert!(matches!(
            h.request("z9hG4bKs", Method::Invite, udp()),
            RequestDisposition::New(_)
        ));
    }

    #[test]
    fn invite_server_retransmitted_invite_in_completed_resends_final() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKs", Method::Invite, udp()));
        h.answer(id, 100, "100");
        h.answer(id, 603, "603");
        h.take_sent();
        h.run_until(ms(200));
        assert_eq!(
            h.request("z9hG4bKs", Method::Invite, udp()),
            RequestDisposition::Retransmission(id)
        );
        assert_eq!(h.take_sent(), vec![(ms(200), b("603"))]);
    }

    #[test]
    fn invite_server_ack_confirms_then_timer_i() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKs", Method::Invite, udp()));
        h.answer(id, 486, "486");
        h.run_until(ms(2000));
        assert_eq!(h.sent_times(), secs(&[0.0, 0.5, 1.5]));
        assert_eq!(
            h.request("z9hG4bKs", Method::Ack, udp()),
            RequestDisposition::AckAbsorbed(id)
        );
        assert_eq!(h.l.server_state(id), Some(ServerState::Confirmed));
        assert_eq!(
            h.request("z9hG4bKs", Method::Ack, udp()),
            RequestDisposition::AckAbsorbed(id)
        );
        // INVITE retransmissions are absorbed too, without a re-send.
        assert_eq!(
            h.request("z9hG4bKs", Method::Invite, udp()),
            RequestDisposition::Retransmission(id)
        );
        assert_eq!(
            h.l.send_response(h.now, id, 200, b("200")),
            Err(TxError::FinalAlreadySent)
        );
        // No more G, and no H timeout: Timer I = T4 after the ACK.
        h.run_until(ms(6999));
        assert!(h.take_sent().is_empty());
        assert_eq!(h.l.server_state(id), Some(ServerState::Confirmed));
        h.run_until(Duration::from_secs(40));
        assert_eq!(
            h.take_events(),
            vec![(ms(7000), TxEvent::Terminated(TxId::Server(id)))]
        );
        assert!(h.take_sent().is_empty());
    }

    #[test]
    fn invite_server_tcp_no_timer_g_and_timer_i_zero() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKs", Method::Invite, tcp()));
        h.answer(id, 500, "500");
        h.run_until(Duration::from_secs(5));
        assert_eq!(h.sent_times(), secs(&[0.0]));
        assert_eq!(
            h.request("z9hG4bKs", Method::Ack, tcp()),
            RequestDisposition::AckAbsorbed(id)
        );
        assert_eq!(h.l.server_state(id), None);
        assert_eq!(
            h.take_events(),
            vec![(
                Duration::from_secs(5),
                TxEvent::Terminated(TxId::Server(id))
            )]
        );
    }

    #[test]
    fn invite_server_tcp_timer_h_still_runs() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKs", Method::Invite, tcp()));
        h.answer(id, 500, "500");
        h.run_until(Duration::from_secs(40));
        assert_eq!(
            h.take_events()[0],
            (Duration::from_secs(32), TxEvent::Timeout(TxId::Server(id)))
        );
    }

    #[test]
    fn invite_server_timer_g_with_t1_100ms() {
        let mut h = Harness::new(Timers {
            t1: ms(100),
            ..Timers::default()
        });
        let id = new_id(h.request("z9hG4bKs", Method::Invite, udp()));
        h.answer(id, 486, "486");
        h.run_until(Duration::from_secs(10));
        assert_eq!(h.sent_times(), secs(&[0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3]));
        assert_eq!(
            h.take_events()[0],
            (ms(6400), TxEvent::Timeout(TxId::Server(id)))
        );
    }

    #[test]
    fn invite_server_2xx_accepted_timer_l_absorbs_invites() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKs", Method::Invite, udp()));
        h.answer(id, 180, "180");
        h.answer(id, 200, "200");
        assert_eq!(h.l.server_state(id), Some(ServerState::Accepted));
        h.take_sent();
        h.run_until(ms(500));
        // The layer never retransmits the 2xx itself, and absorbs INVITE retransmissions.
        assert!(h.take_sent().is_empty());
        assert_eq!(
            h.request("z9hG4bKs", Method::Invite, udp()),
            RequestDisposition::Retransmission(id)
        );
        assert!(h.take_sent().is_empty());
        // The TU's 2xx retransmissions pass through.
        h.answer(id, 200, "200 again");
        assert_eq!(h.take_sent(), vec![(ms(500), b("200 again"))]);
        assert_eq!(
            h.l.send_response(h.now, id, 486, b("486")),
            Err(TxError::FinalAlreadySent)
        );
        assert_eq!(
            h.l.send_response(h.now, id, 180, b("180")),
            Err(TxError::FinalAlreadySent)
        );
        // Timer L = 64*T1 from the 2xx while no ACK came, and no Timeout event.
        h.run_until(ms(31_999));
        assert_eq!(h.l.server_state(id), Some(ServerState::Accepted));
        // An ACK matching an Accepted transaction belongs to the TU (RFC 6026 §8.7); after it
        // only a delayed INVITE can come, within T4 (accepted_invite_lingers_t4_after_its_ack).
        assert_eq!(
            h.request("z9hG4bKs", Method::Ack, udp()),
            RequestDisposition::AckFor2xx
        );
        h.run_until(Duration::from_secs(40));
        assert_eq!(
            h.take_events(),
            vec![(
                Duration::from_secs(32),
                TxEvent::Terminated(TxId::Server(id))
            )]
        );
    }

    #[test]
    fn ack_with_new_branch_goes_to_tu() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKs", Method::Invite, udp()));
        h.answer(id, 200, "200");
        assert_eq!(
            h.request("z9hG4bKother", Method::Ack, udp()),
            RequestDisposition::AckFor2xx
        );
        assert_eq!(h.l.len(), 1);
    }

    // ----- non-INVITE server ---------------------------------------------------------------------

    #[test]
    fn non_invite_server_trying_proceeding_completed_timer_j() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKn", Method::Register, udp()));
        assert_eq!(h.l.server_state(id), Some(ServerState::Trying));
        assert_eq!(
            h.request("z9hG4bKn", Method::Register, udp()),
            RequestDisposition::Retransmission(id)
        );
        assert!(h.take_sent().is_empty());
        h.answer(id, 100, "100");
        assert_eq!(h.l.server_state(id), Some(ServerState::Proceeding));
        h.take_sent();
        assert_eq!(
            h.request("z9hG4bKn", Method::Register, udp()),
            RequestDisposition::Retransmission(id)
        );
        assert_eq!(h.take_sent(), vec![(Duration::ZERO, b("100"))]);
        h.run_until(ms(300));
        h.answer(id, 200, "200");
        assert_eq!(h.l.server_state(id), Some(ServerState::Completed));
        h.take_sent();
        h.run_until(ms(1000));
        assert_eq!(
            h.request("z9hG4bKn", Method::Register, udp()),
            RequestDisposition::Retransmission(id)
        );
        assert_eq!(h.take_sent(), vec![(ms(1000), b("200"))]);
        assert_eq!(
            h.l.send_response(h.now, id, 200, b("200")),
            Err(TxError::FinalAlreadySent)
        );
        // The server never retransmits on its own; J = 64*T1 after the final.
        h.run_until(ms(32_299));
        assert!(h.take_sent().is_empty());
        assert_eq!(h.l.server_state(id), Some(ServerState::Completed));
        h.run_until(ms(32_300));
        assert_eq!(h.l.server_state(id), None);
        assert_eq!(
            h.take_events(),
            vec![(ms(32_300), TxEvent::Terminated(TxId::Server(id)))]
        );
    }

    /// `send_response_brief` (the core's answer to a REGISTER): the final response lingers 4*T1,
    /// absorbing the retransmissions at T1 and 3*T1; a later one is a new request. Over TCP it
    /// ends at once, as any non-INVITE; a provisional keeps the transaction live.
    #[test]
    fn non_invite_server_brief_timer_j() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKb", Method::Register, udp()));
        h.l.send_response_brief(h.now, id, 100, b("100")).unwrap();
        h.drain();
        assert_eq!(h.l.server_state(id), Some(ServerState::Proceeding));
        h.run_until(ms(100));
        h.l.send_response_brief(h.now, id, 200, b("200")).unwrap();
        h.drain();
        assert_eq!(h.l.server_state(id), Some(ServerState::Completed));
        h.take_sent();
        h.run_until(ms(1600));
        assert_eq!(
            h.request("z9hG4bKb", Method::Register, udp()),
            RequestDisposition::Retransmission(id)
        );
        assert_eq!(h.take_sent(), vec![(ms(1600), b("200"))]);
        assert_eq!(
            h.l.send_response_brief(h.now, id, 200, b("200")),
            Err(TxError::FinalAlreadySent)
        );
        h.run_until(ms(2099));
        assert_eq!(h.l.server_state(id), Some(ServerState::Completed));
        h.run_until(ms(2100));
        assert_eq!(h.l.server_state(id), None);
        assert_eq!(
            h.take_events(),
            vec![(ms(2100), TxEvent::Terminated(TxId::Server(id)))]
        );
        assert!(matches!(
            h.request("z9hG4bKb", Method::Register, udp()),
            RequestDisposition::New(_)
        ));
        // The 64*T1 lingering of others is unchanged beside it.
        let other = new_id(h.request("z9hG4bKo", Method::Options, udp()));
        h.answer(other, 200, "200");
        h.run_until(ms(2100 + 32_000 - 1));
        assert_eq!(h.l.server_state(other), Some(ServerState::Completed));
        let tcp_id = new_id(h.request("z9hG4bKt", Method::Register, tcp()));
        h.l.send_response_brief(h.now, tcp_id, 200, b("200"))
            .unwrap();
        assert_eq!(h.l.server_state(tcp_id), None);
    }

    #[test]
    fn non_invite_server_tcp_timer_j_zero() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKn", Method::Options, tcp()));
        h.answer(id, 200, "200");
        assert_eq!(h.take_sent(), vec![(Duration::ZERO, b("200"))]);
        assert_eq!(h.l.server_state(id), None);
        assert_eq!(h.l.poll_timeout(), None);
    }

    #[test]
    fn non_invite_server_unanswered_times_out_after_64_t1() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKn", Method::Options, udp()));
        h.run_until(Duration::from_secs(40));
        assert_eq!(
            h.take_events(),
            vec![
                (Duration::from_secs(32), TxEvent::Timeout(TxId::Server(id))),
                (
                    Duration::from_secs(32),
                    TxEvent::Terminated(TxId::Server(id))
                ),
            ]
        );
        assert_eq!(
            h.l.send_response(h.now, id, 200, b("200")),
            Err(TxError::UnknownTransaction)
        );
    }

    #[test]
    fn server_rejects_bad_status_codes() {
        let mut h = Harness::new(Timers::default());
        let id = new_id(h.request("z9hG4bKn", Method::Options, udp()));
        for s in [0, 99, 700, u16::MAX] {
            assert_eq!(
                h.l.send_response(h.now, id, s, b("x")),
                Err(TxError::InvalidStatus(s))
            );
        }
        assert_eq!(h.l.server_state(id), Some(ServerState::Trying));
        assert!(h.take_sent().is_empty());
    }

    // ----- matching, CANCEL, table ---------------------------------------------------------------

    #[test]
    fn server_key_includes_sent_by_and_method() {
        let mut h = Harness::new(Timers::default());
        let a = new_id(h.request("z9hG4bKk", Method::Invite, udp()));
        let other_host = RequestInfo {
            method: Method::Invite,
            branch: b("z9hG4bKk"),
            sent_by: b("198.51.100.1:5060"),
        };
        let c = new_id(h.l.on_request_info(h.now, other_host, udp()));
        let bye = new_id(h.request("z9hG4bKk", Method::Bye, udp()));
        assert!(a != c && c != bye && a != bye);
        assert_eq!(
            h.l.find_server(&ServerKey::new(
                b("z9hG4bKk"),
                b("192.0.2.10:5060"),
                &Method::Ack
            )),
            Some(a)
        );
        assert_eq!(h.l.len(), 3);
    }

    #[test]
    fn cancel_matches_invite_server_transaction() {
        let mut h = Harness::new(Timers::default());
        let inv = new_id(h.request("z9hG4bKc", Method::Invite, udp()));
        h.answer(inv, 180, "180");
        let cancel = match h.request("z9hG4bKc", Method::Cancel, udp()) {
            RequestDisposition::Cancel { tx, target } => {
                assert_eq!(target, Some(inv));
                tx
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(h.l.server_state(cancel), Some(ServerState::Trying));
        assert_eq!(
            h.request("z9hG4bKc", Method::Cancel, udp()),
            RequestDisposition::Retransmission(cancel)
        );
        // The TU answers the CANCEL and then the INVITE with 487, each in its own transaction.
        h.answer(cancel, 200, "200 CANCEL");
        h.answer(inv, 487, "487");
        assert_eq!(h.l.server_state(cancel), Some(ServerState::Completed));
        assert_eq!(h.l.server_state(inv), Some(ServerState::Completed));
        // A CANCEL for an unknown INVITE still gets its own transaction (the TU answers 481).
        match h.request("z9hG4bKnone", Method::Cancel, udp()) {
            RequestDisposition::Cancel { target: None, .. } => {}
            other => panic!("{other:?}"),
        }
    }

    /// Bytes charged for one live OPTIONS server transaction with an 8-character branch.
    fn one_server_tx() -> usize {
        let mut h = Harness::new(Timers::default());
        new_id(h.request("z9hG4bK1", Method::Options, tcp()));
        let st = h.l.stats();
        assert_eq!((st.live, st.lingering, st.bytes), (1, 0, st.live_bytes));
        st.live_bytes
    }

    #[test]
    fn table_is_bounded_by_bytes_and_frees_space() {
        let c = one_server_tx();
        let max = 2 * c + c / 2;
        let mut h = Harness::with_limits(
            Timers::default(),
            Limits {
                max_bytes: max,
                source_bytes: max,
            },
        );
        let a = new_id(h.request("z9hG4bK1", Method::Options, tcp()));
        let _b = new_id(h.request("z9hG4bK2", Method::Options, tcp()));
        assert_eq!(
            h.request("z9hG4bK3", Method::Options, tcp()),
            RequestDisposition::Overloaded
        );
        assert_eq!(h.l.stats().refused, 1);
        // BYE and CANCEL end calls: they may use a reserve above the bound (a quarter)...
        let cancel = match h.request("z9hG4bK3", Method::Cancel, tcp()) {
            RequestDisposition::Cancel { tx, target: None } => tx,
            other => panic!("CANCEL uses the reserve: {other:?}"),
        };
        // ...but the reserve is bounded too.
        assert_eq!(
            h.l.send_request(h.now, b("z9hG4bK4"), Method::Bye, b("BYE"), udp()),
            Err(TxError::Overloaded)
        );
        // Existing transactions are still matched, and ACKs need no room.
        assert_eq!(
            h.request("z9hG4bK1", Method::Options, tcp()),
            RequestDisposition::Retransmission(a)
        );
        assert_eq!(
            h.request("z9hG4bK9", Method::Ack, udp()),
            RequestDisposition::AckFor2xx
        );
        assert!(h.l.stats().bytes <= max + max / 4);
        h.answer(a, 200, "200"); // TCP: Timer J = 0 frees the room at once.
        h.answer(cancel, 481, "481");
        assert!(matches!(
            h.request("z9hG4bK3", Method::Options, tcp()),
            RequestDisposition::New(_)
        ));
    }

    /// Lingering state (here Timer J, keeping each final response) never makes a request fail:
    /// over the bound the oldest is evicted, and a retransmission of an evicted request is simply
    /// a new request again (answered as a stateless server would).
    #[test]
    fn lingering_state_is_evicted_never_refused() {
        let c = one_server_tx();
        let max = 4 * c;
        let mut h = Harness::with_limits(
            Timers::default(),
            Limits {
                max_bytes: max,
                source_bytes: max,
            },
        );
        let branches = [
            "z9hG4bKa0",
            "z9hG4bKa1",
            "z9hG4bKa2",
            "z9hG4bKa3",
            "z9hG4bKa4",
            "z9hG4bKa5",
            "z9hG4bKa6",
            "z9hG4bKa7",
            "z9hG4bKa8",
            "z9hG4bKa9",
        ];
        let mut ids = Vec::new();
        for br in branches {
            let id = new_id(h.request(br, Method::Register, udp()));
            h.answer(
                id,
                200,
                "SIP/2.0 200 OK (a response of some length, kept for Timer J)",
            );
            ids.push(id);
            let st = h.l.stats();
            assert!(st.bytes <= max, "{st:?}");
            assert_eq!(st.live, 0);
        }
        let st = h.l.stats();
        assert!(st.evicted >= 6, "{st:?}");
        assert_eq!(st.refused, 0);
        assert_eq!(st.lingering as u64 + st.evicted, 10);
        // The newest is still absorbed (its 200 re-sent); the oldest is gone: a new transaction.
        h.take_sent();
        assert_eq!(
            h.request("z9hG4bKa9", Method::Register, udp()),
            RequestDisposition::Retransmission(ids[9])
        );
        assert_eq!(h.take_sent().len(), 1);
        assert_eq!(h.l.server_state(ids[0]), None);
        assert!(matches!(
            h.request("z9hG4bKa0", Method::Register, udp()),
            RequestDisposition::New(_)
        ));
        // Eviction reports the end like any termination.
        assert!(h
            .take_events()
            .contains(&(Duration::ZERO, TxEvent::Terminated(TxId::Server(ids[0])))));
    }

    /// One source (an IPv4 address, an IPv6 /64) may hold only its share of live transactions;
    /// others still get theirs.
    #[test]
    fn one_source_cannot_fill_the_table() {
        let c = one_server_tx();
        let mut h = Harness::with_limits(
            Timers::default(),
            Limits {
                max_bytes: 10 * c,
                source_bytes: 3 * c + c / 2,
            },
        );
        let peer = |a: &str| Peer {
            addr: a.parse().unwrap(),
            transport: Transport::Udp,
            conn: 0,
        };
        let req = |h: &mut Harness, br: String, from: &str| {
            let info = RequestInfo {
                method: Method::Invite,
                branch: Bytes::from(br),
                sent_by: b("192.0.2.10:5060"),
            };
            let p = peer(from);
            let d = h.l.on_request_info_from(h.now, info, p, p.addr.ip(), false);
            h.drain();
            d
        };
        for i in 0..3 {
            assert!(matches!(
                req(&mut h, format!("z9hG4bKf{i}"), "[2001:db8:1:2::66]:5060"),
                RequestDisposition::New(_)
            ));
        }
        // The same /64 from another address is the same source.
        assert_eq!(
            req(&mut h, "z9hG4bKf3".into(), "[2001:db8:1:2::67]:5060"),
            RequestDisposition::Overloaded
        );
        assert_eq!(h.l.stats().refused_source, 1);
        assert_eq!(h.l.stats().sources, 1);
        // Another /64 and an IPv4 source are served.
        assert!(matches!(
            req(&mut h, "z9hG4bKg0".into(), "[2001:db8:1:3::66]:5060"),
            RequestDisposition::New(_)
        ));
        assert!(matches!(
            req(&mut h, "z9hG4bKh0".into(), "198.51.100.7:5060"),
            RequestDisposition::New(_)
        ));
        assert_eq!(h.l.stats().sources, 3);
    }

    /// A request's key is copied out of the received datagram: a large request does not stay
    /// pinned in memory for the transaction's lifetime (nor does the receive buffer it is a
    /// slice of), and what the table holds is charged.
    #[test]
    fn a_large_request_is_not_kept() {
        let mut h = Harness::new(Timers::default());
        // 56 KB: seven 8 000-octet headers (the longest a header may be).
        let padding: String = (0..7)
            .map(|i| format!("X-Pad-{i}: {}\r\n", "x".repeat(8000)))
            .collect();
        let text = format!(
            "OPTIONS sip:pbx.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbig\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@pbx.example>;tag=1\r\nTo: <sip:pbx.example>\r\n\
             Call-ID: big@192.0.2.10\r\nCSeq: 1 OPTIONS\r\n{padding}Content-Length: 0\r\n\r\n"
        );
        assert!(text.len() > 56_000);
        let buf = Bytes::from(text);
        let msg = podpbx_sip::Message::parse(buf.clone(), podpbx_sip::Framing::Datagram).unwrap();
        let id = match h
            .l
            .on_request_from(h.now, &msg, udp(), "192.0.2.10".parse().unwrap())
        {
            RequestDisposition::New(id) => id,
            other => panic!("{other:?}"),
        };
        drop(msg);
        assert!(
            buf.is_unique(),
            "the layer keeps a reference to the receive buffer"
        );
        assert!(h.l.stats().bytes < 1024, "{:?}", h.l.stats());
        h.answer(id, 200, "SIP/2.0 200 OK");
        assert!(buf.is_unique());
        assert!(h.l.stats().bytes < 1024, "{:?}", h.l.stats());
        // The copied key still matches the retransmission.
        let again = podpbx_sip::Message::parse(buf.clone(), podpbx_sip::Framing::Datagram).unwrap();
        assert_eq!(
            h.l.on_request_from(h.now, &again, udp(), "192.0.2.10".parse().unwrap()),
            RequestDisposition::Retransmission(id)
        );
    }

    /// RFC 6026 Timer L keeps an accepted INVITE 64*T1; once the ACK for its 2xx came, a
    /// retransmitted INVITE can only be a delayed one (T4), so it lingers T4 from the ACK.
    #[test]
    fn accepted_invite_lingers_t4_after_its_ack() {
        let mut h = Harness::new(Timers::default());
        let acked = new_id(h.request("z9hG4bKl1", Method::Invite, udp()));
        let unacked = new_id(h.request("z9hG4bKl2", Method::Invite, udp()));
        h.answer(acked, 200, "200");
        h.answer(unacked, 200, "200");
        h.run_until(ms(1000));
        assert_eq!(
            h.request("z9hG4bKl1", Method::Ack, udp()),
            RequestDisposition::AckFor2xx
        );
        h.take_events();
        h.run_until(Duration::from_secs(40));
        assert_eq!(
            h.take_events(),
            vec![
                (ms(6000), TxEvent::Terminated(TxId::Server(acked))),
                (
                    Duration::from_secs(32),
                    TxEvent::Terminated(TxId::Server(unacked))
                ),
            ]
        );
        assert!(h.l.is_empty());
        assert_eq!(
            h.l.stats(),
            TxStats {
                max_bytes: Limits::default().max_bytes,
                source_bytes: Limits::default().source_bytes,
                slots: h.l.stats().slots,
                ..TxStats::default()
            }
        );
    }

    /// After a load has passed, the tables give their room back, and an id from before the
    /// shrink never finds a transaction that took its slot afterwards.
    #[test]
    fn a_load_that_passed_gives_its_room_back() {
        let big = Limits {
            max_bytes: 1 << 30,
            source_bytes: 1 << 30,
        };
        let mut h = Harness::with_limits(Timers::default(), big);
        let branch =
            |i: usize| -> &'static str { Box::leak(format!("z9hG4bKload{i}").into_boxed_str()) };
        let mut ids = Vec::new();
        for i in 0..20_000 {
            let id = new_id(h.request(branch(i), Method::Options, udp()));
            h.answer(id, 200, "200");
            ids.push(id);
        }
        // Two stragglers answered 20 s later: they linger past the load's end.
        h.run_until(Duration::from_secs(20));
        let late = [
            new_id(h.request("z9hG4bKlate1", Method::Options, udp())),
            new_id(h.request("z9hG4bKlate2", Method::Options, udp())),
        ];
        for id in late {
            h.answer(id, 200, "200");
        }
        let peak = h.l.stats().slots;
        assert!(peak >= 20_000, "{peak}");
        assert!(!h.l.shrink(), "nearly full: nothing to give back");
        // Timer J (32 s) ends the load's transactions; the stragglers still linger.
        h.run_until(Duration::from_secs(40));
        assert_eq!(h.l.len(), 2);
        assert!(h.l.shrink());
        let slots = h.l.stats().slots;
        assert!(
            (20_002..peak).contains(&slots),
            "cut down to the stragglers at the end: {slots} of {peak}"
        );
        // New work reuses the lowest slots; once the stragglers are gone the tail can go.
        let fresh: Vec<ServerTxId> = (0..100)
            .map(|i| new_id(h.request(branch(100_000 + i), Method::Options, udp())))
            .collect();
        h.run_until(Duration::from_secs(60));
        assert_eq!(
            h.l.len(),
            100,
            "the stragglers expired, the fresh ones are live"
        );
        h.l.shrink();
        let after = h.l.stats().slots;
        assert!(
            after <= 2_048,
            "room for 100 live transactions: {after} slots"
        );
        // Every id of the load is stale, whatever took its slot since.
        let again: Vec<ServerTxId> = (0..20_000)
            .map(|i| new_id(h.request(branch(200_000 + i), Method::Options, udp())))
            .collect();
        assert!(
            ids.iter().all(|id| h.l.server_state(*id).is_none()),
            "an old id matched a new transaction"
        );
        assert!(late.iter().all(|id| h.l.server_state(*id).is_none()));
        assert!(fresh
            .iter()
            .chain(&again)
            .all(|id| h.l.server_state(*id).is_some()));
    }

    /// A client transaction drops its request once nothing will retransmit it.
    #[test]
    fn client_request_is_dropped_once_answered() {
        let mut h = Harness::new(Timers::default());
        let big: &'static str = Box::leak("OPTIONS ".repeat(2000).into_boxed_str());
        let id = h.send("z9hG4bKr", Method::Options, big, udp());
        assert!(h.l.stats().live_bytes > big.len());
        h.respond_info("z9hG4bKr", Method::Options, 200);
        assert_eq!(h.l.client_state(id), Some(ClientState::Completed));
        let st = h.l.stats();
        assert_eq!((st.live, st.lingering, st.live_bytes), (0, 1, 0));
        assert!(st.bytes < 1024, "{st:?}");
    }

    #[test]
    fn transport_error_fails_every_transaction_on_the_peer() {
        let mut h = Harness::new(Timers::default());
        let c = h.send("z9hG4bKt", Method::Invite, "INVITE", tcp());
        let s = new_id(h.request("z9hG4bKu", Method::Invite, tcp()));
        let keep = h.send("z9hG4bKv", Method::Options, "OPTIONS", udp());
        h.take_events();
        h.l.on_transport_error(tcp());
        assert_eq!(
            h.take_events(),
            vec![
                (Duration::ZERO, TxEvent::TransportError(TxId::Client(c))),
                (Duration::ZERO, TxEvent::Terminated(TxId::Client(c))),
                (Duration::ZERO, TxEvent::TransportError(TxId::Server(s))),
                (Duration::ZERO, TxEvent::Terminated(TxId::Server(s))),
            ]
        );
        assert_eq!(h.l.len(), 1);
        assert_eq!(h.l.client_state(keep), Some(ClientState::Trying));
    }

    #[test]
    fn tu_can_terminate_a_transaction() {
        let mut h = Harness::new(Timers::default());
        let c = h.send("z9hG4bKt", Method::Invite, "INVITE", udp());
        h.respond_info("z9hG4bKt", Method::Invite, 180);
        assert!(h.l.terminate(TxId::Client(c)));
        assert!(!h.l.terminate(TxId::Client(c)));
        assert_eq!(
            h.take_events(),
            vec![(Duration::ZERO, TxEvent::Terminated(TxId::Client(c)))]
        );
        assert_eq!(
            h.respond_info("z9hG4bKt", Method::Invite, 200),
            ResponseDisposition::Stray
        );
        assert!(h.l.is_empty());
    }

    #[test]
    fn stateless_sends_are_queued() {
        let mut h = Harness::new(Timers::default());
        h.l.send_stateless(udp(), b("ACK for 2xx"));
        let t = h.l.poll_transmit().unwrap();
        assert_eq!((t.peer, t.data), (udp(), b("ACK for 2xx")));
        assert!(h.l.poll_transmit().is_none());
    }

    // ----- timer machinery -----------------------------------------------------------------------

    #[test]
    fn late_handle_timeout_fires_everything_due_once() {
        let mut h = Harness::new(Timers::default());
        let id = h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        h.take_sent();
        // One call long after every deadline: one retransmission, then B ends the transaction.
        h.l.handle_timeout(h.t0 + Duration::from_secs(3600));
        let mut n = 0;
        while h.l.poll_transmit().is_some() {
            n += 1;
        }
        assert_eq!(n, 1);
        assert_eq!(h.l.poll_event(), Some(TxEvent::Timeout(TxId::Client(id))));
        assert_eq!(h.l.poll_timeout(), None);
    }

    #[test]
    fn zero_timer_config_does_not_spin() {
        let zero = Timers {
            t1: Duration::ZERO,
            t2: Duration::ZERO,
            t4: Duration::ZERO,
        };
        let mut h = Harness::new(zero);
        let c = h.send("z9hG4bKa", Method::Options, "OPTIONS", udp());
        let s = new_id(h.request("z9hG4bKs", Method::Invite, udp()));
        h.answer(s, 500, "500");
        h.run_until(Duration::from_secs(1));
        assert_eq!(h.l.client_state(c), None);
        assert_eq!(h.l.server_state(s), None);
        assert!(h.l.is_empty());
    }

    #[test]
    fn huge_timers_do_not_overflow() {
        let huge = Timers {
            t1: Duration::MAX,
            t2: Duration::MAX,
            t4: Duration::MAX,
        };
        let mut h = Harness::new(huge);
        let c = h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        h.run_until(Duration::from_secs(3600));
        assert_eq!(h.l.client_state(c), Some(ClientState::Calling));
    }

    #[test]
    fn poll_timeout_tracks_the_earliest_deadline() {
        let mut h = Harness::new(Timers::default());
        assert_eq!(h.l.poll_timeout(), None);
        let s = new_id(h.request("z9hG4bKs", Method::Options, udp()));
        assert_eq!(h.l.poll_timeout(), Some(h.t0 + Duration::from_secs(32)));
        h.run_until(ms(100));
        h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        assert_eq!(h.l.poll_timeout(), Some(h.t0 + ms(600)));
        h.answer(s, 200, "200");
        assert_eq!(h.l.poll_timeout(), Some(h.t0 + ms(600)));
    }

    #[test]
    fn live_and_lingering_deadlines_are_told_apart() {
        let mut h = Harness::new(Timers::default());
        let s = new_id(h.request("z9hG4bKs", Method::Options, udp()));
        // Unanswered: the guard must fire on time.
        assert_eq!(
            h.l.poll_live_timeout(),
            Some(h.t0 + Duration::from_secs(32))
        );
        assert_eq!(h.l.poll_linger_timeout(), None);
        h.run_until(ms(100));
        h.answer(s, 200, "200");
        // Answered: Timer J only absorbs retransmitted requests.
        assert_eq!(h.l.poll_live_timeout(), None);
        let j = h.t0 + ms(100) + Duration::from_secs(32);
        assert_eq!(h.l.poll_linger_timeout(), Some(j));
        h.send("z9hG4bKa", Method::Invite, "INVITE", udp());
        // Timer A is live; the earliest of both is still the overall deadline.
        assert_eq!(h.l.poll_live_timeout(), Some(h.t0 + ms(600)));
        assert_eq!(h.l.poll_linger_timeout(), Some(j));
        assert_eq!(h.l.poll_timeout(), Some(h.t0 + ms(600)));
    }

    #[test]
    fn many_transactions_fire_in_order() {
        let mut h = Harness::new(Timers::default());
        let mut ids = Vec::new();
        for i in 0..2000u64 {
            h.now = h.t0 + ms(i);
            let info = RequestInfo {
                method: Method::Options,
                branch: Bytes::from(format!("z9hG4bK{i}")),
                sent_by: b("192.0.2.10:5060"),
            };
            ids.push(new_id(h.l.on_request_info(h.now, info, udp())));
        }
        h.run_until(Duration::from_secs(60));
        let timeouts: Vec<_> = h
            .take_events()
            .into_iter()
            .filter_map(|(t, e)| match e {
                TxEvent::Timeout(TxId::Server(id)) => Some((t, id)),
                _ => None,
            })
            .collect();
        assert_eq!(timeouts.len(), 2000);
        for (i, (t, id)) in timeouts.iter().enumerate() {
            assert_eq!(*id, ids[i]);
            assert_eq!(*t, Duration::from_secs(32) + ms(i as u64));
        }
        assert!(h.l.is_empty());
    }
}
