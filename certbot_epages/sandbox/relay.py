"""A DNS relay between the sandbox's secondary and its primary that can hold transfers back.

The secondary fetches the challenge zone (SOA queries over UDP, IXFR/AXFR over TCP) through
this relay. Every request waits for the number of seconds in the delay file (0 when it is
missing or empty) before it is forwarded, so tests and benchmarks can make the secondary lag
behind the primary for real, while it keeps answering queries with its older copy:

    python -m certbot_epages.sandbox.relay --listen 127.A.B.5:53 --to 127.A.B.1:53
        --delay-file DIR/dns/transfer-delay
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from certbot_epages.netaddr import HostPort


def read_delay(path: Path) -> float:
    """Seconds to hold each request: the delay file's number, or 0."""
    try:
        text = path.read_text().strip()
    except OSError:
        return 0.0
    try:
        return max(float(text), 0.0) if text else 0.0
    except ValueError:
        return 0.0


class _Relay:
    def __init__(self, upstream: HostPort, source: str, delay_file: Path) -> None:
        self.upstream = (upstream.host, upstream.port)
        self.source = (source, 0)  # the primary allows transfers from this address only
        self.delay_file = delay_file

    def hold(self) -> None:
        delay = read_delay(self.delay_file)
        if delay:
            time.sleep(delay)  # the whole point of this relay: transfers held back on request


class _UDP(socketserver.BaseRequestHandler):
    server: _UDPServer

    def handle(self) -> None:
        data, sock = self.request
        relay = self.server.relay
        relay.hold()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.bind(relay.source)
            up.settimeout(5)
            up.sendto(data, relay.upstream)
            try:
                reply, _ = up.recvfrom(65535)
            except OSError:
                return
        sock.sendto(reply, self.client_address)


class _TCP(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        relay = self.server.relay
        relay.hold()
        client: socket.socket = self.request
        try:
            up = socket.create_connection(relay.upstream, timeout=10,
                                          source_address=relay.source)
        except OSError:
            return
        with up:
            pump = threading.Thread(target=_pipe, args=(up, client), daemon=True)
            pump.start()
            _pipe(client, up)
            pump.join(timeout=30)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _UDPServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True
    relay: _Relay


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    relay: _Relay


def main(argv: Sequence[str] | None = None) -> int:
    """Run the relay until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port to listen on (UDP and TCP)")
    parser.add_argument("--to", required=True, help="host:port of the primary")
    parser.add_argument("--delay-file", required=True, type=Path)
    args = parser.parse_args(argv)
    listen = HostPort.parse(args.listen, 53)
    relay = _Relay(HostPort.parse(args.to, 53), listen.host, args.delay_file)
    udp = _UDPServer((listen.host, listen.port), _UDP)
    tcp = _TCPServer((listen.host, listen.port), _TCP)
    udp.relay = tcp.relay = relay
    threading.Thread(target=udp.serve_forever, daemon=True).start()
    tcp.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
