#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Builds the Debian package with cpack, runs lintian on it and checks what an operator gets.

Usage: check_deb.py BUILD_DIR

In a scratch directory: `cpack --config BUILD_DIR/CPackConfig.cmake -B SCRATCH` makes
blockjobd_*.deb and blockjobd-dbgsym_*.ddeb. lintian must report no error (E:) on either;
the warnings are printed. The .deb is extracted with `dpkg-deb -x` into a scratch root and
checked: the binary is stripped and names its debug file by build ID, which the -dbgsym
package holds with DWARF; man page and changelog are gzipped; /etc/default/blockjobd is a
conffile; copyright, units, sysusers file and maintainer scripts are there; md5sums covers
every shipped file and matches; the Maintainer is a real address, the same
in control, copyright and changelog. Exit 77 (a skip) when cpack, dpkg-deb or lintian is
missing."""
import glob
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

build = os.path.abspath(sys.argv[1])
tools = {t: shutil.which(t) for t in ("cpack", "dpkg-deb", "lintian", "readelf")}
missing = [t for t, p in tools.items() if not p]
if missing:
    print("SKIP: not installed:", ", ".join(missing))
    sys.exit(77)

problems = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        problems.append(what)
    return ok


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def sections(path):
    out = run([tools["readelf"], "-S", "-W", path]).stdout
    return set(re.findall(r"\]\s+(\.\S+)", out))


def build_id(path):
    m = re.search(r"Build ID: ([0-9a-f]+)", run([tools["readelf"], "-n", path]).stdout)
    return m.group(1) if m else None


started = time.monotonic()
with tempfile.TemporaryDirectory(prefix="bjd-deb-") as tmp:
    t0 = time.monotonic()
    p = run([tools["cpack"], "--config", os.path.join(build, "CPackConfig.cmake"), "-B", tmp], timeout=900)
    debs = glob.glob(os.path.join(tmp, "blockjobd_*.deb"))
    ddebs = glob.glob(os.path.join(tmp, "blockjobd-dbgsym_*.ddeb"))
    if not check(p.returncode == 0 and len(debs) == 1, f"cpack made one .deb ({time.monotonic() - t0:.1f} s)"):
        print(p.stdout[-3000:])
        sys.exit(1)
    deb = debs[0]
    print(f"     {os.path.basename(deb)}: {os.path.getsize(deb) // 1024} KiB")

    for pkg in debs + ddebs:
        t0 = time.monotonic()
        lint = run([tools["lintian"], "--no-tag-display-limit", pkg], timeout=600)
        tags = [l for l in lint.stdout.splitlines() if re.match(r"^[EWIXPO]: ", l)]
        errors = [l for l in tags if l.startswith("E: ")]
        warnings = [l for l in tags if l.startswith("W: ")]
        name = os.path.basename(pkg)
        check(lint.returncode in (0, 1, 2) and "internal error" not in lint.stdout.lower(),
              f"lintian ran on {name} ({time.monotonic() - t0:.1f} s)")
        check(not errors, f"lintian: no errors on {name} ({len(errors)} errors, {len(warnings)} warnings)")
        for l in errors + warnings:
            print("     " + l)

    root = os.path.join(tmp, "root")
    control = os.path.join(tmp, "control")
    check(run(["dpkg-deb", "-x", deb, root]).returncode == 0, "dpkg-deb -x into a scratch root")
    check(run(["dpkg-deb", "-e", deb, control]).returncode == 0, "dpkg-deb -e (control files)")

    # The binary: stripped, with a build ID whose debug file is in the -dbgsym package.
    binary = os.path.join(root, "usr/bin/blockjobd")
    check(os.access(binary, os.X_OK), "/usr/bin/blockjobd is executable")
    secs = sections(binary)
    check(".symtab" not in secs and not any(s.startswith(".debug_") for s in secs),
          "/usr/bin/blockjobd is stripped (no .symtab, no .debug_*)")
    bid = build_id(binary)
    check(bid is not None, f"/usr/bin/blockjobd has a build ID ({bid})")
    if check(len(ddebs) == 1, "cpack made one -dbgsym .ddeb") and bid:
        droot = os.path.join(tmp, "dbgsym")
        run(["dpkg-deb", "-x", ddebs[0], droot])
        dbg = os.path.join(droot, "usr/lib/debug/.build-id", bid[:2], bid[2:] + ".debug")
        if check(os.path.isfile(dbg), f"-dbgsym holds /usr/lib/debug/.build-id/{bid[:2]}/{bid[2:]}.debug"):
            dsecs = sections(dbg)
            check({".debug_info", ".debug_line"} <= dsecs and ".symtab" in dsecs,
                  "the debug file has DWARF (.debug_info, .debug_line) and the symbol table")
            print(f"     debug file: {os.path.getsize(dbg) // 1024} KiB")
            check(not os.access(dbg, os.X_OK), "the debug file is not executable")
        dctl = os.path.join(tmp, "dbgsym-control")
        run(["dpkg-deb", "-e", ddebs[0], dctl])
        dsums = dict(reversed(l.rstrip("\n").split("  ", 1)) for l in open(os.path.join(dctl, "md5sums")))
        dfiles = {os.path.relpath(os.path.join(d, f), droot) for d, _, fs in os.walk(droot) for f in fs
                  if not os.path.islink(os.path.join(d, f))}
        check(set(dsums) == dfiles and all(
            hashlib.md5(open(os.path.join(droot, n), "rb").read()).hexdigest() == h for n, h in dsums.items()),
            f"-dbgsym md5sums: relative paths of its files, matching ({sorted(dsums)})")
        check(os.readlink(os.path.join(droot, "usr/share/doc/blockjobd-dbgsym")) == "blockjobd"
              if os.path.islink(os.path.join(droot, "usr/share/doc/blockjobd-dbgsym")) else False,
              "-dbgsym: /usr/share/doc/blockjobd-dbgsym -> blockjobd (copyright, changelog)")
        dtext = open(os.path.join(dctl, "control"), encoding="utf-8").read()
        check(re.search(r"^Package: blockjobd-dbgsym$", dtext, re.M) is not None and
              re.search(r"^Depends: blockjobd \(= ", dtext, re.M) is not None,
              "-dbgsym is package blockjobd-dbgsym and depends on this exact blockjobd")

    # Documentation: gzipped (-9n), readable.
    def gz_text(path):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    man = os.path.join(root, "usr/share/man/man8/blockjobd.8.gz")
    check(os.path.isfile(man) and gz_text(man).startswith(".TH BLOCKJOBD 8"), "man page blockjobd.8.gz, gzipped")
    check(not glob.glob(os.path.join(root, "usr/share/man/*/*.[0-9]")), "no uncompressed man page")
    doc = os.path.join(root, "usr/share/doc/blockjobd")
    changelog = os.path.join(doc, "changelog.Debian.gz")
    check(os.path.isfile(changelog) and gz_text(changelog).startswith("blockjobd ("), "changelog.Debian.gz, gzipped")
    copyright_path = os.path.join(doc, "copyright")
    check(os.path.isfile(copyright_path) and "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
          in open(copyright_path, encoding="utf-8").read(), "copyright, machine-readable (DEP-5)")

    # Units, sysusers, the conffile.
    for rel in ("usr/lib/systemd/system/blockjobd.service", "usr/lib/systemd/system/blockjobd.socket",
                "usr/lib/sysusers.d/blockjobd.conf", "etc/default/blockjobd"):
        check(os.path.isfile(os.path.join(root, rel)), f"/{rel}")
    conffiles = open(os.path.join(control, "conffiles"), encoding="utf-8").read().split() \
        if os.path.exists(os.path.join(control, "conffiles")) else []
    check(conffiles == ["/etc/default/blockjobd"], f"conffiles lists /etc/default/blockjobd ({conffiles})")
    for script in ("postinst", "prerm", "postrm"):
        path = os.path.join(control, script)
        check(os.access(path, os.X_OK) and "deb-systemd-" in open(path, encoding="utf-8").read(),
              f"{script}: executable, uses deb-systemd-helper/-invoke")

    # md5sums: every shipped regular file but conffiles, and the sums match.
    md5 = os.path.join(control, "md5sums")
    listed = {}
    if check(os.path.isfile(md5), "md5sums in the control archive"):
        for line in open(md5, encoding="utf-8"):
            digest, name = line.rstrip("\n").split("  ", 1)
            listed[name] = digest
    shipped = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            if not os.path.islink(os.path.join(root, rel)):
                shipped.add(rel)
    # dh_md5sums leaves conffiles out (dpkg keeps their sums in its database); CPack lists
    # them too, which dpkg accepts.
    expected = {r for r in shipped if "/" + r not in conffiles}
    ok = expected <= set(listed) <= shipped
    check(ok, f"md5sums lists every one of the {len(expected)} shipped files (conffiles optional)"
          + ("" if ok else f": not shipped {sorted(set(listed) - shipped)}, "
                           f"missing {sorted(expected - set(listed))}"))
    bad = [n for n, d in listed.items() if n in shipped and
           hashlib.md5(open(os.path.join(root, n), "rb").read()).hexdigest() != d]
    check(not bad, f"md5sums match the files ({bad})")

    # Control: a real maintainer, the same everywhere; a description.
    ctl = open(os.path.join(control, "control"), encoding="utf-8").read()
    m = re.search(r"^Maintainer: (.+)$", ctl, re.M)
    maint = m.group(1).strip() if m else ""
    check(re.fullmatch(r"[^<>]+ <[^@<>\s]+@[^@<>\s]+\.[a-z]+>", maint) is not None and "localhost" not in maint,
          f"Maintainer is a name and a real address ({maint})")
    cl = gz_text(changelog) if os.path.isfile(changelog) else ""
    check(f" -- {maint}  " in cl, "the changelog entry is signed by the Maintainer")
    cp = open(copyright_path, encoding="utf-8").read() if os.path.isfile(copyright_path) else ""
    check(f"Upstream-Contact: {maint}" in cp, "copyright's Upstream-Contact is the Maintainer")
    check(re.search(r"^Description: .+\n( .+\n)+", ctl, re.M) is not None, "Description with an extended text")
    deps = (re.search(r"^Depends: (.+)$", ctl, re.M) or [None, ""])[1]
    check(re.search(r"^Recommends: .*\blibrbd1\b", ctl, re.M) is not None and "librbd" not in deps and
          "librados" not in deps, "librbd1 is recommended, not a dependency (rbd is loaded when used)")

print(f"package test took {time.monotonic() - started:.1f} s")
for p in problems:
    print("FAIL:", p)
sys.exit(1 if problems else 0)
