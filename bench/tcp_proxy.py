#!/usr/bin/env python3
"""A TCP proxy that makes a store fail on demand, for bench/chaos.sh.

Forwards every connection accepted on --listen to --target. A tiny control
server on --control switches the mode of every connection at once:

  forward  (default) copy bytes both ways.
  cut      reset (RST) every open connection, both sides, and reset every new
           one as soon as it is accepted: a dead store.
  hang     keep every connection open but copy nothing either way (bytes wait
           in the proxy and the kernel's buffers, so the peers see silence,
           not an error); new connections are accepted and left waiting: a
           hung store. `forward` afterwards delivers what was held and
           resumes copying, and connects the waiting ones to the target.

Control: one request per connection, either HTTP (`curl -s -XPOST
127.0.0.1:CPORT/cut`; any method, the path names the mode, `/status` or `/`
only reports) or a bare line (`echo cut | nc 127.0.0.1 CPORT`). The answer is
one line: `mode=hang open=16 accepted=40 reset=16`.

Usage: python3 bench/tcp_proxy.py --listen 127.0.0.1:PORT \
           --target 127.0.0.1:5432 --control 127.0.0.1:CPORT
Stdlib only. Exits 0 on SIGTERM/SIGINT, closing every connection.
"""

import argparse
import asyncio
import signal
import socket
import struct
import sys
import time

MODES = ("forward", "cut", "hang")
# Read chunk; asyncio's own default is 64 KiB as well.
CHUNK = 64 * 1024


def log(message):
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} tcp_proxy: {message}", file=sys.stderr, flush=True)


_tasks = set()


def spawn(coroutine):
    """Runs a task, holding a reference so that it is not collected early."""
    task = asyncio.ensure_future(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def reset(transport):
    """Closes a transport with a TCP RST rather than a FIN (SO_LINGER 0)."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class Side(asyncio.Protocol):
    """One socket of a forwarded connection; copies what it reads to its
    peer while the proxy forwards, holds it (and stops reading) otherwise."""

    def __init__(self, conn):
        self.conn = conn
        self.transport = None
        self.peer = None  # the other Side, once both sockets exist
        self.held = []  # bytes read while not forwarding, or before the peer exists
        self.peer_full = False  # the peer's write buffer is over its high-water mark

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        if self.conn.proxy.mode == "forward" and self.peer is not None and not self.held:
            self.peer.transport.write(data)
        else:
            self.held.append(data)
            # Stop reading: what arrives meanwhile waits in the kernel, so a
            # hung store really stops answering (TCP flow control included).
            self.transport.pause_reading()

    def eof_received(self):
        # Either side closing ends the connection (PostgreSQL and Redis do
        # not half-close); a FIN is passed on as a FIN, after what is held.
        self.conn.close(graceful=True)
        return False

    def connection_lost(self, exc):
        self.conn.close(graceful=exc is None)

    # Flow control: the peer's write buffer is full, stop reading this side.
    def pause_writing(self):
        if self.peer is not None:
            self.peer.peer_full = True
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if self.peer is not None:
            self.peer.peer_full = False
            if self.conn.proxy.mode == "forward":
                self.peer.transport.resume_reading()

    def flush(self):
        """Delivers what was held and reads again (mode back to forward)."""
        if self.peer is None or self.transport.is_closing():
            return
        if self.held:
            self.peer.transport.write(b"".join(self.held))
            self.held = []
        if not self.peer_full:
            self.transport.resume_reading()


class Connection:
    """A client socket and, once connected, its upstream socket."""

    def __init__(self, proxy, client):
        self.proxy = proxy
        self.client = client
        self.upstream = None
        self.closed = False
        self.connecting = False

    async def connect_upstream(self):
        if self.connecting or self.upstream is not None or self.closed:
            return
        self.connecting = True
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: Side(self), self.proxy.target_host, self.proxy.target_port
            )
        except OSError as error:
            log(f"cannot reach the target: {error}")
            self.close(graceful=False)
            return
        finally:
            self.connecting = False
        if self.closed or self.proxy.mode == "cut":
            reset(upstream.transport)
            self.close(graceful=False)
            return
        self.upstream = upstream
        upstream.peer, self.client.peer = self.client, upstream
        if self.proxy.mode == "forward":
            self.client.flush()
        else:
            upstream.transport.pause_reading()

    def resume(self):
        if self.upstream is None:
            spawn(self.connect_upstream())
            return
        self.client.flush()
        self.upstream.flush()

    def close(self, graceful):
        if self.closed:
            return
        self.closed = True
        self.proxy.connections.discard(self)
        for side in (self.client, self.upstream):
            if side is None or side.transport is None:
                continue
            if graceful and self.proxy.mode == "forward":
                if side.held and side.peer is not None and not side.peer.transport.is_closing():
                    side.peer.transport.write(b"".join(side.held))
                side.transport.close()
            else:
                reset(side.transport)


class ClientSide(Side):
    """The accepted socket of a connection."""

    def __init__(self, proxy):
        super().__init__(None)
        self.proxy = proxy

    def connection_made(self, transport):
        super().connection_made(transport)
        proxy = self.proxy
        proxy.accepted += 1
        if proxy.mode == "cut":
            proxy.reset_count += 1
            reset(transport)
            return
        self.conn = Connection(proxy, self)
        proxy.connections.add(self.conn)
        # Nothing is read before the upstream socket exists to take it.
        transport.pause_reading()
        if proxy.mode == "forward":
            spawn(self.conn.connect_upstream())

    def data_received(self, data):
        if self.conn is not None:
            super().data_received(data)

    def eof_received(self):
        if self.conn is not None:
            return super().eof_received()
        return False

    def connection_lost(self, exc):
        if self.conn is not None:
            super().connection_lost(exc)


class Proxy:
    def __init__(self, target_host, target_port):
        self.target_host = target_host
        self.target_port = target_port
        self.mode = "forward"
        self.connections = set()
        self.accepted = 0
        self.reset_count = 0

    def client_factory(self):
        return ClientSide(self)

    def set_mode(self, mode):
        previous, self.mode = self.mode, mode
        if mode == "cut":
            for conn in list(self.connections):
                self.reset_count += 1
                conn.close(graceful=False)
        elif mode == "hang":
            for conn in list(self.connections):
                for side in (conn.client, conn.upstream):
                    if side is not None and side.transport is not None:
                        side.transport.pause_reading()
        elif mode == "forward":
            for conn in list(self.connections):
                conn.resume()
        if previous != mode:
            log(f"{previous} -> {mode} ({len(self.connections)} open)")

    def status(self):
        return (
            f"mode={self.mode} open={len(self.connections)} "
            f"accepted={self.accepted} reset={self.reset_count}"
        )

    async def control(self, reader, writer):
        try:
            line = (await asyncio.wait_for(reader.readline(), 5)).decode("latin-1").strip()
            words = line.split()
            http = len(words) >= 2 and words[1].startswith("/")
            word = words[1].strip("/").lower() if http else (words[0].lower() if words else "")
            if http:
                # Read the rest of the request head (a body, if any, is ignored).
                while (await asyncio.wait_for(reader.readline(), 5)).strip():
                    pass
            if word in MODES:
                self.set_mode(word)
                code = "200 OK"
            elif word in ("", "status"):
                code = "200 OK"
            else:
                code = "404 Not Found"
            body = (self.status() if code.startswith("200") else f"unknown mode {word!r}") + "\n"
            if http:
                writer.write(
                    f"HTTP/1.1 {code}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode()
                )
            else:
                writer.write(body.encode())
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def address(text):
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, type=address, help="HOST:PORT to accept on")
    parser.add_argument("--target", required=True, type=address, help="HOST:PORT to forward to")
    parser.add_argument("--control", required=True, type=address, help="HOST:PORT of the control server")
    parser.add_argument("--mode", default="forward", choices=MODES, help="mode at start")
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    proxy = Proxy(*args.target)
    proxy.mode = args.mode
    server = await loop.create_server(
        proxy.client_factory, *args.listen, reuse_address=True, backlog=1024
    )
    control = await asyncio.start_server(proxy.control, *args.control, reuse_address=True)
    log(f"{args.listen[0]}:{args.listen[1]} -> {args.target[0]}:{args.target[1]}, "
        f"control on {args.control[0]}:{args.control[1]}, mode {proxy.mode}")

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    control.close()
    for conn in list(proxy.connections):
        conn.close(graceful=False)
    await asyncio.sleep(0)


if __name__ == "__main__":
    asyncio.run(main())
