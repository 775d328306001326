# SPDX-License-Identifier: MIT
"""Small helpers shared by the test scripts under tests/ (standard library only).

A script imports it with

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "<up>", "lib"))
    import bjdtest

bench/ has its own client (bench/qmp.py): it must run without the tests.
"""
import json
import os
import socket
import time


class Failure(Exception):
    """A test step failed: a QMP error, a closed connection, a timeout."""


class NoAnswer(Failure):
    """The peer sent nothing within the socket's timeout."""


def recv_exact(sock, n):
    """Reads exactly n bytes from sock; EOFError if the peer closes first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def connect_unix(path, timeout=30, alive=None):
    """Connects to a unix socket, retrying while it is not there yet.

    The file appears at bind(), a moment before listen(): until then a connect is refused, so
    ENOENT and ECONNREFUSED are both retried. `alive` (a callable) ends the wait early when the
    process that should listen has died.
    """
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if alive is not None and not alive():
                raise Failure(f"{path}: the server died before listening")
            if time.monotonic() > deadline:
                raise Failure(f"{path}: nobody listening after {timeout} s")
            time.sleep(0.02)


def thread_states(pid):
    """Where each thread of a live process waits (state and kernel wait channel), for a
    failure report: a command that never answered shows whether the peer was blocked in the
    kernel or busy."""
    lines = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            def field(name):
                try:
                    with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                        return f.read().strip()
                except OSError:
                    return "?"
            state = field("stat").rpartition(")")[2].split()[:1] or ["?"]
            lines.append(f"  {tid} {field('comm')}: state {state[0]}, waiting in {field('wchan') or '-'}")
    except OSError as e:
        lines.append(f"  {pid}: {e.strerror}")
    return lines


class QMP:
    """A QMP monitor connection: greeting and qmp_capabilities done, events kept for later."""

    def __init__(self, path, timeout=30, alive=None, reply_timeout=60):
        self.s = connect_unix(path, timeout, alive)
        self.reply_timeout = reply_timeout
        self.s.settimeout(reply_timeout)
        self.f = self.s.makefile("rwb")
        self.events = []
        # Events that come before the greeting are kept like any other (QEMU has sent some
        # there, e.g. VSERPORT_CHANGE), so that the greeting is not taken for a reply.
        while "QMP" not in (m := self._read("the greeting")):
            if "event" not in m:
                raise Failure(f"expected the greeting, got {json.dumps(m)[:300]}")
            self.events.append(m)
        self.ok("qmp_capabilities")

    def _read(self, what="a reply"):
        try:
            line = self.f.readline()
        except socket.timeout:
            raise NoAnswer(f"no answer to {what} within {self.s.gettimeout():.0f} s") from None
        if not line:
            raise Failure(f"connection closed waiting for {what}")
        return json.loads(line)

    def cmd(self, name, /, **args):
        """Sends a command and returns its whole reply ({"return": ...} or {"error": ...})."""
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            m = self._read(name)
            if "event" in m:
                self.events.append(m)
                continue
            return m

    def ok(self, name, /, **args):
        """Sends a command; returns its "return", raises Failure on a QMP error."""
        r = self.cmd(name, **args)
        if "error" in r:
            raise Failure(f"{name} {json.dumps(args)}: {r['error']['desc']}")
        if "return" not in r:
            raise Failure(f"{name}: a reply without return: {json.dumps(r)[:300]}")
        return r["return"]

    def wait_event(self, name, /, timeout=60, **data):
        """The first event NAME whose data has these members (an event seen earlier counts)."""
        end = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name and all(e.get("data", {}).get(k) == v for k, v in data.items()):
                    del self.events[i]
                    return e
            left = end - time.monotonic()
            if left <= 0:
                raise Failure(f"timeout waiting for {name} {data}")
            self.s.settimeout(left)
            try:
                m = self._read(name)
            except NoAnswer:
                raise Failure(f"timeout waiting for {name} {data}") from None
            finally:
                self.s.settimeout(self.reply_timeout)
            if "event" in m:
                self.events.append(m)

    def close(self):
        self.s.close()
