//! Every call ends by timers alone, whatever the peers do or do not send (the overload bench,
//! `benches/overload.sh`, left calls up whose caller gave up): virtual time, peers that vanish.

use super::*;

/// Runs the timers for `d`, failing every request of ours that goes out on the way as its
/// client transaction would (Timer B/F: nobody answers), in steps of one second.
fn vanish(h: &mut H, d: Duration) {
    let end = h.now + d;
    while h.now < end {
        let outs = h.advance(Duration::from_secs(1));
        for o in outs {
            if let Output::Request { id, .. } = o {
                h.b.request_failed(h.now, id, &h.dir);
                h.drain();
            }
        }
    }
}

const CFG_NO_ST: &str =
    "[calls]\nsession_timer_secs = 0\nmax_duration_secs = 0\n[media]\ntimeout_secs = 0\n";
/// The same with the keep-alive on (every minute).
const CFG_KA: &str = "[calls]\nsession_timer_secs = 0\nmax_duration_secs = 0\nkeepalive_secs = 60\n[media]\ntimeout_secs = 0\n";

fn cfg_no_st() -> String {
    format!("{CFG_NO_ST}{CFG}")
}

/// Answered, the caller's ACK came, then both peers vanish (no BYE ever arrives).
#[test]
fn answered_call_whose_peers_vanish_ends() {
    let mut h = H::new();
    answered_call(&mut h);
    vanish(&mut h, Duration::from_secs(3600));
    assert_eq!(h.b.active_calls(), 0, "{:?}", h.b.snapshot(h.now));
}

/// Without session timers and media timeout, the default `max_duration` (4 h) still ends it.
#[test]
fn answered_call_whose_peers_vanish_ends_by_max_duration() {
    let mut h = H::with_config(&format!(
        "[calls]\nsession_timer_secs = 0\n[media]\ntimeout_secs = 0\n{CFG}"
    ));
    answered_call(&mut h);
    vanish(&mut h, Duration::from_secs(4 * 3600 + 120));
    assert_eq!(h.b.active_calls(), 0, "{:?}", h.b.snapshot(h.now));
}

/// No session timer, no media timeout, no `max_duration`: only the keep-alive ends it.
#[test]
fn answered_call_whose_peers_vanish_ends_by_keepalive() {
    let mut h = H::with_config(&format!("{CFG_KA}{CFG}"));
    answered_call(&mut h);
    vanish(&mut h, Duration::from_secs(300));
    assert_eq!(h.b.active_calls(), 0, "{:?}", h.b.snapshot(h.now));
    assert_eq!(cdr(&h.outs).unwrap().reason, "dialog_gone");
}

/// Answered but the caller never ACKs (it gave up): 64*T1, then BYEs nobody answers.
#[test]
fn answered_call_without_ack_ends() {
    let mut h = H::with_config(&cfg_no_st());
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.answer(id, &data, 180, "btag", None);
    h.answer(id, &data, 200, "btag", Some(SDP_B));
    vanish(&mut h, Duration::from_secs(600));
    assert_eq!(h.b.active_calls(), 0, "{:?}", h.b.snapshot(h.now));
}

/// The callee never answers anything (not even 100), nobody reports a timeout.
#[test]
fn callee_that_never_answers_ends() {
    let mut h = H::with_config(&cfg_no_st());
    h.invite("102", Caller::User("101".into()), Some(SDP_A));
    h.advance(Duration::from_secs(600));
    assert_eq!(h.b.active_calls(), 0, "{:?}", h.b.snapshot(h.now));
}

/// The callee rings (180) and then goes silent: ring timeout, CANCEL unanswered.
#[test]
fn callee_that_rings_then_vanishes_ends() {
    let mut h = H::with_config(&cfg_no_st());
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.answer(id, &data, 180, "btag", None);
    h.advance(Duration::from_secs(600));
    assert_eq!(h.b.active_calls(), 0, "{:?}", h.b.snapshot(h.now));
}

/// The caller CANCELs; the callee's 2xx crosses the CANCEL; nobody answers our BYE.
#[test]
fn cancelled_call_with_crossing_2xx_ends() {
    let mut h = H::with_config(&cfg_no_st());
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.answer(id, &data, 180, "btag", None);
    let tx = *h.b.by_invite_tx.keys().next().unwrap();
    h.b.handle_cancel(h.now, tx);
    h.drain();
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    assert_eq!(stateless_acks(&outs), 1);
    assert_eq!(requests(&outs, "BYE").len(), 1);
    // Ending calls are listed (the admin API's /api/calls) and counted (podpbx_calls_active)
    // alike, from the same table.
    let listed = h.b.snapshot(h.now);
    assert_eq!(listed.len(), h.b.active_calls());
    assert_eq!(listed[0]["state"], "ending");
    h.advance(Duration::from_secs(600));
    assert_eq!(h.b.active_calls(), 0, "{:?}", h.b.snapshot(h.now));
}

/// The callee's 2xx comes after the ring timeout gave the caller 480.
#[test]
fn late_2xx_after_ring_timeout_ends() {
    let mut h = H::with_config(&cfg_no_st());
    let outs = h.invite("102", Caller::User("101".into()), Some(SDP_A));
    let (id, data) = requests(&outs, "INVITE")[0].clone();
    h.advance(Duration::from_secs(16));
    let outs = h.answer(id, &data, 200, "btag", Some(SDP_B));
    assert_eq!(stateless_acks(&outs), 1);
    h.advance(Duration::from_secs(600));
    assert_eq!(h.b.active_calls(), 0, "{:?}", h.b.snapshot(h.now));
}

/// The keep-alive: OPTIONS on both legs every minute; a `200` keeps the call, a `481` ends it
/// (BYE on the other leg). Off by default: no OPTIONS.
#[test]
fn keepalive_options_keep_a_live_call_and_end_a_gone_one() {
    let mut h = H::with_config(&format!("{CFG_KA}{CFG}"));
    answered_call(&mut h);
    let outs = h.advance(Duration::from_secs(61));
    let opts = requests(&outs, "OPTIONS");
    assert_eq!(opts.len(), 2, "one per leg");
    for (id, data) in &opts {
        h.answer(*id, data, 200, "x", None);
    }
    assert_eq!(h.b.active_calls(), 1, "alive");
    let outs = h.advance(Duration::from_secs(60));
    let opts = requests(&outs, "OPTIONS");
    assert_eq!(opts.len(), 2);
    h.answer(opts[1].0, &opts[1].1, 200, "x", None);
    let outs = h.answer(opts[0].0, &opts[0].1, 481, "x", None);
    assert_eq!(requests(&outs, "BYE").len(), 1, "the other leg is hung up");
    h.advance(Duration::from_secs(600));
    assert_eq!(h.b.active_calls(), 0);
    assert_eq!(cdr(&h.outs).unwrap().reason, "dialog_gone");

    // Off by default.
    let mut h = H::with_config(&cfg_no_st());
    answered_call(&mut h);
    let outs = h.advance(Duration::from_secs(300));
    assert!(requests(&outs, "OPTIONS").is_empty());
}

/// The overload bench's stuck calls: default session timer (the caller's leg has one, we
/// refresh in 15 min), no media timeout, the caller gone after its ACK, the callee alive.
/// With the keep-alive the call ends within two minutes.
#[test]
fn answered_call_whose_caller_vanished_ends_within_minutes_with_keepalive() {
    let mut h = H::with_config(&format!(
        "[calls]\nkeepalive_secs = 60\n[media]\ntimeout_secs = 0\n{CFG}"
    ));
    answered_call(&mut h);
    let end = h.now + Duration::from_secs(150);
    while h.now < end {
        let outs = h.advance(Duration::from_secs(1));
        for (id, data) in requests(&outs, "OPTIONS") {
            if text(&data).contains("acall@a") {
                h.b.request_failed(h.now, id, &h.dir); // the caller: Timer F
            } else {
                h.answer(id, &data, 200, "x", None); // the callee answers
            }
            h.drain();
        }
        for (id, data) in requests(&outs, "BYE") {
            h.answer(id, &data, 200, "x", None);
        }
    }
    assert_eq!(h.b.active_calls(), 0, "{:?}", h.b.snapshot(h.now));
}
