#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Replays the blockdev-add arguments that libvirt generates (see README.md here).

  extract.py jsonl LIBVIRT [--rev REV] [--commit-map FILE] [-o blockdev-args.jsonl]
      reads libvirt's test data (a checkout, or a git dir with --rev) and writes the selected
      blockdev-add argument objects, one JSON object a line, in the order they are replayed
  extract.py qmp [-i blockdev-args.jsonl] [-o blockdev-add-replay.qmp]
      turns that file into the scenario: images created with qemu-img first, libvirt's names
      made valid and unique, file names moved under $TMP, every object sent to the daemon

Only data is taken from libvirt (QMP argument objects), no code.  Standard library only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_JSONL = os.path.join(HERE, "blockdev-args.jsonl")
DEFAULT_QMP = os.path.join(HERE, "blockdev-add-replay.qmp")

# Where libvirt keeps generated QMP: blockdev-add objects of one disk source each, and the
# qemu command lines of its XML tests (qemuxml2argvdata was renamed qemuxmlconfdata in 2024).
JSON_DIR = "tests/qemublocktestdata/xml2json/"
ARGS_DIRS = ("tests/qemuxmlconfdata/", "tests/qemuxml2argvdata/")

REPLAYED = {"file", "raw", "qcow2", "null-co"}
# Protocol drivers that Debian's qemu-storage-daemon loads from modules (qemu-block-extra);
# without them QEMU answers "Unknown driver 'X'".  A few of these are sent to show the refusal.
ABSENT = {"iscsi", "rbd", "gluster", "nfs", "ssh", "http", "https", "ftp", "ftps"}
REFUSED_PER_DRIVER = 2
CHILD_KEYS = ("file", "backing", "data-file")
MAX_NEW = 150

IMAGE_SIZE = 16 << 20
SECRET_DATA = "libvirt-replay"


# ------------------------------------------------------------------ reading libvirt's data

def is_git_dir(path):
    return os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects"))


def wanted(path):
    if path.startswith(JSON_DIR):
        return path.endswith(".json") and not path.endswith("-srconly.json") and "/" not in path[len(JSON_DIR):]
    return any(path.startswith(d) and path.endswith(".args") and "/" not in path[len(d):]
               for d in ARGS_DIRS)


def read_sources(libvirt, rev):
    """Yields (path, text, commit) for every file of interest, sorted: xml2json first."""
    if rev or is_git_dir(libvirt):
        gitdir = libvirt if is_git_dir(libvirt) else os.path.join(libvirt, ".git")
        rev = rev or "HEAD"
        git = ["git", "--git-dir=" + gitdir]
        commit = subprocess.run(git + ["rev-parse", rev + "^{commit}"], check=True,
                                capture_output=True, text=True).stdout.strip()
        names = subprocess.run(git + ["ls-tree", "-r", "--name-only", commit, "--", JSON_DIR.rstrip("/")]
                               + [d.rstrip("/") for d in ARGS_DIRS],
                               check=True, capture_output=True, text=True).stdout.split("\n")
        paths = sorted((p for p in names if wanted(p)), key=order_key)
        proc = subprocess.Popen(git + ["cat-file", "--batch"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        for p in paths:
            proc.stdin.write(f"{commit}:{p}\n".encode())
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            size = int(header[2])
            data = proc.stdout.read(size + 1)[:size]
            yield p, data.decode("utf-8", "replace"), commit
        proc.stdin.close()
        proc.wait()
        return
    commit = None
    if os.path.exists(os.path.join(libvirt, ".git")):
        r = subprocess.run(["git", "-C", libvirt, "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = r.stdout.strip() or None
    paths = []
    for d in (JSON_DIR,) + ARGS_DIRS:
        full = os.path.join(libvirt, d)
        if os.path.isdir(full):
            paths += [d + n for n in os.listdir(full) if wanted(d + n)]
    for p in sorted(paths, key=order_key):
        with open(os.path.join(libvirt, p), encoding="utf-8", errors="replace") as f:
            yield p, f.read(), commit


def order_key(path):
    rank = 0 if path.startswith(JSON_DIR) else 1 + [path.startswith(d) for d in ARGS_DIRS].index(True)
    return (rank, path)


BLOCKDEV_RE = re.compile(r"^-blockdev '(\{.*\})'(?: \\)?$")


def blockdev_objects(path, text):
    """The blockdev-add argument objects of a file, in the order libvirt attaches them:
    command lines already list storage before format and backing before overlay; the
    xml2json files list a chain top (format, then storage) first, so they are reversed."""
    objs = []
    if path.endswith(".args"):
        for line in text.split("\n"):
            m = BLOCKDEV_RE.match(line.strip())
            if m:
                try:
                    objs.append(json.loads(m.group(1).replace("'\\''", "'")))
                except ValueError:
                    pass
        return list(enumerate(objs))
    dec = json.JSONDecoder()
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        try:
            o, i = dec.raw_decode(text, i)
        except ValueError:
            break
        if isinstance(o, dict):
            objs.append(o)
    return list(reversed(list(enumerate(objs))))


def walk(obj):
    """Yields every node definition in an argument object: the object and inline children."""
    yield obj
    for k in CHILD_KEYS:
        if isinstance(obj.get(k), dict):
            yield from walk(obj[k])


def drivers(obj):
    return {n.get("driver") for n in walk(obj)}


def refs(obj):
    return [n[k] for n in walk(obj) for k in CHILD_KEYS if isinstance(n.get(k), str)]


def defined_names(obj):
    return [n["node-name"] for n in walk(obj) if isinstance(n.get("node-name"), str)]


def rewrite_leaves(obj, leaf):
    """A copy of a JSON value with every non-container value `v` under member `key` replaced by
    `leaf(key, v)` (key None inside lists)."""
    def go(v, key=None):
        if isinstance(v, dict):
            return {k: go(x, k) for k, x in v.items()}
        if isinstance(v, list):
            return [go(x) for x in v]
        return leaf(key, v)
    return go(obj)


def shape(obj):
    """The argument object with names (node names, file names, references) blanked: libvirt's
    test files differ mostly in those."""
    def blank(key, v):
        if key == "node-name":
            return "<node>"
        if key == "filename":
            return "<file>"
        if key in CHILD_KEYS and isinstance(v, str):
            return "<ref>"
        return v
    return json.dumps(rewrite_leaves(obj, blank), sort_keys=True)


def select(sources, max_new):
    """Returns the jsonl records: per source file the replayable objects with a new shape,
    plus the objects they reference (role "dep"), then a few refused protocol nodes."""
    seen = set()
    refused_seen = set()
    refused_count = {}
    records = []
    refused = []
    new_total = 0
    for path, text, commit in sources:
        objs = blockdev_objects(path, text)
        ok_names = {}
        defining = {}          # node name -> index into objs of its latest definition
        candidates = []        # (position, seq, obj, role)
        deps = {}              # position -> positions it needs
        for pos, (seq, obj) in enumerate(objs):
            drv = drivers(obj)
            rs = refs(obj)
            ok = drv <= REPLAYED and all(ok_names.get(r) for r in rs)
            deps[pos] = [defining[r] for r in rs if r in defining]
            for n in defined_names(obj):
                ok_names[n] = ok
                defining[n] = pos
            if ok:
                candidates.append(pos)
            elif not rs and len(drv) == 1 and drv <= ABSENT:
                d = next(iter(drv))
                key = (d, tuple(sorted(obj)))
                if key not in refused_seen and refused_count.get(d, 0) < REFUSED_PER_DRIVER:
                    refused_seen.add(key)
                    refused_count[d] = refused_count.get(d, 0) + 1
                    refused.append({"source": path, "commit": commit, "seq": seq,
                                    "role": "refused", "args": obj})
        new = []
        for pos in candidates:
            s = shape(objs[pos][1])
            if s not in seen and new_total < max_new:
                seen.add(s)
                new.append(pos)
                new_total += 1
        if not new:
            continue
        keep = set()
        stack = list(new)
        while stack:
            p = stack.pop()
            if p not in keep:
                keep.add(p)
                stack += deps[p]
        for pos in sorted(keep):
            seq, obj = objs[pos]
            records.append({"source": path, "commit": commit, "seq": seq,
                            "role": "new" if pos in new else "dep", "args": obj})
    return records + refused


def cmd_jsonl(args):
    commits = {}
    if args.commit_map:
        with open(args.commit_map) as f:
            commits = json.load(f)

    def sources():
        for path, text, commit in read_sources(args.libvirt, args.rev):
            yield path, text, commits.get(path, commit)
    records = select(sources(), args.max)
    with open(args.output, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    roles = {}
    for r in records:
        roles[r["role"]] = roles.get(r["role"], 0) + 1
    print(f"{args.output}: {len(records)} objects from {len({r['source'] for r in records})} files "
          + ", ".join(f"{k} {v}" for k, v in sorted(roles.items())), file=sys.stderr)


# ------------------------------------------------------------------ writing the scenario

ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


class Group:
    """One libvirt source file: maps its names into valid, unique ones and plans its images."""

    def __init__(self, index, source):
        self.index = index
        self.source = source
        self.latest = {}       # libvirt node name -> our name for its latest definition
        self.used = set()
        self.paths = {}        # libvirt file name -> $TMP path
        self.top = []          # node names given to blockdev-add, in order
        self.secrets = []
        self.nodes = {}        # our node name -> node definition (after renaming)

    def fresh_name(self, name):
        base = name.lstrip("#")
        if not ID_RE.match(base):
            base = "n" + re.sub(r"[^A-Za-z0-9_.-]", "_", base)
        base = base[:31]
        cand, k = base, 2
        while cand in self.used:
            suffix = f"-{k}"
            cand = base[:31 - len(suffix)] + suffix
            k += 1
        self.used.add(cand)
        return cand

    def path(self, filename):
        if filename not in self.paths:
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(filename.rstrip("/"))) or "img"
            cand = f"g{self.index:02d}-{stem}"
            k = 2
            while cand in self.paths.values():
                cand = f"g{self.index:02d}-{k}-{stem}"
                k += 1
            self.paths[filename] = cand
        return self.paths[filename]

    def rewrite(self, obj):
        """Returns the object as sent: references resolved to the names given so far, then its
        own names made valid and unique, file names moved under $TMP."""
        def resolve(node):
            out = {}
            for k, v in node.items():
                if k in CHILD_KEYS and isinstance(v, str):
                    out[k] = self.latest.get(v, v)
                elif k in CHILD_KEYS and isinstance(v, dict):
                    out[k] = resolve(v)
                else:
                    out[k] = v
            return out

        def rename(node):
            out = dict(node)
            if isinstance(node.get("node-name"), str):
                out["node-name"] = self.fresh_name(node["node-name"])
                self.latest[node["node-name"]] = out["node-name"]
            if node.get("driver") == "file" and isinstance(node.get("filename"), str):
                out["filename"] = "$TMP/" + self.path(node["filename"])
            for k in CHILD_KEYS:
                if isinstance(node.get(k), dict):
                    out[k] = rename(node[k])
            return out
        new = rename(resolve(obj))
        for n in walk(new):
            if "node-name" in n:
                self.nodes[n["node-name"]] = n
        if isinstance(new.get("node-name"), str):
            self.top.append(new["node-name"])
        for n in walk(new):
            sec = (n.get("encrypt") or {}).get("key-secret") if isinstance(n.get("encrypt"), dict) else None
            if sec and sec not in self.secrets:
                self.secrets.append(sec)
        return new

    def child(self, node, key):
        v = node.get(key)
        if isinstance(v, dict):
            return v
        if isinstance(v, str):
            return self.nodes.get(v)
        return None

    def image_commands(self):
        """qemu-img commands creating what the group's nodes expect to find."""
        files = {}    # $TMP-relative path -> {"size", "qcow2": opts, "embed": [(offset, opts)], "data": bool}

        def spec(p):
            return files.setdefault(p, {"size": IMAGE_SIZE, "qcow2": None, "embed": [], "data": False})

        def qcow2_opts(fmt):
            opts = {"backing": "backing" not in fmt, "data_file": None, "secret": None}
            d = self.child(fmt, "data-file")
            if d and d.get("driver") == "file":
                opts["data_file"] = d["filename"][len("$TMP/"):]
                spec(opts["data_file"])["data"] = True
            if isinstance(fmt.get("encrypt"), dict):
                opts["secret"] = fmt["encrypt"].get("key-secret")
            return opts

        for node in self.nodes.values():
            if node.get("driver") == "file":
                spec(node["filename"][len("$TMP/"):])
        for node in self.nodes.values():
            if node.get("driver") == "raw":
                f = self.child(node, "file")
                if f and f.get("driver") == "file" and isinstance(node.get("size"), int):
                    s = spec(f["filename"][len("$TMP/"):])
                    need = node.get("offset", 0) + node["size"]
                    s["size"] = max(s["size"], (need + (1 << 20) - 1) & ~((1 << 20) - 1))
            if node.get("driver") != "qcow2":
                continue
            f = self.child(node, "file")
            if not f:
                continue
            if f.get("driver") == "file":
                spec(f["filename"][len("$TMP/"):])["qcow2"] = qcow2_opts(node)
            elif f.get("driver") == "raw":
                g = self.child(f, "file")
                if g and g.get("driver") == "file":
                    spec(g["filename"][len("$TMP/"):])["embed"].append((f.get("offset", 0), qcow2_opts(node)))

        def create_qcow2(path, opts):
            if opts["secret"] and not opts["data_file"]:
                # Formatting LUKS benchmarks PBKDF2 for about 2 s whatever iter-time says, so
                # every encrypted image is a copy of one of two templates made once. The
                # benchmark reads the thread's CPU time, which on a loaded machine can fail to
                # advance ("Unable to get accurate CPU usage"), about one try in ten here: so
                # up to ten tries, a failed try's file removed so that no later step copies it.
                tmpl = "luks-backed.tmpl" if opts["backing"] else "luks.tmpl"
                make = create_qcow2(tmpl, dict(opts, secret=None, luks=True))
                retried = (f"for i in 1 2 3 4 5 6 7 8 9 10; do {{ {make}; }} && break; "
                           f"rm -f $TMP/{tmpl}; sleep 1; done")
                return f"if [ ! -e $TMP/{tmpl} ]; then {retried}; fi && cp $TMP/{tmpl} $TMP/{path}"
            cmd = ["qemu-img create -q -f qcow2"]
            o = []
            if opts["backing"]:
                cmd.insert(0, f"qemu-img create -q -f raw $TMP/{path}.base {IMAGE_SIZE} &&")
                cmd.append(f"-b $TMP/{path}.base -F raw")
            if opts["data_file"]:
                o.append(f"data_file=$TMP/{opts['data_file']}")
            if opts["secret"] or opts.get("luks"):
                cmd.append(f"--object secret,id=sec0,data={SECRET_DATA}")
                o += ["encrypt.format=luks", "encrypt.key-secret=sec0", "encrypt.iter-time=10"]
            if o:
                cmd.append("-o " + ",".join(o))
            cmd.append(f"$TMP/{path} {IMAGE_SIZE}")
            return " ".join(cmd)

        raw, qcow2 = [], []
        for path, s in files.items():
            if s["qcow2"]:
                qcow2.append(create_qcow2(path, s["qcow2"]))
            elif s["data"]:
                continue        # qemu-img creates the external data file with its image
            else:
                raw.append(f"truncate -s {s['size']} $TMP/{path}")
                for off, opts in s["embed"]:
                    qcow2.append(create_qcow2(path + ".emb", opts))
                    qcow2.append(f"dd if=$TMP/{path}.emb of=$TMP/{path} bs=64k seek={off} "
                                 "oflag=seek_bytes conv=notrunc status=none")
        return raw + qcow2


def loopback(obj):
    """Points a refused protocol node at loopback, so that even a daemon that has the driver
    sends nothing beyond this machine."""
    def fix(key, v):
        if key == "host":
            return "127.0.0.1"
        if key == "portal":
            return "127.0.0.1:" + v.rsplit(":", 1)[-1]
        if key == "url":
            u = urllib.parse.urlsplit(v)
            return u._replace(netloc="127.0.0.1" + (f":{u.port}" if u.port else "")).geturl()
        return v
    return rewrite_leaves(obj, fix)


def qmp_line(execute, arguments):
    return json.dumps({"execute": execute, "arguments": arguments})


def cmd_qmp(args):
    with open(args.input) as f:
        records = [json.loads(line) for line in f if line.strip()]
    replay = [r for r in records if r["role"] != "refused"]
    refused = [r for r in records if r["role"] == "refused"]
    out = [
        "# libvirt's own blockdev-add arguments, replayed (generated by extract.py from",
        "# blockdev-args.jsonl; see README.md in this directory, do not edit by hand).",
        "# Per libvirt test file: its images are created, every selected object is sent in the",
        "# order libvirt attaches them (storage before format, backing before overlay), then the",
        "# nodes are deleted again (format before storage), as libvirt does on unplug.",
    ]
    groups = []
    for r in replay:
        if not groups or groups[-1][0].source != r["source"]:
            groups.append((Group(len(groups) + 1, r["source"]), []))
        groups[-1][1].append(r)
    for g, recs in groups:
        sent = [g.rewrite(r["args"]) for r in recs]
        out.append("")
        out.append(f"@echo {g.source}")
        cmds = g.image_commands()
        if cmds:
            out.append("@shell " + " && ".join(cmds))
        for s in g.secrets:
            out.append(qmp_line("object-add", {"qom-type": "secret", "id": s, "data": SECRET_DATA}))
        for s in sent:
            out.append(qmp_line("blockdev-add", s))
        for n in reversed(g.top):
            out.append(qmp_line("blockdev-del", {"node-name": n}))
        for s in g.secrets:
            out.append(qmp_line("object-del", {"id": s}))
    with open(args.output, "w") as f:
        f.write("\n".join(out) + "\n")
    if refused:
        # A scenario of its own: qemu-storage-daemon's answers to these depend on which
        # qemu-block-extra modules the machine has, and some of them on connect timings.
        net = [
            "# libvirt's blockdev-add arguments for network protocol drivers, every host moved to",
            "# loopback where nothing listens (generated by extract.py; do not edit by hand).",
            "@only ours qemu-storage-daemon's answers depend on the qemu-block-extra modules installed and on connect timings",
            "# librados (rbd) would wait 300 s for a monitor that is not there: 2 s will do.",
            "@env CEPH_ARGS=--client-mount-timeout 2",
            "",
        ]
        for r in refused:
            net.append(f"# {r['source']}")
            net.append(qmp_line("blockdev-add", loopback(r["args"])))
        with open(os.path.join(os.path.dirname(args.output), "network-drivers.qmp"), "w") as f:
            f.write("\n".join(net) + "\n")
    print(f"{args.output}: {len(replay)} replayed objects in {len(groups)} groups, "
          f"{len(refused)} refused", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("jsonl", help="extract from a libvirt checkout or git dir")
    j.add_argument("libvirt", help="libvirt checkout, or its git dir")
    j.add_argument("--rev", help="commit to read from the git dir (default HEAD)")
    j.add_argument("--commit-map", help="JSON object path -> commit, for files fetched one by one")
    j.add_argument("--max", type=int, default=MAX_NEW, help="most distinct argument shapes")
    j.add_argument("-o", "--output", default=DEFAULT_JSONL)
    q = sub.add_parser("qmp", help="write the scenario from the jsonl")
    q.add_argument("-i", "--input", default=DEFAULT_JSONL)
    q.add_argument("-o", "--output", default=DEFAULT_QMP)
    args = ap.parse_args()
    {"jsonl": cmd_jsonl, "qmp": cmd_qmp}[args.cmd](args)


if __name__ == "__main__":
    main()
