//! Known-answer tests: RFC 3711 Appendix B.2 (AES-CM keystream) and B.3 (key derivation), and
//! the reference SRTP/SRTCP packets of libsrtp's `srtp_validate()` (default policy,
//! AES_CM_128_HMAC_SHA1_80); then the properties the relay relies on.

use super::*;
use aes::cipher::KeyInit;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn master_b3() -> MasterKey {
    let mut b = [0u8; 30];
    b[..16].copy_from_slice(&hex("E1F97A0D3E018BE0D64FA32C06DE4139"));
    b[16..].copy_from_slice(&hex("0EC675AD498AFEEBB6960B3AABE6"));
    MasterKey::from_bytes(&b)
}

#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let key: [u8; 16] = hex("2B7E151628AED2A6ABF7158809CF4F3C").try_into().unwrap();
    let cipher = Aes128::new(&key.into());
    let iv: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000").try_into().unwrap();
    // The vectors go up to counter ...FF01: 0xff02 blocks (1 MiB).
    let mut ks = vec![0u8; 16 * 0xff02];
    keystream_xor(&cipher, &iv, &mut ks);
    assert_eq!(ks[..16], hex("E03EAD0935C95E80E166B16DD92B4EB4")[..]);
    assert_eq!(ks[16..32], hex("D23513162B02D0F72A43A2FE4A5F97AB")[..]);
    assert_eq!(ks[32..48], hex("41E95B3BB0A2E8DD477901E4FCA894C0")[..]);
    let at = |n: usize| &ks[16 * n..16 * n + 16];
    assert_eq!(at(0xfeff), &hex("EC8CDF7398607CB0F2D21675EA9EA1E4")[..]);
    assert_eq!(at(0xff00), &hex("362B7C3C6773516318A077D7FC5073AE")[..]);
    assert_eq!(at(0xff01), &hex("6A2CC3787889374FBEB4C81B17BA6C44")[..]);
}

#[test]
fn rfc3711_b3_key_derivation() {
    let m = master_b3();
    let prf = Aes128::new(&m.key.into());
    let mut enc = [0u8; 16];
    let mut salt = [0u8; 14];
    let mut auth = [0u8; 20];
    derive(&prf, &m.salt, 0, &mut enc);
    derive(&prf, &m.salt, 2, &mut salt);
    derive(&prf, &m.salt, 1, &mut auth);
    assert_eq!(enc[..], hex("C61E7A93744F39EE10734AFE3FF7A087")[..]);
    assert_eq!(salt[..], hex("30CBBC08863D8C85D49DB34A9AE1")[..]);
    assert_eq!(
        auth[..],
        hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")[..]
    );
}

const RTP_PLAIN: &str = "800f1234decafbadcafebabe abababababababababababababababab";
const SRTP_80: &str =
    "800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc99ea179b8dbb";
const RTCP_PLAIN: &str = "81c8000bcafebabe abababababababababababababababab";
const SRTCP_80: &str =
    "81c8000bcafebabe 7128035be487b9bdbef89041f977a5a8 80000001 993e08cd54d6c1230798";

#[test]
fn libsrtp_reference_packets() {
    let m = master_b3();
    let plain = hex(RTP_PLAIN);
    let mut buf = [0u8; 64];
    buf[..plain.len()].copy_from_slice(&plain);
    let mut tx = Context::new(Suite::AesCm128HmacSha1_80, &m);
    let n = tx.protect_rtp(&mut buf, plain.len()).unwrap();
    assert_eq!(buf[..n], hex(SRTP_80)[..]);

    let mut rx = Context::new(Suite::AesCm128HmacSha1_80, &m);
    let mut pkt = hex(SRTP_80);
    let n = rx.unprotect_rtp(&mut pkt).unwrap();
    assert_eq!(pkt[..n], plain[..]);

    let plain = hex(RTCP_PLAIN);
    buf[..plain.len()].copy_from_slice(&plain);
    let n = tx.protect_rtcp(&mut buf, plain.len()).unwrap();
    assert_eq!(buf[..n], hex(SRTCP_80)[..]);
    let mut pkt = hex(SRTCP_80);
    let n = rx.unprotect_rtcp(&mut pkt).unwrap();
    assert_eq!(pkt[..n], plain[..]);
}

fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn pair(suite: Suite) -> (Context, Context) {
    let m = MasterKey::from_bytes(&[7u8; 30]);
    (Context::new(suite, &m), Context::new(suite, &m))
}

fn protect(tx: &mut Context, p: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; p.len() + MAX_OVERHEAD];
    buf[..p.len()].copy_from_slice(p);
    let n = tx.protect_rtp(&mut buf, p.len()).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn both_suites_round_trip_and_tags_have_their_length() {
    for (suite, tag) in [
        (Suite::AesCm128HmacSha1_80, 10),
        (Suite::AesCm128HmacSha1_32, 4),
    ] {
        let (mut tx, mut rx) = pair(suite);
        let p = rtp(1, 0x1234, &[0x55; 160]);
        let mut s = protect(&mut tx, &p);
        assert_eq!(s.len(), p.len() + tag);
        assert_ne!(s[12..172], p[12..], "payload encrypted");
        assert_eq!(s[..12], p[..12], "header in clear");
        let n = rx.unprotect_rtp(&mut s).unwrap();
        assert_eq!(s[..n], p[..]);
        assert_eq!(Suite::from_name(suite.name()), Some(suite));
    }
}

#[test]
fn corrupted_packets_fail_authentication_and_leave_no_trace() {
    let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80);
    let good = protect(&mut tx, &rtp(10, 0xabcd, &[1; 20]));
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert_eq!(rx.unprotect_rtp(&mut bad), Err(SrtpError::Auth), "byte {i}");
    }
    // Truncated or empty.
    assert_eq!(
        rx.unprotect_rtp(&mut good[..15].to_vec()),
        Err(SrtpError::Short)
    );
    assert_eq!(rx.unprotect_rtp(&mut []), Err(SrtpError::Short));
    // None of that created state: the genuine packet is still accepted.
    let mut ok = good.clone();
    assert!(rx.unprotect_rtp(&mut ok).is_ok());
    // A wrong key fails too.
    let mut other = Context::new(Suite::AesCm128HmacSha1_80, &MasterKey::from_bytes(&[8; 30]));
    assert_eq!(other.unprotect_rtp(&mut good.clone()), Err(SrtpError::Auth));
}

#[test]
fn replays_are_refused_reordering_within_the_window_is_not() {
    let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80);
    let pkts: Vec<Vec<u8>> = (100..200u16)
        .map(|s| protect(&mut tx, &rtp(s, 1, &[0; 10])))
        .collect();
    // Out of order: 150 first, then 120..150 (within 64), then 151...
    assert!(rx.unprotect_rtp(&mut pkts[50].clone()).is_ok());
    for p in &pkts[20..50] {
        assert!(rx.unprotect_rtp(&mut p.clone()).is_ok());
    }
    assert_eq!(
        rx.unprotect_rtp(&mut pkts[50].clone()),
        Err(SrtpError::Replay)
    );
    assert_eq!(
        rx.unprotect_rtp(&mut pkts[30].clone()),
        Err(SrtpError::Replay)
    );
    for p in &pkts[51..] {
        assert!(rx.unprotect_rtp(&mut p.clone()).is_ok());
    }
    // 100 is now more than 64 behind the top (199): too old.
    assert_eq!(
        rx.unprotect_rtp(&mut pkts[0].clone()),
        Err(SrtpError::Replay)
    );
}

#[test]
fn sequence_wrap_moves_the_rollover_counter() {
    let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_32);
    for i in 0..70_000u32 {
        let seq = (65_000 + i) as u16;
        let p = rtp(seq, 9, &[i as u8; 8]);
        let mut s = protect(&mut tx, &p);
        let n = rx
            .unprotect_rtp(&mut s)
            .unwrap_or_else(|e| panic!("packet {i} seq {seq}: {e}"));
        assert_eq!(s[..n], p[..]);
    }
    assert_eq!(rx.streams.iter().find(|s| s.ssrc == 9).unwrap().roc, 2);
}

#[test]
fn several_ssrcs_and_headers_with_csrcs_and_extensions() {
    let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80);
    // CC = 1 and an extension of one word.
    let mut p = vec![
        0x91, 0x00, 0, 5, 0, 0, 0, 1, 0, 0, 0, 2, 0xaa, 0xbb, 0xcc, 0xdd,
    ];
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
    p.extend_from_slice(&[9; 20]);
    let s = protect(&mut tx, &p);
    assert_eq!(s[..24], p[..24], "CSRC and extension stay in clear");
    let mut s2 = s.clone();
    assert_eq!(rx.unprotect_rtp(&mut s2).map(|n| s2[..n].to_vec()), Ok(p));
    for ssrc in 10..20u32 {
        let p = rtp(1, ssrc, &[3; 12]);
        let mut s = protect(&mut tx, &p);
        assert!(rx.unprotect_rtp(&mut s).is_ok(), "ssrc {ssrc}");
    }
    // A header that claims more than the packet holds.
    let mut bad = vec![0x8f, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    let n = bad.len();
    bad.extend_from_slice(&[0; 14]);
    assert_eq!(tx.protect_rtp(&mut bad, n), Err(SrtpError::Short));
}

#[test]
fn srtcp_round_trip_replay_and_corruption() {
    let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_32);
    let plain = hex(RTCP_PLAIN);
    let mut sent = Vec::new();
    for _ in 0..3 {
        let mut buf = vec![0u8; plain.len() + MAX_OVERHEAD];
        buf[..plain.len()].copy_from_slice(&plain);
        let n = tx.protect_rtcp(&mut buf, plain.len()).unwrap();
        assert_eq!(
            n,
            plain.len() + 14,
            "SRTCP keeps an 80-bit tag with the _32 suite"
        );
        buf.truncate(n);
        sent.push(buf);
    }
    for s in &sent {
        let mut c = s.clone();
        let n = rx.unprotect_rtcp(&mut c).unwrap();
        assert_eq!(c[..n], plain[..]);
    }
    assert_eq!(
        rx.unprotect_rtcp(&mut sent[1].clone()),
        Err(SrtpError::Replay)
    );
    let mut bad = sent[2].clone();
    bad[10] ^= 0x80;
    assert_eq!(rx.unprotect_rtcp(&mut bad), Err(SrtpError::Auth));
    assert_eq!(rx.unprotect_rtcp(&mut plain.clone()), Err(SrtpError::Auth));
}

#[test]
fn no_room_for_the_tag_is_an_error_not_a_panic() {
    let (mut tx, _) = pair(Suite::AesCm128HmacSha1_80);
    let p = rtp(1, 1, &[0; 10]);
    let mut buf = p.clone();
    assert_eq!(tx.protect_rtp(&mut buf, p.len()), Err(SrtpError::NoRoom));
    assert_eq!(tx.protect_rtp(&mut buf, p.len() + 1), Err(SrtpError::Short));
    assert_eq!(tx.protect_rtcp(&mut buf, 4), Err(SrtpError::Short));
}
