# SPDX-License-Identifier: MIT
"""A minimal QMP client (standard library only) for the demo and the benchmarks."""
import json
import socket
import time


class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rb")
        self.events = []
        self.greeting = self._recv()
        self.cmd("qmp_capabilities")

    def _recv(self):
        line = self.file.readline()
        if not line:
            raise QMPError("connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode())
        while True:
            r = self._recv()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise QMPError(f"{name}: {r['error']['desc']}")
            return r["return"]

    def wait_event(self, name, timeout=600.0):
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name:
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPError(f"timed out waiting for {name}")
            self.sock.settimeout(remaining)
            try:
                self.events.append(self._recv())
            finally:
                self.sock.settimeout(None)

    def poll_events(self):
        """Collects events that have already arrived, without blocking."""
        self.sock.setblocking(False)
        try:
            while True:
                self.events.append(self._recv())
        except (BlockingIOError, TypeError):
            pass
        finally:
            self.sock.setblocking(True)
        return self.events

    def close(self):
        self.sock.close()
