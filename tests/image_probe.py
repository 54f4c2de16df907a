#!/usr/bin/env python3
"""Start-to-ready timer for tests/image.sh: runs COMMAND and polls GET /readyz on HOST:PORT
every 0.5 ms from just before COMMAND starts until the answer is 200. COMMAND's output goes to
the file LOG (so a COMMAND left running holds none of the caller's pipes). With --netns, COMMAND
runs here and only the polling enters the network namespace PATH (`podman start` must not run
under `ip netns exec`, whose fresh /sys hides the cgroup mounts from the runtime).

    image_probe.py [--netns PATH] HOST PORT LIMIT_SECS LOG COMMAND...

Prints `ready_ms=<milliseconds from just before the spawn to the first 200>` and the pid of
COMMAND (`pid=<n>`), and leaves COMMAND running (`podman start` returns by itself; a podpbx
started directly is stopped by the caller). Exit 1 if no 200 within LIMIT_SECS.
"""

import ctypes
import os
import socket
import subprocess
import sys
import time


def readyz(host, port):
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200 ")
    except OSError:
        return False


def main():
    args = sys.argv[1:]
    netns = None
    if args[0] == "--netns":
        netns, args = args[1], args[2:]
    host, port, limit, log = args[0], int(args[1]), float(args[2]), args[3]
    cmd = args[4:]
    out = open(log, "ab")
    fd = os.open(netns, os.O_RDONLY) if netns else None
    t0 = time.monotonic()
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    if fd is not None:
        # Only this (the polling) thread moves; COMMAND was started in the original namespace.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            print(f"setns {netns}: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
            return 1
    while time.monotonic() - t0 < limit:
        if readyz(host, port):
            print(f"ready_ms={(time.monotonic() - t0) * 1000:.1f}")
            print(f"pid={child.pid}")
            return 0
        if child.poll() not in (None, 0):
            print(f"{cmd[0]} exited with {child.returncode}", file=sys.stderr)
            return 1
        time.sleep(0.0005)
    print(f"no 200 from {host}:{port}/readyz within {limit} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
