#!/usr/bin/env python3
"""Asks a Kafka broker for its cluster metadata (Metadata request v1, no topics) and
prints the brokers it reports. Exits non-zero unless the broker answers with at least one
broker and a controller. Used by up.sh as the readiness check: no JVM, no client library.
Usage: kafka_metadata.py HOST:PORT"""
import socket
import struct
import sys


def main() -> int:
    host, port = sys.argv[1].rsplit(":", 1)
    client_id = b"outbox-testbed"
    # Request header v1: api_key=3 (Metadata), api_version=1, correlation_id, client_id.
    # Body v1: topics array; -1 would mean all topics, 0 means none.
    body = struct.pack(">hhih", 3, 1, 42, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((host, int(port)), timeout=3) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", recv_exact(s, 4))[0]
        data = recv_exact(s, size)
    correlation_id, n = struct.unpack_from(">ii", data, 0)
    if correlation_id != 42:
        raise SystemExit("unexpected correlation id")
    off = 8
    brokers = []
    for _ in range(n):
        node_id, hlen = struct.unpack_from(">ih", data, off)
        off += 6
        bhost = data[off:off + hlen].decode()
        off += hlen
        bport, rlen = struct.unpack_from(">ih", data, off)
        off += 6 + max(rlen, 0)
        brokers.append((node_id, bhost, bport))
    controller_id = struct.unpack_from(">i", data, off)[0]
    if not brokers or controller_id < 0:
        print("broker answered but reports no brokers or controller yet", file=sys.stderr)
        return 1
    for node_id, bhost, bport in brokers:
        print(f"broker {node_id} at {bhost}:{bport}{' (controller)' if node_id == controller_id else ''}")
    return 0


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError, struct.error) as e:
        print(f"kafka not answering: {e}", file=sys.stderr)
        sys.exit(1)
