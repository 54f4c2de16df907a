#!/usr/bin/env python3
"""Writes the checked-in seed corpus (fuzz/corpus/<target>/seed-*): the RFC 4475/5118 torture
messages from tests/data/conformance, plus hand-written SIP
messages, SDP bodies, digest header values and RTP/RTCP/STUN/DTLS packets. Re-run after
changing the seeds; files the fuzzer minimised into the corpus (not named seed-*) are kept."""
import hashlib, os, struct, sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
conf = os.path.join(root, "tests", "data", "conformance")

def put(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

def crlf(s):
    return s.replace("\r\n", "\n").replace("\n", "\r\n")

# ---------------------------------------------------------------------------------- SIP
if not os.path.isdir(conf):
    sys.exit(f"conformance messages not found at {conf}")
for sub in ("rfc4475", "rfc5118"):
    for f in sorted(os.listdir(os.path.join(conf, sub))):
        with open(os.path.join(conf, sub, f), "rb") as fh:
            put("sip_message", f"{sub}-{f}", fh.read())

SDP_V4 = crlf("""v=0
o=- 1 1 IN IP4 192.0.2.7
s=-
c=IN IP4 192.0.2.7
t=0 0
m=audio 4000 RTP/AVP 0 8 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
""")
def req(method, uri, extra="", body="", ctype="application/sdp", via="SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKseed1;rport"):
    ct = f"Content-Type: {ctype}\r\n" if body else ""
    return (f"{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
            f"From: \"Kitchen\" <sip:1001@pbx.example>;tag=f1\r\nTo: <sip:1002@pbx.example>\r\n"
            f"Call-ID: seed-{method}@192.0.2.7\r\nCSeq: 1 {method}\r\n{extra}{ct}"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}")
put("sip_message", "invite-sdp", req("INVITE", "sip:1002@pbx.example", "Contact: <sip:1001@192.0.2.7:5062>\r\n", SDP_V4))
put("sip_message", "invite-v6", req("INVITE", "sip:0049301234@[2001:db8::1]:5060;user=phone", "Route: <sip:[2001:db8::1];lr>\r\nRecord-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n", SDP_V4, via="SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bKv6;rport"))
put("sip_message", "register-auth", req("REGISTER", "sip:pbx.example",
    "Contact: <sip:1001@192.0.2.7:5062;transport=udp>;expires=3600;q=0.7, <sip:1001@[2001:db8::7]>;+sip.instance=\"<urn:uuid:1>\"\r\n"
    "Authorization: Digest username=\"1001\", realm=\"podpbx\", nonce=\"abc\", uri=\"sip:pbx.example\", response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"x\"\r\n"
    "Expires: 3600\r\nUser-Agent: friendly-scanner\r\n"))
put("sip_message", "register-star", req("REGISTER", "sip:pbx.example", "Contact: *\r\nExpires: 0\r\n"))
put("sip_message", "options-compact", "OPTIONS sip:pbx.example SIP/2.0\r\nv: SIP/2.0/TCP 192.0.2.7;branch=z9hG4bKc\r\nf: <sip:a@b>;tag=1\r\nt: <sip:c@d>\r\ni: x@y\r\nCSeq: 9 OPTIONS\r\nk: path, outbound\r\nRequire: 100rel\r\nl: 0\r\n\r\n")
put("sip_message", "message-text", req("MESSAGE", "sip:pbx.example", body="ding dong", ctype="text/plain"))
put("sip_message", "cancel", req("CANCEL", "sip:1002@pbx.example"))
put("sip_message", "bye-in-dialog", req("BYE", "sip:1002@pbx.example").replace("To: <sip:1002@pbx.example>", "To: <sip:1002@pbx.example>;tag=abc"))
put("sip_message", "two-in-stream", req("OPTIONS", "sip:a") + "\r\n\r\n" + req("OPTIONS", "sip:b"))
put("sip_message", "folded", "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKf\r\n ;rport\r\nFrom: <sip:a@b>\r\n\t;tag=1\r\nTo: \"quoted\\\"name\" <sip:c@d>\r\nCall-ID: f@x\r\nCSeq: 1 OPTIONS\r\nDate: Sat, 13 Nov 2010 23:29:00 GMT\r\nContent-Length: 0\r\n\r\n")
for code, reason, extra in [
    (401, "Unauthorized", "WWW-Authenticate: Digest realm=\"prov\", nonce=\"n1\", qop=\"auth\", algorithm=MD5\r\n"),
    (486, "Busy Here", ""),
    (200, "OK", "Contact: <sip:1001@192.0.2.7>;expires=60\r\n"),
    (100, "Trying", ""),
]:
    put("sip_message", f"response-{code}",
        f"SIP/2.0 {code} {reason}\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKours;received=192.0.2.1;rport=5060\r\n"
        f"From: <sip:podpbx@pbx.example>;tag=a1\r\nTo: <sip:1001@pbx.example>;tag=b2\r\nCall-ID: c@podpbx\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n")

# ---------------------------------------------------------------------------------- SDP
put("sdp", "basic-v4", SDP_V4)
put("sdp", "v6-two-streams", crlf("""v=0
o=alice 2890844526 2890844527 IN IP6 2001:db8::7
s=call
c=IN IP6 2001:db8::7
t=0 0
m=audio 49170 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=rtcp:49999 IN IP6 2001:db8::8
a=ptime:20
m=video 0 RTP/AVP 31
a=rtpmap:31 H261/90000
"""))
put("sdp", "hold-zero", crlf("""v=0
o=- 5 6 IN IP4 0.0.0.0
s=-
c=IN IP4 0.0.0.0
t=0 0
m=audio 4000 RTP/AVP 0
a=recvonly
"""))
put("sdp", "media-level-c-ice", crlf("""v=0
o=- 1 1 IN IP4 192.0.2.7
s=-
t=0 0
a=sendonly
a=ice-ufrag:abcd
m=audio 5004 RTP/SAVPF 111 0
i=main audio
c=IN IP4 192.0.2.7
a=candidate:1 1 UDP 2130706431 192.0.2.7 5004 typ host
a=end-of-candidates
a=rtcp-mux
a=rtcp:5004
a=rtpmap:111 opus/48000/2
m=audio 5006 RTP/AVP 8
c=IN IP6 doorbell.example
"""))
put("sdp", "bare-lf-fqdn", "v=0\no=- 1 1 IN IP4 gw.example\ns=-\nc=IN IP4 gw.example\nt=0 0\nm=audio 7078 RTP/AVP 0 8 18 101\na=rtpmap:18 G729/8000\na=fmtp:18 annexb=no\na=inactive")
put("sdp", "multicast-ttl", crlf("""v=0
o=- 1 1 IN IP4 192.0.2.7
s=-
c=IN IP4 233.252.0.1/127/2
t=0 0
m=audio 6000/2 RTP/AVP 0
"""))

# ---------------------------------------------------------------------------------- digest
for i, v in enumerate([
    'Digest realm="podpbx", nonce="0000018c2b1a2f3e0000000000000001a1b2c3d4e5f60718293a4b5c6d7e8f90", qop="auth", algorithm=MD5',
    'Digest realm="sip.provider.example", domain="sip:provider.example", nonce="YWJj", opaque="xyz", stale=TRUE, algorithm=SHA-256, qop="auth,auth-int"',
    'Digest realm="r", nonce="n", algorithm=MD5-sess, qop="auth"\nDigest realm="r", nonce="n", algorithm=SHA-256-sess, qop="auth", userhash=true',
    'Digest username="1001", realm="podpbx", nonce="abc", uri="sip:pbx.example", response="0123456789abcdef0123456789abcdef", algorithm=MD5, qop=auth, nc=00000001, cnonce="0a4f113b", opaque="5ccc"',
    'Digest username="a\\"b", realm="podpbx", nonce="n", uri=sip:pbx.example, response="x"',
    'Basic dXNlcjpwYXNz',
    'NewAuth realm="WallyWorld"',
    'Digest realm="r",,nonce="n" ,  stale=false',
]):
    put("digest", f"value-{i}", v)

# ---------------------------------------------------------------------------------- RTP
def rtp(pt, seq, ts, ssrc, payload=b"", marker=0, csrc=(), ext=None, pad=0):
    b0 = 0x80 | len(csrc) | (0x10 if ext is not None else 0) | (0x20 if pad else 0)
    out = bytes([b0, (marker << 7) | pt]) + struct.pack(">HII", seq, ts, ssrc)
    for c in csrc:
        out += struct.pack(">I", c)
    if ext is not None:
        out += struct.pack(">HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if pad:
        out += bytes(pad - 1) + bytes([pad])
    return out
put("rtp_classify", "pcmu", rtp(0, 1000, 160, 0x1234, b"\xff" * 160))
put("rtp_classify", "csrc-ext-pad", rtp(8, 7, 8, 9, b"\x55" * 20, marker=1, csrc=(1, 2), ext=b"\x10\x01\x00\x00", pad=4))
put("rtp_classify", "telephone-event", rtp(101, 5, 800, 0xabc, bytes([5, 0x8a, 0x03, 0x20]), marker=1))
put("rtp_classify", "rtcp-sr", bytes([0x80, 200, 0, 6]) + struct.pack(">I", 0x1234) + bytes(20))
put("rtp_classify", "rtcp-rr-short", bytes([0x81, 201, 0, 1]) + struct.pack(">I", 5))
put("rtp_classify", "stun-binding", struct.pack(">HHI", 1, 0, 0x2112A442) + bytes(12))
put("rtp_classify", "dtls-hello", bytes([22, 0xfe, 0xfd]) + bytes(10))
put("rtp_classify", "ext-past-end", bytes([0x90, 0]) + bytes(10) + struct.pack(">HH", 0xBEDE, 0xffff))
print("seed corpus written")
