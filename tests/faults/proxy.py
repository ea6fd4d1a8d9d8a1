"""A TCP proxy on loopback that can lose a Redis reply after the server acted on it.

``ReplyDropProxy(port)`` listens on ``127.0.0.1`` (a free port) and forwards
every connection to ``127.0.0.1:port``. It reads the RESP stream both ways, so
it knows where each command and each reply ends, and which reply answers which
command (Redis answers in order). Told to, it forwards a command, waits for
the server's reply to it (so the server has acted), and instead of relaying
that reply closes the client's connection: the client sees the connection
drop with its command executed and its answer gone, which is what a network
fault or a server-side connection kill looks like.

    with ReplyDropProxy(server.port) as proxy:
        proxy.drop_replies(1, commands={"EVALSHA", "EVAL"})  # the next script call
        ...
        assert proxy.dropped == 1

Replies to commands sent before the dropped one (in the same pipeline) are
relayed; later ones are lost with the connection. The proxy speaks RESP2 and
the RESP3 types a reply to the store's commands can use (no push messages).
Only loopback addresses are used.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["ReplyDropProxy", "resp_end"]

HOST = "127.0.0.1"

# RESP types whose body is one line; the aggregate types give a count.
_LINE_TYPES = frozenset(b"+-:_,#(")
_BULK_TYPES = frozenset(b"$!=")
_AGGREGATES = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}


def resp_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """Where the RESP value starting at ``pos`` ends (None: not all of it is here yet).

    Raises:
        ValueError: The bytes are not RESP.
    """
    line_end = buf.find(b"\r\n", pos)
    if line_end < 0:
        return None
    kind = buf[pos]
    after = line_end + 2
    if kind in _LINE_TYPES:
        return after
    if kind in _BULK_TYPES:
        size = int(buf[pos + 1 : line_end])
        if size < 0:
            return after
        end = after + size + 2
        return end if len(buf) >= end else None
    if kind in _AGGREGATES:
        count = int(buf[pos + 1 : line_end])
        position: int | None = after
        for _ in range(max(count, 0) * _AGGREGATES[kind]):
            assert position is not None
            if position >= len(buf):
                return None
            position = resp_end(buf, position)
            if position is None:
                return None
        if kind == ord("|"):  # an attribute comes before the value it describes
            assert position is not None
            return None if position >= len(buf) else resp_end(buf, position)
        return position
    raise ValueError(f"not RESP: {bytes(buf[pos : pos + 20])!r}")


def _command_name(buf: bytes | bytearray, start: int, end: int) -> str:
    """The first word of a command (a RESP array of bulk strings)."""
    if buf[start] != ord("*"):  # an inline command
        return bytes(buf[start:end]).split(maxsplit=1)[0].decode().upper()
    first = buf.find(b"\r\n", start) + 2  # the first bulk string's header
    size_end = buf.find(b"\r\n", first)
    size = int(buf[first + 1 : size_end])
    return bytes(buf[size_end + 2 : size_end + 2 + size]).decode().upper()


def _command_words(buf: bytes | bytearray, start: int, end: int) -> list[bytes]:
    """Every word of a command (a RESP array of bulk strings, or an inline command)."""
    if buf[start] != ord("*"):
        return bytes(buf[start:end]).split()
    words: list[bytes] = []
    pos = buf.find(b"\r\n", start) + 2
    while pos < end:
        size_end = buf.find(b"\r\n", pos)
        size = int(buf[pos + 1 : size_end])
        words.append(bytes(buf[size_end + 2 : size_end + 2 + size]))
        pos = size_end + 2 + size + 2
    return words


@dataclass
class _Pair:
    """One client connection and its connection to the server."""

    client: socket.socket
    server: socket.socket
    drops: deque[bool] = field(default_factory=deque)  # per command sent: lose its reply?
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class ReplyDropProxy:
    """Forward loopback connections to a Redis server; lose chosen replies."""

    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        if target_host not in (HOST, "::1", "localhost"):
            raise ValueError("the proxy only forwards to loopback")
        self.target = (target_host, target_port)
        self._listener = socket.create_server((HOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._remaining = 0
        self._commands: frozenset[str] | None = None
        self._when: Callable[[list[bytes]], bool] | None = None
        self._pairs: list[_Pair] = []
        self._threads: list[threading.Thread] = []
        self.dropped = 0  # replies lost so far
        self.commands_seen: list[str] = []  # every command forwarded, by name
        self._closing = False
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def url(self, db: int = 0) -> str:
        """A ``redis://`` URL that goes through the proxy."""
        return f"redis://{HOST}:{self.port}/{db}"

    def drop_replies(
        self,
        count: int = 1,
        *,
        commands: Iterable[str] | None = None,
        when: Callable[[list[bytes]], bool] | None = None,
    ) -> None:
        """Lose the replies of the next ``count`` commands (of those named, if given).

        Args:
            count: How many replies to lose.
            commands: Only commands with these names.
            when: Only commands for which ``when(words)`` is true (``words``:
                the command's name and arguments, as sent). It is called, in
                the order the proxy reads them, on each command that passed
                ``commands`` while replies are left to lose, under the proxy's
                lock (so it may keep state).

        Each lost reply closes the connection it was due on.
        """
        with self._lock:
            self._remaining = count
            self._commands = None if commands is None else frozenset(c.upper() for c in commands)
            self._when = when

    def kill_connections(self) -> None:
        """Close every connection now (the next command finds its connection gone)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.kill_connections()
        self._accepter.join(10)
        for thread in self._threads:
            thread.join(10)

    def __enter__(self) -> ReplyDropProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pumps ---------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.append(pair)
            for pump in (self._upstream, self._downstream):
                thread = threading.Thread(target=pump, args=(pair,), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _should_drop(self, buf: bytes | bytearray, start: int, end: int) -> bool:
        name = _command_name(buf, start, end)
        with self._lock:
            self.commands_seen.append(name)
            if self._remaining > 0 and (self._commands is None or name in self._commands):
                if self._when is not None and not self._when(_command_words(buf, start, end)):
                    return False
                self._remaining -= 1
                return True
            return False

    def _upstream(self, pair: _Pair) -> None:
        """Client to server: note, per command, whether its reply is to be lost."""
        buf = bytearray()
        try:
            while True:
                data = pair.client.recv(65536)
                if not data:
                    break
                buf += data
                pos = 0
                while pos < len(buf):
                    end = resp_end(buf, pos)
                    if end is None:
                        break
                    pair.drops.append(self._should_drop(buf, pos, end))
                    pos = end
                # Forward whole commands only, after their flags are queued.
                pair.server.sendall(bytes(buf[:pos]))
                del buf[:pos]
        except (OSError, ValueError):
            pass
        pair.close()

    def _downstream(self, pair: _Pair) -> None:
        """Server to client: relay each reply, or close the connection in its place."""
        buf = bytearray()
        try:
            while True:
                data = pair.server.recv(65536)
                if not data:
                    break
                buf += data
                pos = 0
                while pos < len(buf):
                    end = resp_end(buf, pos)
                    if end is None:
                        break
                    drop = pair.drops.popleft() if pair.drops else False
                    if drop:
                        # The server has acted and answered: relay what came
                        # before, lose this reply and everything after it.
                        pair.client.sendall(bytes(buf[:pos]))
                        with self._lock:
                            self.dropped += 1
                        pair.close()
                        return
                    pos = end
                pair.client.sendall(bytes(buf[:pos]))
                del buf[:pos]
        except (OSError, ValueError):
            pass
        pair.close()
