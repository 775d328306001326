#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Black-box QMP scenario runner (see tests/qmp/README.md for the format).

Runs each <name>.qmp against a daemon that accepts the qemu-storage-daemon
command line, records a filtered transcript and compares it with <name>.out
(or <name>.qsd.out when targeting qemu-storage-daemon and that file exists).
"""

import argparse
import concurrent.futures
import difflib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

DEFAULT_TIMEOUT = 10.0      # seconds for a response, an event or a daemon exit
SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer)|WARNING: ThreadSanitizer"
                          r"|runtime error: |SUMMARY: UndefinedBehaviorSanitizer")
DEFAULT_MASKS = ("pid", "thread-id", "start_time_ns")   # start_time_ns: wall clock
MAX_DEPTH = 12              # deeper values are abbreviated in transcripts
LONG_STRING = 200           # longer strings are abbreviated in transcripts
SHUTDOWN = object()
REQUIREMENTS = ("ceph", "reflink", "full-speed")    # what @requires may name
SKIP_EXIT = 77              # exit status when only unmet requirements skipped (ctest SKIP_RETURN_CODE)


class ScenarioError(Exception):
    """A scenario file that cannot be parsed or a directive used wrongly."""


def decode_escapes(text):
    """Turns the C-like escapes of @raw text into bytes (\\x01, \\n, \\r, \\t, \\\\)."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            n = text[i + 1]
            if n == "x" and i + 3 < len(text) + 1:
                out.append(int(text[i + 2:i + 4], 16))
                i += 4
                continue
            simple = {"n": b"\n", "r": b"\r", "t": b"\t", "\\": b"\\", "s": b" "}
            if n in simple:
                out += simple[n]
                i += 2
                continue
        out += c.encode("utf-8")
        i += 1
    return bytes(out)


# ---------------------------------------------------------------- parsing

class Step:
    def __init__(self, kind, arg, line, **extra):
        self.kind = kind
        self.arg = arg
        self.line = line
        self.__dict__.update(extra)


def parse_scenario(path):
    """Returns (steps, only, timeout, requires): only is None or (daemon-kind, reason);
    timeout is the scenario's @timeout in seconds, or None; requires the set of @requires."""
    steps = []
    only = None
    timeout = None
    requires = set()
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        raw = lines[i]
        lineno = i + 1
        line = raw.strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            text = line
            while True:
                try:
                    obj = json.loads(text)
                    break
                except json.JSONDecodeError:
                    if i >= len(lines):
                        raise ScenarioError(f"{path}:{lineno}: unterminated JSON command")
                    text += "\n" + lines[i]
                    i += 1
            steps.append(Step("cmd", text, lineno, obj=obj))
            continue
        if not line.startswith("@"):
            raise ScenarioError(f"{path}:{lineno}: expected a JSON command or @directive")
        name, _, rest = line.partition(" ")
        name = name[1:]
        rest = rest.strip()
        if name == "only":
            kind, _, reason = rest.partition(" ")
            if kind not in ("ours", "qsd") or not reason.strip():
                raise ScenarioError(f"{path}:{lineno}: @only ours|qsd <reason>")
            only = (kind, reason.strip())
            continue
        if name == "requires":
            if rest not in REQUIREMENTS:
                raise ScenarioError(f"{path}:{lineno}: @requires {'|'.join(REQUIREMENTS)}")
            requires.add(rest)
            continue
        if name == "timeout":
            try:
                timeout = float(rest)
            except ValueError:
                raise ScenarioError(f"{path}:{lineno}: @timeout <seconds>") from None
            continue
        known = {"args", "env", "shell", "shell-out", "shell-bg", "wait-file", "session", "raw",
                 "raw-nosync", "raw-repeat", "raw-repeat-nosync", "wait", "recv", "drain",
                 "sleep", "disconnect", "quit", "nowait", "group", "endgroup", "mask",
                 "filter-return-names", "schema-probe", "sort-return", "echo", "expect-exit",
                 "full"}
        if name not in known:
            raise ScenarioError(f"{path}:{lineno}: unknown directive @{name}")
        steps.append(Step(name, rest, lineno))
    return steps, only, timeout, requires


# ---------------------------------------------------------------- filtering

def nesting(v):
    depth = 0
    while isinstance(v, (dict, list)) and v:
        v = next(iter(v.values())) if isinstance(v, dict) else v[0]
        depth += 1
    return depth + (1 if isinstance(v, (dict, list)) else 0)


class Filters:
    def __init__(self, tmp):
        self.tmp = tmp
        self.masks = set(DEFAULT_MASKS)
        self.full = set()           # members never abbreviated (@full)
        self.names = []             # (real value, shown as) besides the temp dir, in order
        self.port = None            # $PORT's number, shown as PORT where it stands alone

    def text(self, s):
        s = s.replace(self.tmp, "TMP")
        for real, shown in self.names:
            s = s.replace(real, shown)
        if self.port:
            s = re.sub(rf"(?<![0-9]){self.port}(?![0-9])", "PORT", s)
        # Implicit node names carry a global counter (#block123): mask the number.
        s = re.sub(r"#block[0-9]+", "#blockN", s)
        # json:{...} filenames print the options in hash order: sort them.
        if s.startswith("json:{"):
            try:
                s = "json:" + json.dumps(json.loads(s[5:]), sort_keys=True)
            except ValueError:
                pass
        return s

    def value(self, v, key=None, depth=0):
        if depth > MAX_DEPTH and isinstance(v, (dict, list)):
            return f"...({nesting(v)} more levels)"
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if k == "timestamp":
                    continue
                if k in self.masks:
                    out[k] = "MASKED"
                elif k == "qemu" and isinstance(x, dict) and {"major", "minor", "micro"} <= set(x):
                    # Keep the JSON type visible: a daemon sending strings must still fail.
                    out[k] = {kk: (0 if isinstance(vv, int) and not isinstance(vv, bool) else vv)
                              for kk, vv in x.items()}
                elif k == "package" and isinstance(x, str):
                    out[k] = "PKG"
                else:
                    out[k] = self.value(x, k, depth + 1)
            return out
        if isinstance(v, list):
            return [self.value(x, None, depth + 1) for x in v]
        if isinstance(v, str):
            v = self.text(v)
            if len(v) > LONG_STRING and key not in self.full:
                v = f"{v[:24]}...({len(v)} chars)"
            return v
        return v

    def dump(self, obj):
        return json.dumps(self.value(obj), sort_keys=True, ensure_ascii=True)


# ---------------------------------------------------------------- schema probes

def schema_probe(schema, path):
    """Resolves NAME.seg.seg... in a query-qmp-schema result; returns a short string.

    Segments: a member name (searched in members and in every variant), '@arg'
    (explicit; implied after a command/event), '@ret' (command return type),
    '[]' (array element), '=VALUE' (enum value present?), '{tag=case}' (select one variant).
    """
    by_name = {e["name"]: e for e in schema}
    if path == "@integrity":
        return schema_integrity(schema, by_name)
    segs = path.split(".") if path else []
    if not segs or segs[0] not in by_name:
        return "absent"
    ent = by_name[segs[0]]
    optional = None
    rest = segs[1:]
    if ent["meta-type"] in ("command", "event") and rest and rest[0] not in ("@arg", "@ret"):
        rest = ["@arg"] + rest
    variant = None
    for seg in rest:
        if seg == "@arg":
            ent = by_name.get(ent.get("arg-type"))
        elif seg == "@ret":
            ent = by_name.get(ent.get("ret-type"))
        elif seg == "[]":
            if ent.get("meta-type") != "array":
                return f"not an array at '{seg}'"
            ent = by_name.get(ent["element-type"])
        elif seg.startswith("="):
            if ent.get("meta-type") != "enum":
                return f"not an enum at '{seg}'"
            return "present" if seg[1:] in [m["name"] for m in ent["members"]] else "absent"
        elif seg.startswith("{") and seg.endswith("}"):
            tag, _, case = seg[1:-1].partition("=")
            if ent.get("tag") != tag:
                return f"no tag '{tag}'"
            v = [x for x in ent.get("variants", []) if x["case"] == case]
            if not v:
                return "absent"
            variant = by_name.get(v[0]["type"])
            continue
        else:
            if ent is None or ent.get("meta-type") != "object":
                return f"not an object at '{seg}'"
            pools = [variant] if variant else [ent] + [by_name.get(x["type"]) for x in ent.get("variants", [])]
            found = None
            for p in pools:
                for m in (p or {}).get("members", []):
                    if m["name"] == seg:
                        found = m
                        break
                if found:
                    break
            if not found:
                return "absent"
            optional = "default" in found
            ent = by_name.get(found["type"])
            variant = None
        if ent is None:
            return "dangling type"
    desc = ent["meta-type"]
    if desc == "builtin":
        desc = ent["name"]
    elif desc == "array":
        el = by_name.get(ent["element-type"], {})
        desc = "array of " + (el.get("name") if el.get("meta-type") == "builtin" else el.get("meta-type", "?"))
    elif desc == "command" and ent.get("allow-oob"):
        desc += " allow-oob"
    if optional is not None:
        desc += " optional" if optional else " required"
    return desc


def schema_integrity(schema, by_name):
    """Checks unique names, known meta-types and that every type reference resolves."""
    problems = []
    if len(by_name) != len(schema):
        problems.append("duplicate names")
    metas = {"builtin", "enum", "array", "object", "alternate", "command", "event"}
    for e in schema:
        if e.get("meta-type") not in metas:
            problems.append(f"{e.get('name')}: meta-type {e.get('meta-type')}")
        refs = [e.get(k) for k in ("arg-type", "ret-type", "element-type") if k in e]
        refs += [m["type"] for m in e.get("members", []) if "type" in m]
        refs += [v["type"] for v in e.get("variants", [])]
        problems += [f"{e['name']}: dangling {r}" for r in refs if r not in by_name]
    return "ok" if not problems else "; ".join(sorted(set(problems))[:5])


# ---------------------------------------------------------------- sessions

class Session:
    def __init__(self, name, path, timeout, run_failures):
        self.run_failures = run_failures
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.wire_errors = []
        self.backlog = []             # events recorded but not yet consumed by @wait
        self.closed = False
        self.sync_id = 0

    def send(self, data):
        self.sock.sendall(data)

    def read_message(self, deadline):
        """Returns the next message (dict), SHUTDOWN at EOF, None at deadline."""
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line, self.buf = self.buf[:nl], self.buf[nl + 1:]
                if not line.endswith(b"\r"):
                    self.wire_errors.append("server line not terminated by CR LF")
                if any(b >= 0x7F for b in line):
                    self.wire_errors.append("server output is not pure ASCII")
                line = line.strip()
                if not line:
                    continue
                try:
                    return json.loads(line.decode("utf-8", "replace"))
                except (json.JSONDecodeError, RecursionError):
                    return {"!unparsable-line": line.decode("utf-8", "replace")}
            if self.closed:
                return SHUTDOWN
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                continue
            self.buf += chunk

    def close(self):
        for e in sorted(set(self.wire_errors)):
            self.run_failures.append(f"session {self.name}: {e}")
        self.wire_errors = []
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True


# ---------------------------------------------------------------- scenario run

class Run:
    def __init__(self, path, daemon_kind, daemon_bin, keep, timeout):
        self.path = path
        self.kind = daemon_kind
        self.bin = daemon_bin
        self.keep = keep
        self.timeout = timeout
        self.tmp = tempfile.mkdtemp(prefix="qmp-")
        self.filters = Filters(self.tmp)
        self.out = []                 # transcript lines
        self.failures = []            # reasons besides transcript mismatch
        self.args = []
        self.env = dict(os.environ)
        self.proc = None
        self.stderr_path = os.path.join(self.tmp, "daemon.stderr")
        self.session_names = ["main"]
        self.sessions = {}
        self.cur = None
        self.group = None             # list of received lines when inside @group
        self.nowait = False
        self.ret_filter = None
        self.probes = None
        self.sort_key = None
        self.bg = []
        self.expect_exit = 0
        self.quit_done = False
        self.placeholders = {"$TMP": self.tmp}   # substituted in commands, @args, @env...
        self.shell_env = {"TMP": self.tmp, "QMPDIR": os.path.dirname(os.path.abspath(__file__))}
        self.ceph = None              # (conf, namespace) under @requires ceph
        self.reflink = None           # this run's directory under @requires reflink

    def sock_for(self, name):
        return os.path.join(self.tmp, f"qmp-{name}.sock")

    # -- transcript helpers
    def prefix(self):
        return "" if self.cur is None or self.cur.name == "main" else f"[{self.cur.name}] "

    def emit_sent(self, text):
        self.out.append(self.prefix() + "-> " + text)

    def emit_recv(self, msg):
        line = self.prefix() + "<- " + self.filters.dump(msg)
        if self.group is not None:
            self.group.append(line)
        else:
            self.out.append(line)

    def note(self, text):
        self.out.append("!! " + text)
        self.failures.append(text)

    # -- daemon
    def start(self):
        if self.proc:
            return
        cmd = [self.bin]
        # One monitor per session name (a socket chardev serves one client at a
        # time), plus a hidden one used for the start-up probe and the final quit.
        for i, name in enumerate(self.session_names + ["__quit"]):
            cmd += ["--chardev", f"socket,id=qmp{i},path={self.sock_for(name)},server=on,wait=off",
                    "--monitor", f"chardev=qmp{i}"]
        cmd += ["--pidfile", os.path.join(self.tmp, "daemon.pid")]
        cmd += self.args
        self.errf = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.tmp, stdin=subprocess.DEVNULL, env=self.env,
                                     stdout=self.errf, stderr=self.errf, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise ScenarioError(f"daemon exited at startup with status {self.proc.returncode}")
            if all(os.path.exists(self.sock_for(n)) for n in self.session_names + ["__quit"]):
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(self.sock_for("__quit"))
                    s.close()
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise ScenarioError("daemon did not create its QMP socket")
            time.sleep(0.02)

    def open_session(self, name, negotiate):
        self.start()
        s = Session(name, self.sock_for(name), self.timeout, self.failures)
        self.sessions[name] = s
        self.cur = s
        self.out.append(self.prefix() + "-- connect")
        greeting = s.read_message(time.monotonic() + self.timeout)
        if greeting is None or greeting is SHUTDOWN:
            self.note("no greeting")
            return
        self.emit_recv(greeting)
        if negotiate:
            self.command({"execute": "qmp_capabilities"}, '{"execute": "qmp_capabilities"}')

    def ensure_session(self):
        if self.cur is None or self.cur.closed and self.cur.name not in self.sessions:
            self.open_session("main", True)

    def recv_until(self, pred, what, timeout=None):
        """Reads and records messages of the current session until pred(msg)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self.cur.read_message(deadline)
            if msg is None:
                self.note(f"timeout waiting for {what}")
                return None
            if msg is SHUTDOWN:
                self.out.append(self.prefix() + "-- EOF")
                if what != "EOF":
                    self.failures.append(f"EOF while waiting for {what}")
                return SHUTDOWN
            if pred(msg):
                return msg
            if "event" in msg:
                self.cur.backlog.append(msg)
            self.emit_recv(msg)

    def command(self, obj, text):
        ret_filter, probes, sort_key = self.ret_filter, self.probes, self.sort_key
        self.ret_filter = self.probes = self.sort_key = None
        self.ensure_session()
        self.emit_sent(self.filters.dump(obj))
        self.cur.send(text.encode("utf-8"))
        if self.nowait:
            self.nowait = False
            return
        resp = self.recv_until(lambda m: "return" in m or "error" in m, "response")
        if isinstance(resp, dict):
            if ret_filter is not None and isinstance(resp.get("return"), list):
                keep = ret_filter
                resp = dict(resp)
                def name(e):   # commands and most lists: name; block nodes: node-name
                    return e.get("name", e.get("node-name")) if isinstance(e, dict) else None
                resp["return"] = sorted((e for e in resp["return"] if name(e) in keep), key=name)
            if sort_key is not None and isinstance(resp.get("return"), list):
                resp = dict(resp)
                f = self.filters
                resp["return"] = sorted(resp["return"], key=lambda e: (
                    f.dump(e.get(sort_key) if isinstance(e, dict) else e), f.dump(e)))
            if probes is not None and isinstance(resp.get("return"), list):
                for p in probes:
                    self.out.append(f"   schema {p}: {schema_probe(resp['return'], p)}")
                resp = dict(resp)
                resp["return"] = "(schema omitted)"
            self.emit_recv(resp)

    def raw(self, data, shown, sync):
        self.ensure_session()
        self.emit_sent(shown)
        self.cur.send(data)
        if sync:
            self.cur.sync_id += 1
            sid = f"sync-{self.cur.sync_id}"
            self.cur.send(json.dumps({"execute": "query-version", "id": sid}).encode())
            self.recv_until(lambda m: m.get("id") == sid, "sync barrier")

    def wait_event(self, spec):
        self.ensure_session()
        parts = spec.split()
        if not parts:
            raise ScenarioError("@wait needs an event name")
        name, conds = parts[0], [p.partition("=") for p in parts[1:]]

        def match(m):
            if m.get("event") != name:
                return False
            for k, _, v in conds:
                cur = m.get("data", {})
                for key in k.split("."):
                    cur = cur.get(key) if isinstance(cur, dict) else None
                if cur is None or (json.dumps(cur) != v and str(cur) != v):
                    return False
            return True

        for i, m in enumerate(self.cur.backlog):
            if match(m):
                del self.cur.backlog[i]
                return
        msg = self.recv_until(match, f"event {spec}")
        if isinstance(msg, dict):
            self.emit_recv(msg)

    def drain(self, secs):
        self.ensure_session()
        deadline = time.monotonic() + secs
        while True:
            msg = self.cur.read_message(deadline)
            if msg is None:
                return
            if msg is SHUTDOWN:
                self.out.append(self.prefix() + "-- EOF")
                return
            self.emit_recv(msg)

    # -- $PORT: a TCP port for servers the scenario starts on 127.0.0.1
    def use_port(self):
        """Picks a port the kernel has just handed out as free (bound to port 0 and closed),
        so that scenarios run in parallel, and other programs, do not collide on a fixed
        number."""
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        finally:
            s.close()
        self.placeholders["$PORT"] = port
        self.shell_env["PORT"] = port
        self.filters.port = port

    # -- @requires reflink: a directory of its own on BJD_REFLINK_DIR's file system
    def reflink_setup(self, top):
        self.reflink = tempfile.mkdtemp(prefix="qmp-", dir=top)
        self.placeholders["$REFLINK"] = self.reflink
        self.shell_env["REFLINK"] = self.reflink
        self.filters.names.append((self.reflink, "REFLINK"))

    def reflink_cleanup(self):
        if self.reflink:
            shutil.rmtree(self.reflink, ignore_errors=True)

    # -- @requires ceph: the cluster of BJD_CEPH_CONF, one RBD namespace per run
    def rbd(self, *args):
        conf = self.ceph[0]
        return subprocess.run(["rbd", "-c", conf, *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)

    def ceph_setup(self, conf):
        """Creates this run's namespace in pool rbd; placeholders and filters for it."""
        conf = os.path.abspath(conf)
        base = re.sub(r"[^a-z0-9]+", "-", os.path.basename(self.path)[:-4].lower())[:24]
        ns = f"bjd-{base}-{uuid.uuid4().hex[:12]}"
        self.ceph = (conf, ns)
        p = self.rbd("namespace", "create", "--pool", "rbd", "--namespace", ns)
        if p.returncode != 0:
            self.ceph = None
            raise ScenarioError(f"rbd namespace create {ns} failed (rc={p.returncode}): "
                                + p.stderr.decode("utf-8", "replace").strip())
        cdir = os.path.dirname(conf)
        self.placeholders.update({"$CEPH_CONF": conf, "$CEPH_DIR": cdir, "$RBD_NS": ns})
        self.shell_env.update({"CEPH_CONF": conf, "CEPH_DIR": cdir, "RBD_NS": ns})
        # The conf before its directory; all before any shorter overlap could matter.
        self.filters.names += [(conf, "CEPH_CONF"), (cdir, "CEPH_DIR"), (ns, "RBD_NS")]

    def ceph_cleanup(self):
        """Removes the namespace and whatever the scenario left in it (images, snapshots,
        trash); failing to is a failure of the scenario (something still holds an image)."""
        if not self.ceph:
            return
        ns = self.ceph[1]
        where = ["--pool", "rbd", "--namespace", ns]
        try:
            p = self.rbd("trash", "ls", *where, "--format", "json")
            for e in json.loads(p.stdout or b"[]") if p.returncode == 0 else []:
                self.rbd("trash", "rm", *where, "--image-id", e["id"], "--force", "--no-progress")
            p = self.rbd("ls", *where, "--format", "json")
            for img in json.loads(p.stdout or b"[]") if p.returncode == 0 else []:
                p = self.rbd("snap", "ls", *where, "--image", img, "--format", "json")
                for snap in json.loads(p.stdout or b"[]") if p.returncode == 0 else []:
                    if snap.get("protected") == "true":
                        self.rbd("snap", "unprotect", *where, "--image", img, "--snap", snap["name"])
                self.rbd("snap", "purge", *where, "--image", img, "--no-progress")
                self.rbd("rm", *where, "--image", img, "--no-progress")
            p = self.rbd("namespace", "remove", "--pool", "rbd", "--namespace", ns)
            if p.returncode != 0:
                self.failures.append(f"could not remove RBD namespace {ns} (rc={p.returncode}): "
                                     + p.stderr.decode("utf-8", "replace").strip())
        except (subprocess.TimeoutExpired, ValueError) as e:
            self.failures.append(f"could not clean RBD namespace {ns}: {e}")

    def shell(self, cmd, record):
        env = dict(os.environ, **self.shell_env)
        p = subprocess.run(["/bin/sh", "-c", cmd], cwd=self.tmp, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        text = p.stdout.decode("utf-8", "replace")
        if record:
            self.out.append("$ " + self.filters.text(cmd))
            for ln in text.splitlines():
                self.out.append("  " + self.filters.text(ln))
            self.out.append(f"  [rc={p.returncode}]")
        elif p.returncode != 0:
            self.note(f"shell command failed (rc={p.returncode}): {cmd}\n{text}")

    def subst(self, s):
        for name, value in self.placeholders.items():
            s = s.replace(name, value)
        return s

    def step(self, st):
        k, a = st.kind, st.arg
        if k == "args":
            if self.proc:
                raise ScenarioError(f"line {st.line}: @args after the daemon started")
            self.args += shlex.split(self.subst(a))
        elif k == "env":
            if self.proc:
                raise ScenarioError(f"line {st.line}: @env after the daemon started")
            name, _, value = self.subst(a).partition("=")
            self.env[name.strip()] = value
        elif k == "cmd":
            text = self.subst(st.arg)
            self.command(json.loads(text) if text != st.arg else st.obj, text)
        elif k == "nowait":
            self.nowait = True
        elif k == "shell":
            self.shell(a, False)
        elif k == "shell-out":
            self.shell(a, True)
        elif k == "shell-bg":
            env = dict(os.environ, **self.shell_env)
            log = open(os.path.join(self.tmp, f"bg{len(self.bg)}.log"), "wb")
            self.bg.append(subprocess.Popen(["/bin/sh", "-c", "exec " + a], cwd=self.tmp, env=env,
                                            stdout=log, stderr=log, start_new_session=True))
        elif k == "wait-file":
            target = self.subst(a)
            deadline = time.monotonic() + self.timeout
            while not os.path.exists(target):
                if time.monotonic() > deadline:
                    self.note(f"file {a} did not appear")
                    break
                time.sleep(0.02)
        elif k == "session":
            parts = a.split()
            if not parts:
                raise ScenarioError(f"line {st.line}: @session NAME [nonegotiate]")
            name = parts[0]
            if name in self.sessions and not self.sessions[name].closed:
                self.cur = self.sessions[name]
            else:
                self.open_session(name, "nonegotiate" not in parts[1:])
        elif k in ("raw", "raw-nosync"):
            self.raw(decode_escapes(a), "@raw " + a, k == "raw")
        elif k in ("raw-repeat", "raw-repeat-nosync"):
            n, _, text = a.partition(" ")
            self.raw(decode_escapes(text) * int(n), f"@raw-repeat {n} {text}", k == "raw-repeat")
        elif k == "wait":
            self.wait_event(a)
        elif k == "recv":
            self.ensure_session()
            for _ in range(int(a or "1")):
                msg = self.recv_until(lambda m: True, "a message")
                if not isinstance(msg, dict):
                    break
                self.emit_recv(msg)
        elif k == "drain":
            self.drain(float(a or "0.5"))
        elif k == "sleep":
            time.sleep(float(a))
        elif k == "disconnect":
            if self.cur is None:
                raise ScenarioError(f"line {st.line}: @disconnect without a session")
            self.out.append(self.prefix() + "-- disconnect")
            self.cur.close()
            del self.sessions[self.cur.name]
            self.cur = None
        elif k == "quit":
            self.ensure_session()
            self.emit_sent('{"execute": "quit"}')
            self.cur.send(b'{"execute": "quit"}')
            self.recv_until(lambda m: False, "EOF")
            self.quit_done = True
            # The monitor closes before the daemon has released its images:
            # steps after @quit (qemu-io on the files) need the process gone.
            if self.proc:
                try:
                    self.proc.wait(self.timeout)
                except subprocess.TimeoutExpired:
                    pass  # finish() reports and kills it
        elif k == "group":
            self.group = []
        elif k == "endgroup":
            self.out += sorted(self.group or [])
            self.group = None
        elif k == "mask":
            self.filters.masks.update(a.split())
        elif k == "full":
            self.filters.full.update(a.split())
        elif k == "filter-return-names":
            self.ret_filter = set(a.split())
        elif k == "sort-return":
            self.sort_key = a.strip()
        elif k == "schema-probe":
            self.probes = (self.probes or []) + a.split()
        elif k == "echo":
            self.out.append("== " + a)
        elif k == "expect-exit":
            self.expect_exit = int(a)

    def finish(self):
        """Makes the daemon exit; returns nothing, records failures."""
        for s in list(self.sessions.values()):
            if not s.closed and not self.quit_done:
                pass
        if self.proc and self.proc.poll() is None and not self.quit_done:
            try:
                s = Session("__quit", self.sock_for("__quit"), self.timeout, self.failures)
                s.read_message(time.monotonic() + self.timeout)
                s.send(b'{"execute":"qmp_capabilities"}{"execute":"quit"}')
                deadline = time.monotonic() + self.timeout
                while s.read_message(deadline) not in (None, SHUTDOWN):
                    pass
                s.close()
            except OSError as e:
                self.failures.append(f"could not send the final quit: {e}")
        for s in self.sessions.values():
            s.close()
        if self.proc:
            try:
                rc = self.proc.wait(self.timeout)
                if rc < 0:
                    self.failures.append(f"daemon killed by signal {-rc}")
                elif rc != self.expect_exit:
                    self.failures.append(f"daemon exit status {rc} (expected {self.expect_exit})")
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self.failures.append("daemon did not exit after quit (killed)")
            self.errf.close()
        for p in self.bg:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if os.path.exists(self.stderr_path):
            with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
                err = f.read()
            if SANITIZER_RE.search(err):
                self.failures.append("sanitizer report in daemon stderr")
            self.stderr = err
        else:
            self.stderr = ""

    def run(self, steps, ceph_conf=None, reflink_dir=None):
        for st in steps:
            if st.kind == "session" and st.arg.split() and st.arg.split()[0] not in self.session_names:
                self.session_names.append(st.arg.split()[0])
        if any("$PORT" in st.arg for st in steps):
            self.use_port()
        try:
            if ceph_conf:
                self.ceph_setup(ceph_conf)
            if reflink_dir:
                self.reflink_setup(reflink_dir)
            for st in steps:
                self.step(st)
        except ScenarioError as e:
            self.note(str(e))
        except Exception as e:  # a runner bug must fail the scenario, not the suite
            self.note(f"{type(e).__name__}: {e}")
        finally:
            self.finish()
            self.ceph_cleanup()
            self.reflink_cleanup()
        return "\n".join(collapse(self.out)) + "\n"


# ---------------------------------------------------------------- driver

def collapse(lines):
    """Folds runs of identical received lines into one plus a repeat count."""
    out = []
    i = 0
    while i < len(lines):
        j = i
        while j + 1 < len(lines) and lines[j + 1] == lines[i] and "<- " in lines[i]:
            j += 1
        out.append(lines[i])
        if j > i:
            out.append(f"   (previous line repeated {j - i} more times)")
        i = j + 1
    return out


def expected_path(scn, kind):
    base = scn[:-4]
    if kind == "qsd" and os.path.exists(base + ".qsd.out"):
        return base + ".qsd.out"
    return base + ".out"


def display_name(scn):
    here = os.path.dirname(os.path.abspath(__file__))
    p = os.path.abspath(scn)
    return os.path.relpath(p, here)[:-4] if p.startswith(here + os.sep) else scn[:-4]


# @requires NAME: the environment variable naming what the scenario needs, the test it must
# pass, what that means when it fails, and what sets the variable.
NEEDS = {
    "ceph": ("BJD_CEPH_CONF", os.path.isfile, "is not a file (Ceph not installed?)",
             "tests/ceph/cluster.sh starts a cluster"),
    "reflink": ("BJD_REFLINK_DIR", os.path.isdir, "is not a directory (no XFS could be mounted)",
                "tests/reflink/xfs.sh mounts one"),
}


def unmet_requirement(requires):
    """Why this machine cannot run a scenario with these @requires, or None."""
    # A sanitizer build (tests/CMakeLists.txt sets BJD_SANITIZED) runs several times slower:
    # too slow for a scenario about how the daemon waits for events.
    if "full-speed" in requires and os.environ.get("BJD_SANITIZED"):
        return f"requires full-speed: this is a {os.environ['BJD_SANITIZED']} build (BJD_SANITIZED)"
    for name in NEEDS:
        if name not in requires:
            continue
        var, present, absent, maker = NEEDS[name]
        value = os.environ.get(var, "")
        if not value:
            return f"requires {name}: {var} is not set ({maker})"
        if not present(value):
            return f"requires {name}: {var}={value} {absent}"
    return None


def run_one(scn, opts):
    """Returns (status, report) where status is PASS, FAIL, SKIP or SKIP-REQ (an unmet
    @requires)."""
    name = display_name(scn)
    start = time.monotonic()
    try:
        steps, only, timeout, requires = parse_scenario(scn)
    except (ScenarioError, OSError) as e:
        return "FAIL", f"FAIL {name}: {e}", ""
    if only and only[0] != opts.kind:
        return "SKIP", f"SKIP {name} (only {only[0]}: {only[1]})", ""
    why = unmet_requirement(requires)
    if why:
        return "SKIP-REQ", f"SKIP {name} ({why})", ""
    r = Run(scn, opts.kind, opts.bin, opts.keep, max(opts.timeout, timeout or 0))
    got = r.run(steps, os.environ["BJD_CEPH_CONF"] if "ceph" in requires else None,
                os.environ["BJD_REFLINK_DIR"] if "reflink" in requires else None)
    exp_path = expected_path(scn, opts.kind)
    detail = []
    if opts.update:
        with open(exp_path, "w", encoding="utf-8") as f:
            f.write(got)
        ok = not r.failures
    else:
        try:
            with open(exp_path, encoding="utf-8") as f:
                exp = f.read()
        except OSError:
            exp = ""
            detail.append(f"missing {exp_path}")
        ok = exp == got and not r.failures
        if exp != got:
            detail += difflib.unified_diff(exp.splitlines(), got.splitlines(),
                                           exp_path, "actual", lineterm="")
    if r.failures:
        detail += ["failure: " + x for x in r.failures]
    if not ok:
        detail.append(f"daemon stderr ({r.stderr_path}):")
        detail += ["  " + x for x in r.stderr.splitlines()[-60:]]
    secs = time.monotonic() - start
    if not opts.keep and ok:
        shutil.rmtree(r.tmp, ignore_errors=True)
    status = "PASS" if ok else "FAIL"
    head = f"{status} {name} ({secs:.1f}s)" + (" [updated]" if opts.update else "")
    return status, head, "\n".join(detail)


def main():
    sys.setrecursionlimit(20000)        # deeply nested ids are echoed back
    threading.stack_size(256 << 20)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--daemon", required=True,
                    help="ours:/path/to/blockjobd or qsd[:/usr/bin/qemu-storage-daemon]")
    ap.add_argument("--update", action="store_true", help="write the expected transcripts")
    ap.add_argument("-j", type=int, default=1, help="scenarios run in parallel")
    ap.add_argument("--keep", action="store_true", help="keep temp dirs of passing scenarios")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    ap.add_argument("-v", action="store_true", help="print the transcript diff of failures only once")
    ap.add_argument("scenarios", nargs="+", help=".qmp files or directories")
    opts = ap.parse_args()
    kind, _, path = opts.daemon.partition(":")
    if kind not in ("ours", "qsd"):
        ap.error("--daemon must start with ours: or qsd")
    if kind == "ours" and not path:
        ap.error("--daemon ours:PATH needs the binary path")
    opts.kind = kind
    opts.bin = path or "/usr/bin/qemu-storage-daemon"
    if os.sep in opts.bin:
        opts.bin = os.path.abspath(opts.bin)     # the daemon runs in the scenario's temp dir
    files = []
    for s in opts.scenarios:
        if os.path.isdir(s):
            for root, _, names in os.walk(s):
                files += [os.path.join(root, n) for n in names if n.endswith(".qmp")]
        else:
            files.append(s)
    files.sort()
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0, "SKIP-REQ": 0}
    lock = threading.Lock()

    def job(f):
        status, head, detail = run_one(f, opts)
        if opts.kind == "qsd" and status == "FAIL" and "failure: daemon killed by signal" in detail:
            # The reference daemon itself crashed (QEMU 7.2's qemu-storage-daemon has been
            # seen to segfault at random, once in thousands of runs, right after
            # qmp_capabilities). That says nothing about the transcript: report the crash
            # and run the scenario once more; a second crash fails it.
            with lock:
                print(f"{head}: qemu-storage-daemon crashed, running it again\n{detail}", flush=True)
            status, head, detail = run_one(f, opts)
        with lock:
            counts[status] += 1
            print(head, flush=True)
            if detail and status == "FAIL":
                print(detail, flush=True)

    with concurrent.futures.ThreadPoolExecutor(max(1, opts.j)) as ex:
        list(ex.map(job, files))
    skipped = counts["SKIP"] + counts["SKIP-REQ"]
    if skipped:
        print(f"({skipped} skipped)")
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed")
    if counts["FAIL"]:
        return 1
    # Nothing ran because this machine lacks something (not merely @only): say so to ctest.
    return SKIP_EXIT if counts["SKIP-REQ"] and not counts["PASS"] else 0


if __name__ == "__main__":
    sys.exit(main())
