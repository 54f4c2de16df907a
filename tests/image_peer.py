#!/usr/bin/env python3
"""The provider side of tests/image.sh, run in the test's LAN namespace: a DNS server that
knows one name, and a SIP catcher that waits for podpbx's first trunk REGISTER.

    image_peer.py DNS_IP NAME AAAA SIP_IP LIMIT_SECS

Answers queries for NAME on DNS_IP:53 (AAAA: the given address; other types: none) and
NXDOMAIN for any other name; answers every REGISTER on UDP [SIP_IP]:5060 with 200 OK (so the trunk is
registered and podpbx ready). Prints `dns <type> <name>` per query and `REGISTER from <addr>
expires <n>` per REGISTER; runs until LIMIT_SECS or SIGTERM. It shows that the static binary in
the scratch image resolves a trunk's name through /etc/resolv.conf (no NSS modules in the image)
and registers from the pinned address.
"""

import ipaddress
import select
import signal
import socket
import struct
import sys
import time


def dns_answer(query, name, aaaa):
    tid, _flags, qdcount = struct.unpack(">HHH", query[:6])
    if qdcount != 1:
        return None, "?", "?"
    i, labels = 12, []
    while query[i]:
        n = query[i]
        labels.append(query[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += n + 1
    qtype, qclass = struct.unpack(">HH", query[i + 1 : i + 5])
    qname = ".".join(labels).lower()
    question = query[12 : i + 5]
    kind = {1: "A", 28: "AAAA", 33: "SRV", 35: "NAPTR"}.get(qtype, str(qtype))
    if qname != name.lower():
        # NXDOMAIN (authoritative): e.g. the _sip._udp SRV name of RFC 3263.
        return struct.pack(">HHHHHH", tid, 0x8583, 1, 0, 0, 0) + question, kind, qname
    answers = b""
    count = 0
    if qtype == 28 and qclass == 1:
        answers = b"\xc0\x0c" + struct.pack(">HHIH", 28, 1, 30, 16) + ipaddress.IPv6Address(aaaa).packed
        count = 1
    # An authoritative answer, empty for A (the trunk is IPv6 only).
    return struct.pack(">HHHHHH", tid, 0x8580, 1, count, 0, 0) + question + answers, kind, qname


def sip_ok(request):
    """200 OK to a REGISTER: the request's Via, From, To (tagged), Call-ID, CSeq and Contact."""
    head = request.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
    keep = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
            "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq", "contact": "Contact", "m": "Contact"}
    lines, expires = ["SIP/2.0 200 OK"], "3600"
    for h in head[1:]:
        name, _, value = h.partition(":")
        key = name.strip().lower()
        value = value.strip()
        if key == "expires":
            expires = value
        if key not in keep:
            continue
        if keep[key] == "To" and ";tag=" not in value:
            value += ";tag=image-peer"
        lines.append(f"{keep[key]}: {value}")
    lines += [f"Expires: {expires}", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode(), expires


def main():
    dns_ip, name, aaaa, sip_ip, limit = sys.argv[1:6]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fam = socket.AF_INET6 if ":" in dns_ip else socket.AF_INET
    dns = socket.socket(fam, socket.SOCK_DGRAM)
    dns.bind((dns_ip, 53))
    sip = socket.socket(socket.AF_INET6 if ":" in sip_ip else socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind((sip_ip, 5060))
    print("peer up", flush=True)
    deadline = time.monotonic() + float(limit)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([dns, sip], [], [], max(0.0, deadline - time.monotonic()))
        for s in ready:
            data, src = s.recvfrom(65535)
            if s is dns:
                reply, kind, qname = dns_answer(data, name, aaaa)
                print(f"dns {kind} {qname}", flush=True)
                if reply:
                    dns.sendto(reply, src)
            elif data.startswith(b"REGISTER "):
                reply, expires = sip_ok(data)
                print(f"REGISTER from {src[0]} expires {expires}", flush=True)
                sip.sendto(reply, src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
