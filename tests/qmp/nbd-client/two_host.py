#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""libvirt's storage migration (virsh migrate --copy-storage-all) between two daemons on two "hosts".

Usage: two_host.py DAEMON WORKDIR copy|restart [SIZE_MIB]

Two network namespaces joined by a veth pair (10.254.77.1/30 source, 10.254.77.2/30
destination; the addresses exist only inside those namespaces) each run one DAEMON
(blockjobd or qemu-storage-daemon: the options are QEMU's) under `ip netns exec`. The QMP
sequence is the one libvirt's src/qemu/qemu_migration.c sends for `virsh migrate
--copy-storage-all --tls`, over TCP with TLS (x509 certificates made by
tests/qmp/tls/gencerts.sh, the server's naming the destination's address):

  destination: object-add tls-creds-x509 objlibvirt_migrate_tls0 (endpoint server,
               verify-peer), nbd-server-start on the inet address with those tls-creds,
               blockdev-add of a raw target file of the source's size
               (libvirt-1-storage/libvirt-1-format), block-export-add writable named after
               the disk alias (drive-virtio-disk0), id libvirt-nbd-<node>;
  source:      object-add of the client's tls-creds-x509; blockdev-add of the nbd node
               migration-vda-storage (server inet, export drive-virtio-disk0, tls-creds,
               tls-hostname the destination's address) and the raw node migration-vda-format
               over it, blockdev-mirror sync=full with auto-finalize/auto-dismiss=false,
               READY, then block-job-cancel (the point-in-time finish), job-dismiss,
               blockdev-del, object-del;
  destination: block-export-del, nbd-server-stop.

Before the first copy, an nbd node without tls-creds must be refused by the TLS-only server.

While the copy runs, fio (the guest) writes through the source daemon's own NBD export (a
unix socket); it stops before the cancel. The target then equals the source (qemu-img
compare, through the source daemon's export and again on the files once it has quit).

copy:    the sequence twice, copy-mode background and write-blocking
         (--copy-storage-synchronous-writes), each to a fresh destination daemon.
restart: the background copy, throttled; in the middle of it the destination daemon is
         killed (SIGKILL) and started again on the same address with the same file and
         export, well within the nbd node's reconnect-delay; the job reaches READY and the
         images compare equal.

Where network namespaces are refused (no CAP_NET_ADMIN, no `ip`), the same sequence runs on
127.0.0.1 and a loud line says so (BJD_TWO_HOST_NO_NETNS=1 forces that, to test it). The
namespaces (and with them the veth pair) are removed in every case, SIGTERM included.
Prints one line per step (no timings, so the output is stable) and a summary; exit
status 1 on any failure. The `network:`, `time:` and `!!!` lines vary with the machine; the
scenarios that run this (two-host*.qmp) keep them out of the transcript and copy the `!!!`
lines to the runner's stderr.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib"))
import bjdtest  # noqa: E402

SRC_IP, DST_IP, PREFIX = "10.254.77.1", "10.254.77.2", 30
TLS_ID = "objlibvirt_migrate_tls0"   # libvirt's alias for the migration's TLS credentials
PORT = 49153  # the first port of libvirt's default migration NBD range
DISK = "drive-virtio-disk0"
EXPORT_ID = "libvirt-nbd-libvirt-1-format"


Failure = bjdtest.Failure


CHILDREN = []  # daemons and fio, killed on the way out whatever happened


def run(cmd, check=True):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and r.returncode != 0:
        raise Failure(f"{' '.join(cmd)}: exit {r.returncode}: {r.stdout.strip()}")
    return r


class Net:
    """Two namespaces and a veth pair, or loopback where that is refused."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.ns = {"src": f"bjd2h-s{tag}", "dst": f"bjd2h-d{tag}"}
        self.veth = (f"b2hs{tag}", f"b2hd{tag}")
        self.made = []
        self.isolated = False
        self.src_ip = self.dst_ip = "127.0.0.1"

    def setup(self):
        try:
            if os.environ.get("BJD_TWO_HOST_NO_NETNS"):
                raise Failure("BJD_TWO_HOST_NO_NETNS is set")
            for ns in self.ns.values():
                run(["ip", "netns", "add", ns])
                self.made.append(ns)
            # Created straight inside the namespaces: the pair never exists in this one.
            run(["ip", "link", "add", self.veth[0], "netns", self.ns["src"], "type", "veth",
                 "peer", "name", self.veth[1], "netns", self.ns["dst"]])
            for side, dev, ip in (("src", self.veth[0], SRC_IP), ("dst", self.veth[1], DST_IP)):
                run(["ip", "-n", self.ns[side], "addr", "add", f"{ip}/{PREFIX}", "dev", dev])
                run(["ip", "-n", self.ns[side], "link", "set", dev, "up"])
                run(["ip", "-n", self.ns[side], "link", "set", "lo", "up"])
            self.isolated = True
            self.src_ip, self.dst_ip = SRC_IP, DST_IP
            print(f"network: namespaces source {SRC_IP}/{PREFIX}, destination {DST_IP}/{PREFIX} over veth")
        except (Failure, OSError) as e:
            self.cleanup()
            print("!" * 78)
            print(f"!!! NETWORK NAMESPACES REFUSED ({str(e).splitlines()[0][:120]})")
            print("!!! RUNNING THE SAME SEQUENCE ON 127.0.0.1 INSTEAD: NOT A TWO-HOST TEST")
            print("!" * 78)

    def port(self):
        if self.isolated:
            return PORT
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        return p

    def wrap(self, side, argv):
        return ["ip", "netns", "exec", self.ns[side]] + argv if self.isolated else argv

    def cleanup(self):
        # Deleting a namespace destroys the veth end inside it, and with it the pair.
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.made = []


class Daemon:
    """One daemon with one QMP connection; events are kept for wait_event."""

    def __init__(self, net, side, daemon, work, name):
        self.sock = os.path.join(work, f"{name}-qmp.sock")
        self.log = open(os.path.join(work, f"{name}.log"), "ab")
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.p = subprocess.Popen(net.wrap(side, [daemon, "--chardev", f"socket,id=m,path={self.sock},server=on,wait=off",
                                                  "--monitor", "chardev=m"]),
                                  stdout=self.log, stderr=self.log, start_new_session=True)
        CHILDREN.append(self.p)
        try:
            self.q = bjdtest.QMP(self.sock, timeout=10, alive=lambda: self.p.poll() is None)
        except Failure as e:
            raise Failure(f"{name} daemon did not start (exit {self.p.poll()}, see {name}.log): {e}") from None
        self.s = self.q.s

    def cmd(self, execute, /, ok=True, **args):
        if ok:
            return self.q.ok(execute, **args)
        m = self.q.cmd(execute, **args)
        return m.get("return", m)

    def wait_event(self, name, /, timeout=60, **data):
        return self.q.wait_event(name, timeout, **data)

    def kill(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()
        self.s.close()

    def quit(self):
        try:
            self.cmd("quit", ok=False)
        except (Failure, OSError, ValueError):
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failure("daemon did not quit")
        self.s.close()
        if self.p.returncode != 0:
            raise Failure(f"daemon exited with status {self.p.returncode}")


def tls_creds(d, work, endpoint):
    d.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": TLS_ID, "endpoint": endpoint,
                           "dir": os.path.join(work, "pki", endpoint), "verify-peer": True})


def start_destination(net, daemon, work, name, target, port):
    """libvirt's destination: the disk, the NBD server on the migration address, the export."""
    d = Daemon(net, "dst", daemon, work, name)
    tls_creds(d, work, "server")
    d.cmd("blockdev-add", driver="file", filename=target, **{"node-name": "libvirt-1-storage",
          "auto-read-only": True, "discard": "unmap"})
    d.cmd("blockdev-add", driver="raw", file="libvirt-1-storage", **{"node-name": "libvirt-1-format", "read-only": False})
    d.cmd("nbd-server-start", addr={"type": "inet", "data": {"host": net.dst_ip, "port": str(port)}},
          **{"tls-creds": TLS_ID})
    d.cmd("block-export-add", type="nbd", id=EXPORT_ID, name=DISK, writable=True, **{"node-name": "libvirt-1-format"})
    return d


def stop_destination(d):
    d.cmd("block-export-del", id=EXPORT_ID)
    d.wait_event("BLOCK_EXPORT_DELETED", id=EXPORT_ID)
    d.cmd("nbd-server-stop")
    d.quit()


def start_fio(uri, size, runtime, seed):
    p = subprocess.Popen(["fio", "--name=guest", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
                             "--bsrange=4k-64k", "--iodepth=8", f"--size={size}", "--time_based",
                             f"--runtime={runtime}", "--rate=24m", f"--randseed={seed}", "--end_fsync=1",
                             "--output-format=json"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    CHILDREN.append(p)
    return p


def fio_result(fio):
    out, _ = fio.communicate(timeout=60)
    if fio.returncode != 0:
        raise Failure(f"fio failed ({fio.returncode}): {out[-500:]}")
    j = json.loads(out[out.index("{"):])
    return j["jobs"][0]["write"]["io_bytes"]


def compare(a_fmt, a, b, label):
    r = run(["qemu-img", "compare", "-U", "-f", a_fmt, "-F", "raw", a, b], check=False)
    first = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    print(f"{label}: {first} [rc={r.returncode}]")
    if r.returncode != 0:
        raise Failure(f"{label}: images differ: {r.stdout.strip()}")


def migrate(net, daemon, work, src, mode, n, port, size, restart):
    """One --copy-storage-all run onto a fresh destination; returns the target's path."""
    target = os.path.join(work, f"dst-{n}.img")
    run(["qemu-img", "create", "-q", "-f", "raw", target, str(size)])
    name = f"dst{n}"
    dst = start_destination(net, daemon, work, name, target, port)
    storage = {"driver": "nbd", "node-name": "migration-vda-storage", "auto-read-only": True, "discard": "unmap",
               "server": {"type": "inet", "host": net.dst_ip, "port": str(port)}, "export": DISK}
    if restart:
        storage["reconnect-delay"] = 20
    if n == 0:
        plain = src.cmd("blockdev-add", ok=False, **storage)
        if "error" not in plain:
            raise Failure("the TLS-only destination accepted a plaintext client")
        print(f"{mode}: an nbd node without tls-creds is refused by the TLS-only destination")
    tls_creds(src, work, "client")
    storage.update({"tls-creds": TLS_ID, "tls-hostname": net.dst_ip})
    src.cmd("blockdev-add", **storage)
    src.cmd("blockdev-add", driver="raw", file="migration-vda-storage",
            **{"node-name": "migration-vda-format", "read-only": False})
    uri = f"nbd+unix:///vm?socket={os.path.join(work, 'src-nbd.sock')}"
    fio = start_fio(uri, size, 6 if restart else 3, 1000 + n)
    time.sleep(0.3)
    args = {"job-id": DISK, "device": "libvirt-1-format", "target": "migration-vda-format", "sync": "full",
            "auto-finalize": True, "auto-dismiss": False}
    if mode == "write-blocking":
        args["copy-mode"] = "write-blocking"
    if restart:
        args["speed"] = 16 << 20
    src.cmd("blockdev-mirror", **args)
    if fio.poll() is not None:
        raise Failure(f"fio ended before the copy started: {fio.communicate()[0][-500:]}")
    if restart:
        time.sleep(1.0)
        job = src.cmd("query-block-jobs")[0]
        if job["ready"] or job["offset"] >= job["len"]:
            raise Failure(f"the copy finished before the destination was killed: {job}")
        dst.kill()
        killed = time.monotonic()
        print(f"{mode}: destination killed (SIGKILL) during the copy")
        time.sleep(0.5)
        dst = start_destination(net, daemon, work, name + "-again", target, port)
        back = time.monotonic() - killed
        if back >= storage["reconnect-delay"]:
            raise Failure(f"the destination took {back:.1f} s to come back, past reconnect-delay")
        print(f"{mode}: destination restarted with the same file and export, within reconnect-delay")
        src.cmd("block-job-set-speed", device=DISK, speed=0)
    src.wait_event("BLOCK_JOB_READY", timeout=90, device=DISK)
    written = fio_result(fio)
    if written <= 0:
        raise Failure("fio wrote nothing")
    print(f"{mode}: READY; the guest writer wrote during the copy and has stopped")
    src.cmd("block-job-cancel", device=DISK)
    src.wait_event("JOB_STATUS_CHANGE", timeout=60, id=DISK, status="concluded")
    jobs = [j for j in src.cmd("query-jobs") if j["id"] == DISK]
    if not jobs or "error" in jobs[0]:
        raise Failure(f"job ended with an error: {jobs}")
    src.cmd("job-dismiss", id=DISK)
    src.cmd("blockdev-del", **{"node-name": "migration-vda-format"})
    src.cmd("blockdev-del", **{"node-name": "migration-vda-storage"})
    src.cmd("object-del", id=TLS_ID)
    print(f"{mode}: block-job-cancel after READY: concluded without error")
    stop_destination(dst)
    compare("raw", uri, target, f"{mode}: source (through its export) vs target")
    return target


def main():
    if len(sys.argv) < 4 or sys.argv[3] not in ("copy", "restart"):
        print(__doc__)
        return 2
    daemon, work, what = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
    size = (int(sys.argv[4]) if len(sys.argv) > 4 else 1024) << 20
    t0 = time.monotonic()
    net = Net()

    def on_term(signum, frame):
        raise SystemExit(1)

    signal.signal(signal.SIGTERM, on_term)
    try:
        net.setup()
        run(["sh", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tls", "gencerts.sh"),
             os.path.join(work, "pki"), "localhost", net.dst_ip])
        image = os.path.join(work, "src.qcow2")
        run(["qemu-img", "create", "-q", "-f", "qcow2", image, str(size)])
        # Data at the start, the middle and the end; the rest stays unallocated.
        run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 32M", "-c", f"write -P 0x22 {size // 2} 32M",
             "-c", f"write -P 0x33 {size - (16 << 20)} 16M", image])
        src = Daemon(net, "src", daemon, work, "src")
        src.cmd("blockdev-add", driver="file", filename=image,
                **{"node-name": "libvirt-1-storage", "auto-read-only": True, "discard": "unmap"})
        src.cmd("blockdev-add", driver="qcow2", file="libvirt-1-storage",
                **{"node-name": "libvirt-1-format", "read-only": False})
        src.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": os.path.join(work, "src-nbd.sock")}})
        src.cmd("block-export-add", type="nbd", id="vm", name="vm", writable=True, **{"node-name": "libvirt-1-format"})
        modes = ["background", "write-blocking"] if what == "copy" else ["background"]
        targets = []
        for n, mode in enumerate(modes):
            targets.append(migrate(net, daemon, work, src, mode, n, net.port(), size, what == "restart"))
        src.cmd("block-export-del", id="vm")
        src.wait_event("BLOCK_EXPORT_DELETED", id="vm")
        src.cmd("nbd-server-stop")
        src.quit()
        run(["qemu-img", "check", "-q", image])
        # The last target was cancelled after the last write: it equals the closed source.
        compare("qcow2", image, targets[-1], "source file vs last target after quit")
        print(f"{what}: {len(modes)} migration(s) of {size >> 20} MiB: OK")
        print(f"time: {time.monotonic() - t0:.1f} s over "
              f"{'veth between namespaces' if net.isolated else '127.0.0.1 (NO NAMESPACES)'}")
        return 0
    except (Failure, OSError, ValueError, subprocess.TimeoutExpired) as e:
        print(f"FAILED: {e}")
        for p in CHILDREN:
            if p.poll() is None:
                print(f"--- pid {p.pid} at the failure: ...{' '.join(map(str, p.args))[-100:]}")
                print("\n".join(bjdtest.thread_states(p.pid)))
        for name in sorted(os.listdir(work)):
            if name.endswith(".log"):
                with open(os.path.join(work, name), errors="replace") as f:
                    tail = f.read()[-2000:]
                if tail.strip():
                    print(f"--- {name}\n{tail}")
        return 1
    finally:
        for p in CHILDREN:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        net.cleanup()


if __name__ == "__main__":
    sys.exit(main())
