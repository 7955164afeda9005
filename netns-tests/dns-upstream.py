#!/usr/bin/env python3
"""dns-upstream.py: a tiny upstream resolver for the netns test bed (stdlib only).

    dns-upstream.py --bind ADDR --port PORT --mode servfail|zone [--log FILE]

Speaks the DNS wire format (RFC 1035) over UDP and TCP on ADDR:PORT.
  servfail  every query is answered SERVFAIL (an upstream that is broken)
  zone      ext.example. A  -> 203.0.113.7 (TTL 300)
            ext.example. any other type -> NOERROR, no answer, SOA in authority
            anything else  -> NXDOMAIN with the SOA of example. in authority
Each query is logged to FILE as one line "udp|tcp QNAME QTYPE" (flushed), so a
test can see what reached the upstream. Runs until killed.
"""
import argparse
import socket
import struct
import sys
import threading

A, SOA, IN = 1, 6, 1
EXT_NAME = "ext.example."
EXT_ADDR = "203.0.113.7"
ZONE = "example."


def parse_question(msg):
    """(id, flags, qname, qtype, qclass, end offset of the question) or None."""
    if len(msg) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", msg[:6])
    if qd < 1:
        return None
    labels, off = [], 12
    while True:
        if off >= len(msg):
            return None
        n = msg[off]
        off += 1
        if n == 0:
            break
        if n & 0xC0 or off + n > len(msg):
            return None
        labels.append(msg[off:off + n].decode("ascii", "replace"))
        off += n
    if off + 4 > len(msg):
        return None
    qtype, qclass = struct.unpack("!HH", msg[off:off + 4])
    return qid, flags, ".".join(labels) + ".", qtype, qclass, off + 4


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def rr(name, rtype, ttl, rdata):
    return encode_name(name) + struct.pack("!HHIH", rtype, IN, ttl, len(rdata)) + rdata


def soa_rr():
    rdata = (encode_name("ns." + ZONE) + encode_name("hostmaster." + ZONE)
             + struct.pack("!IIIII", 1, 3600, 600, 86400, 60))
    return rr(ZONE, SOA, 60, rdata)


def answer(msg, mode):
    """The response to one query message, or None for something unparseable."""
    q = parse_question(msg)
    if q is None:
        return None, None
    qid, flags, qname, qtype, qclass, end = q
    question = msg[12:end]
    rd = flags & 0x0100
    an, ns = [], []
    if mode == "servfail":
        rcode = 2
    elif qname.lower() == EXT_NAME:
        rcode = 0
        if qtype == A:
            an.append(rr(EXT_NAME, A, 300, socket.inet_aton(EXT_ADDR)))
        else:
            ns.append(soa_rr())
    else:
        rcode = 3                                           # NXDOMAIN
        ns.append(soa_rr())
    aa = 0x0400 if mode == "zone" else 0
    rflags = 0x8000 | aa | rd | 0x0080 | rcode                # QR, AA, RD copied, RA
    head = struct.pack("!HHHHHH", qid, rflags, 1, len(an), len(ns), 0)
    return head + question + b"".join(an) + b"".join(ns), (qname, qtype)


class Log:
    def __init__(self, path):
        self.f = open(path, "a") if path else None
        self.lock = threading.Lock()

    def __call__(self, proto, q):
        if self.f and q:
            with self.lock:
                self.f.write(f"{proto} {q[0]} {q[1]}\n")
                self.f.flush()


def serve_udp(sock, mode, log):
    while True:
        msg, peer = sock.recvfrom(65535)
        resp, q = answer(msg, mode)
        log("udp", q)
        if resp:
            sock.sendto(resp, peer)


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def serve_tcp_conn(conn, mode, log):
    conn.settimeout(5)
    try:
        while True:
            head = recv_exact(conn, 2)
            if head is None:
                return
            msg = recv_exact(conn, struct.unpack("!H", head)[0])
            if msg is None:
                return
            resp, q = answer(msg, mode)
            log("tcp", q)
            if resp is None:
                return
            conn.sendall(struct.pack("!H", len(resp)) + resp)
    except OSError:
        pass
    finally:
        conn.close()


def serve_tcp(sock, mode, log):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn, mode, log), daemon=True).start()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--mode", choices=["servfail", "zone"], required=True)
    p.add_argument("--log")
    a = p.parse_args()
    log = Log(a.log)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind((a.bind, a.port))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((a.bind, a.port))
    t.listen(64)
    threading.Thread(target=serve_tcp, args=(t, a.mode, log), daemon=True).start()
    print(f"dns-upstream: {a.mode} on {a.bind}:{a.port}", file=sys.stderr, flush=True)
    serve_udp(u, a.mode, log)


if __name__ == "__main__":
    main()
