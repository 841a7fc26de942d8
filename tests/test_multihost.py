"""trilib.distributed across two hosts for real: two Linux network namespaces (each its own network
stack and address) joined by a veth pair, torchrun --nnodes 2 --nproc-per-node 2 in each, the c10d
rendezvous on host A's address and gloo over the veth. Every schedule's float64 gradients must
match autograd's within 1e-10 and rank 0's timeline must hold the ranks of both hosts.

Needs root and iproute2 (``.ci/run`` installs it); skipped with the reason elsewhere, unless
``TRILIB_REQUIRE_MULTIHOST=1`` (set by ``.ci/run``) turns the skip into a failure. Namespaces,
the veth pair and every process are removed whatever happens.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trilib.distributed.schedules import SCHEDULES

ROOT = Path(__file__).resolve().parents[1]
TAG = f"tl{os.getpid() % 100000}"                  # unique names: namespaces tlNNNNNa/b, veth tlNNNNNva/vb
HOSTS = {"a": "10.231.77.1", "b": "10.231.77.2"}
PORT = 29517


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _why_not() -> str | None:
    """The reason two namespaces cannot be made here, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (.ci/run installs it)"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"{TAG}p"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not allowed here: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def _skip_or_fail(reason: str):
    if os.environ.get("TRILIB_REQUIRE_MULTIHOST") == "1":
        pytest.fail(f"TRILIB_REQUIRE_MULTIHOST=1 but {reason}")
    pytest.skip(reason)


def _namespaces():
    """Create the two hosts; returns {name: (namespace, interface, address)}."""
    hosts = {h: (f"{TAG}{h}", f"{TAG}v{h}", addr) for h, addr in HOSTS.items()}
    for ns, _, _ in hosts.values():
        ip("netns", "add", ns)
    ip("link", "add", hosts["a"][1], "type", "veth", "peer", "name", hosts["b"][1])
    for ns, dev, addr in hosts.values():
        ip("link", "set", dev, "netns", ns)
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")
        ip("-n", ns, "link", "set", "lo", "up")
    return hosts


def _torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _start(host: str, hosts: dict, schedule: str, run_id: str) -> subprocess.Popen:
    ns, dev, addr = hosts[host]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": dev, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = ["ip", "netns", "exec", ns, *_torchrun(), "--nnodes", "2", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{HOSTS['a']}:{PORT}", "--rdzv-id", run_id,
           "--rdzv-conf", f"is_host={'true' if host == 'a' else 'false'}", "--local-addr", addr,
           "-m", "trilib.distributed", "--k", "8", "--width", "4", "--batch", "6", "--schedule", schedule,
           "--microbatches", "3" if schedule == "pipeline" else "1", "--dtype", "float64", "--timeout", "60"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """End a torchrun we started and its workers (its own process group, by its id)."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def _remove(hosts: dict) -> None:
    """Kill whatever still runs in our namespaces (by PID), then delete them (and the veth)."""
    for ns, _, _ in hosts.values():
        pids = ip("netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        ip("netns", "del", ns, check=False)


def _table(output: str) -> list[list[str]]:
    lines = output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "layers"])
    return [line.split() for line in lines[head + 1:head + 5]]


def test_two_hosts_two_ranks_each_every_schedule():
    reason = _why_not()
    if reason:
        _skip_or_fail(reason)
    hosts, procs = {h: (f"{TAG}{h}", f"{TAG}v{h}", a) for h, a in HOSTS.items()}, []
    try:
        hosts = _namespaces()
        for schedule in SCHEDULES:
            procs = [_start(h, hosts, schedule, f"{TAG}-{schedule}") for h in ("a", "b")]
            outs = [p.communicate(timeout=240)[0] for p in procs]
            assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
            report = next(o for o in outs if "relative gradient error against autograd" in o)
            assert f"schedule '{schedule}' on 4 rank(s) (gloo, torchrun)" in report
            error = float(re.search(r"against autograd \(max over parameters\): (\S+)", report)[1])
            assert error <= 1e-10, report
            rows = _table(report)                   # rank 0's timeline: the ranks of both hosts
            assert [r[0] for r in rows] == ["0", "1", "2", "3"], report
            assert [r[1] for r in rows] == ["1-2", "3-4", "5-6", "7-8"] and all(int(r[-1]) > 0 for r in rows)
    finally:
        for p in procs:
            _stop(p)
        _remove(hosts)
    left = ip("netns", "list").stdout + ip("link", "show").stdout
    assert TAG not in left, left
    assert all(p.poll() is not None for p in procs)


def test_cleanup_ends_a_hung_run_and_removes_both_hosts():
    """What the finally clause does when a run hangs: its processes end (by process group, then
    whatever is left in the namespaces by PID) and neither namespace nor the veth pair stays."""
    reason = _why_not()
    if reason:
        _skip_or_fail(reason)
    hosts = {h: (f"{TAG}{h}", f"{TAG}v{h}", a) for h, a in HOSTS.items()}
    procs = []
    try:
        hosts = _namespaces()
        procs = [subprocess.Popen(["ip", "netns", "exec", hosts[h][0], "sleep", "300"],
                                  start_new_session=True) for h in ("a", "b")]
        deadline = time.monotonic() + 10
        while not ip("netns", "pids", hosts["b"][0]).stdout.split() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ip("netns", "pids", hosts["b"][0]).stdout.split()     # something runs in host b
    finally:
        if procs:
            _stop(procs[0])                   # host a's by its process group,
        _remove(hosts)                        # host b's by PID, from inside the namespace
    assert all(p.wait(10) is not None for p in procs)
    left = ip("netns", "list").stdout + ip("link", "show").stdout
    assert TAG not in left, left
