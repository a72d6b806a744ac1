#!/usr/bin/env python3
"""Memory per volume and start-up time per 1,000 volumes of ublk-volumed.

Starts a daemon on a temp dir (stores are sparse files on /dev/shm), creates
N volumes on one store, reads the daemon's VmRSS (/proc/PID/status) before
and after, restarts it and times the start until it answers, then lists the
volumes (human-readable size of the volume.list response). Prints figures;
not a test.

  bench/daemon/volume_cost.py build/release/src/daemon/ublk-volumed [N]
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Rpc:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 1

    def call(self, method, params=None):
        req = {"v": 1, "id": self.next_id, "method": method, "params": params or {}}
        self.next_id += 1
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("daemon closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        resp = json.loads(line)
        if not resp["ok"]:
            raise RuntimeError(f"{method}: {resp['error']}")
        return resp["result"], len(line)


def start(daemon, config, sock):
    t0 = time.monotonic()
    proc = subprocess.Popen([daemon, "--config", config], stderr=subprocess.DEVNULL)
    while True:
        if proc.poll() is not None:
            raise RuntimeError("daemon exited")
        try:
            rpc = Rpc(sock)
            rpc.call("daemon.status")
            return proc, rpc, time.monotonic() - t0
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.05)


def main():
    daemon = os.path.abspath(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    work = tempfile.mkdtemp(prefix="ublkvol-cost-", dir="/dev/shm")
    try:
        sock = work + "/ctl.sock"
        config = work + "/config.json"
        with open(config, "w") as f:
            json.dump({"state_dir": work + "/state", "control_socket": sock,
                       "log_level": "warn"}, f)
        proc, rpc, _ = start(daemon, config, sock)
        # One DBS volume pair per volume; max_volumes grows with the store
        # size (256 MiB each), so the sparse store is sized for 2N+16.
        store_bytes = (2 * count + 16) * (256 << 20)
        rpc.call("store.add", {"name": "s", "path": work + "/store.img", "format": True,
                               "size": store_bytes})
        base = rss_kib(proc.pid)
        t0 = time.monotonic()
        for i in range(count):
            rpc.call("volume.create", {"name": f"v{i:05d}", "size": 1 << 20, "stores": ["s"]})
        create_s = time.monotonic() - t0
        after = rss_kib(proc.pid)
        _, list_bytes = rpc.call("volume.list")
        proc.terminate()
        proc.wait()
        proc, rpc, start_s = start(daemon, config, sock)
        restarted = rss_kib(proc.pid)
        proc.terminate()
        proc.wait()
        print(f"volumes: {count}")
        print(f"RSS with one store, no volumes: {base / 1024:.1f} MiB")
        print(f"RSS after creating them: {after / 1024:.1f} MiB "
              f"-> {(after - base) / count:.1f} KiB per volume")
        print(f"RSS after a restart: {restarted / 1024:.1f} MiB "
              f"-> {(restarted - base) / count:.1f} KiB per volume")
        print(f"create: {create_s:.2f} s ({create_s * 1000 / count:.2f} ms per volume)")
        print(f"start-up with them: {start_s:.2f} s ({start_s * 1000 / count:.2f} s per 1,000 volumes)")
        print(f"volume.list response: {list_bytes} bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
