"""Network namespaces for NAT tests and benchmarks: a small "internet" with NAT routers.

Needs root (CAP_NET_ADMIN), `ip` (iproute2) and `iptables`. Every address lives inside
namespaces this module creates; nothing is routed to the machine's own interfaces, and
``Topology.close`` deletes the namespaces (which removes their veths and iptables rules)
even after a failure::

    internet (bridge br0, 10.77.0.0/24, in namespace <prefix>-inet)
      |-- <prefix>-boot     10.77.0.2          public bootstrap peer (DHT + relay)
      |-- <prefix>-pubN     10.77.0.(10+N)     public peers
      |-- <prefix>-rN       wan 10.77.0.(100+N), lan 10.(80+N).0.1/24, NAT router
      |     `-- <prefix>-nN 10.(80+N).0.2/24   a peer behind router N

Router kinds: "cone" (iptables MASQUERADE, which keeps source ports where it can:
TCP hole punching works) and "symmetric" (MASQUERADE --random-fully: every connection
gets a random port, so a peer cannot predict its mapped address and hole punching
fails), "forwarded" (a cone NAT whose TCP port 4001 is forwarded to the peer's port
4001). All drop other unsolicited packets from outside, as home routers do.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "NetnsUnavailable",
    "Node",
    "Process",
    "Topology",
    "netns_unavailable_reason",
    "start_agent",
    "start_bootstrap",
]

BRIDGE_NET = "10.77.0"


class NetnsUnavailable(RuntimeError):
    """The kernel or the user cannot create network namespaces here."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None: they can): tries `ip netns add`.

    Only that is a reason to skip; a missing `iptables` fails the topology instead.
    """
    if shutil.which("ip") is None:
        return "`ip netns add` cannot run: ip is not installed (apt-get install -y iproute2)"
    name = f"p2pnet-probe-{os.getpid()}"
    done = _run("ip", "netns", "add", name, check=False)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip() or done.returncode}"
    _run("ip", "netns", "del", name, check=False)
    return None


@dataclass
class Node:
    """A namespace with one address: where a peer runs."""

    ns: str
    ip: str
    # Behind a NAT: the router's public address.
    public_ip: str | None = None

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]


@dataclass
class Topology:
    """The namespaces of one test; build with ``Topology.create(...)``, then ``close()``."""

    prefix: str
    boot: Node
    public: list[Node] = field(default_factory=list)
    natted: list[Node] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @classmethod
    def create(
        cls, nats: Sequence[str] = ("cone", "cone"), public: int = 1, prefix: str | None = None
    ) -> Topology:
        """A bootstrap node, ``public`` public nodes and one node behind a router of each
        kind in ``nats`` ("cone", "symmetric" or "forwarded").

        Raises:
            NetnsUnavailable: namespaces cannot be created here.
        """
        reason = netns_unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        prefix = prefix or f"p2n{os.getpid() % 100000}"
        topo = cls(prefix, Node(f"{prefix}-boot", f"{BRIDGE_NET}.2"))
        try:
            topo._build(nats, public)
        except BaseException:
            topo.close()
            raise
        return topo

    def _ns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        self._in(ns, "ip", "link", "set", "lo", "up")
        return ns

    @staticmethod
    def _in(ns: str, *argv: str) -> None:
        _run("ip", "netns", "exec", ns, *argv)

    @classmethod
    def _iptables(cls, ns: str, *rule: str) -> None:
        """``iptables RULE`` in ``ns``. With -w it waits for the xtables lock, which
        iptables-legacy takes for the whole machine, not per namespace: another
        topology built at the same time (a parallel test) must not fail the call."""
        cls._in(ns, "iptables", "-w", *rule)

    def _wire(self, ns: str, ifname: str, ip: str, index: int) -> None:
        """A veth from the bridge in the internet namespace to ``ns`` as ``ifname``."""
        inet = f"{self.prefix}-inet"
        outer = f"v{index}"
        _run(
            "ip",
            "link",
            "add",
            outer,
            "netns",
            inet,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            ns,
        )
        self._in(inet, "ip", "link", "set", outer, "master", "br0")
        self._in(inet, "ip", "link", "set", outer, "up")
        self._in(ns, "ip", "addr", "add", f"{ip}/24", "dev", ifname)
        self._in(ns, "ip", "link", "set", ifname, "up")

    def _build(self, nats: Sequence[str], public: int) -> None:
        inet = self._ns("inet")
        self._in(inet, "ip", "link", "add", "br0", "type", "bridge")
        self._in(inet, "ip", "link", "set", "br0", "up")
        self._wire(self._ns("boot"), "eth0", self.boot.ip, 1)
        for i in range(public):
            node = Node(self._ns(f"pub{i}"), f"{BRIDGE_NET}.{10 + i}")
            self._wire(node.ns, "eth0", node.ip, 10 + i)
            self.public.append(node)
        for i, kind in enumerate(nats):
            if kind not in ("cone", "symmetric", "forwarded"):
                raise ValueError(f"unknown NAT kind {kind!r}")
            router = self._ns(f"r{i}")
            self._wire(router, "wan", f"{BRIDGE_NET}.{100 + i}", 100 + i)
            lan_net = f"10.{80 + i}.0"
            node = Node(self._ns(f"n{i}"), f"{lan_net}.2", f"{BRIDGE_NET}.{100 + i}")
            _run(
                "ip",
                "link",
                "add",
                "lan",
                "netns",
                router,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                node.ns,
            )
            self._in(router, "ip", "addr", "add", f"{lan_net}.1/24", "dev", "lan")
            self._in(router, "ip", "link", "set", "lan", "up")
            self._in(node.ns, "ip", "addr", "add", f"{node.ip}/24", "dev", "eth0")
            self._in(node.ns, "ip", "link", "set", "eth0", "up")
            self._in(node.ns, "ip", "route", "add", "default", "via", f"{lan_net}.1")
            self._in(router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
            masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
            if kind == "symmetric":
                masquerade.append("--random-fully")
            self._iptables(router, *masquerade)
            if kind == "forwarded":
                # A port forward, as on a router set up for a server: TCP port 4001 of
                # the router's public address goes to the peer's port 4001.
                self._iptables(router, "-t", "nat", "-A", "PREROUTING", "-i", "wan",
                               "-p", "tcp", "--dport", "4001", "-j", "DNAT",
                               "--to-destination", f"{node.ip}:4001")  # fmt: skip
                self._iptables(router, "-A", "FORWARD", "-i", "wan", "-p", "tcp",
                               "-d", node.ip, "--dport", "4001", "-j", "ACCEPT")  # fmt: skip
            # Like most home routers: unsolicited packets from outside are dropped
            # (not answered with a reset), so a hole-punch SYN that arrives before the
            # other side's own SYN opened the mapping is lost, not refused, and the
            # retransmitted or crossing SYN gets through.
            for chain in ("INPUT", "FORWARD"):
                self._iptables(
                    router, "-A", chain, "-i", "wan", "-m", "conntrack",
                    "--ctstate", "NEW,INVALID", "-j", "DROP",
                )  # fmt: skip
            self.natted.append(node)

    def close(self) -> None:
        """Delete every namespace created (their interfaces and iptables rules go too)."""
        for ns in reversed(self.namespaces):
            _run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent.py")


class Process:
    """A child process inside a namespace that speaks JSON lines (tests/netns/agent.py),
    or any process whose output lines are read until a marker (the CLI's peer)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # A file, not a pipe: nobody reads a pipe while the process runs, and a
            # process blocks once it has written a pipe's worth (64 KiB) of logs.
            stderr=self._stderr,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._buffer = b""

    def readline(self, timeout: float) -> str:
        """The next stdout line.

        Raises:
            TimeoutError: none within ``timeout`` seconds.
            RuntimeError: the process ended (with its stderr in the message).
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        # Own buffer over os.read: select() on a buffered file object misses lines
        # that are already in its buffer.
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"no output from {self.argv[4:7]} within {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                self.proc.wait(5)
                err = self.stderr()
                raise RuntimeError(f"{self.argv[4:7]} exited {self.proc.returncode}: {err[-2000:]}")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\n")
        line = raw.decode()
        self.lines.append(line)
        return line

    def stderr(self) -> str:
        """What the process wrote to stderr so far."""
        self._stderr.seek(0)
        return self._stderr.read()

    def read_until(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line

    def request(self, cmd: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Send one command to an agent and return its answer.

        Raises:
            RuntimeError: the agent answered with an error.
        """
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.readline(timeout))
        if "error" in answer:
            raise RuntimeError(f"{cmd['op']}: {answer['error']}")
        return answer

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s); never raises."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            except OSError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_agent(node: Node, *args: str, timeout: float = 30.0) -> tuple[Process, dict[str, Any]]:
    """Run tests/netns/agent.py in ``node``'s namespace; returns it and its ready line."""
    proc = Process(node.argv(sys.executable, AGENT, *args))
    try:
        ready = json.loads(proc.read_until('{"event": "ready"', timeout))
    except TimeoutError as exc:
        proc.stop()
        err = proc.stderr()
        raise TimeoutError(f"{exc}; its stderr: {err[-3000:]}") from None
    except BaseException:
        proc.stop()
        raise
    return proc, ready


def start_bootstrap(node: Node, config_home: str, timeout: float = 30.0) -> tuple[Process, str]:
    """``p2pnet peer --role bootstrap`` in ``node``; returns it and its full address."""
    proc = Process(
        node.argv(
            sys.executable,
            "-m",
            "p2pnet.cli",
            "peer",
            "--role",
            "bootstrap",
            "--listen",
            f"/ip4/{node.ip}/tcp/4001",
        ),
        env={"XDG_CONFIG_HOME": config_home},
    )
    try:
        line = proc.read_until("listening ", timeout)
        proc.read_until("ready", timeout)
    except BaseException:
        proc.stop()
        raise
    return proc, line.split()[1]
