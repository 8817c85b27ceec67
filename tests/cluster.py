"""A real local Redis Cluster (3 masters + 3 replicas) for tests, and the data plane a
guarantee test runs on: one Redis, or the cluster with 1 or 3 partitions."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo_serving import keys

NODE_TIMEOUT_MS = 1000  # how long a silent master stays a master: failovers take ~2 s


def tools_missing() -> str | None:
    """Why a cluster cannot start here, or None."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH (CI installs it with `make redis-server`)"
    return None


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` consecutive-free ports whose cluster bus ports (+10000) are free too."""
    for _ in range(200):
        base = random.randrange(20000, 45000, 10)
        ports = list(range(base, base + count))
        if all(_free(p) and _free(p + 10000) for p in ports):
            return ports
    raise RuntimeError("no free ports for a Redis Cluster")


@dataclass
class LocalCluster:
    """Six redis-server processes in cluster mode on loopback; ``url`` is the seeds URL."""

    where: Path
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self) -> LocalCluster:
        self.ports = _free_ports(6)
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            self._wait_answers(port)
        create = ["redis-cli", "--cluster", "create"]
        create += [f"127.0.0.1:{p}" for p in self.ports]
        create += ["--cluster-replicas", "1", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

    def _spawn(self, port: int) -> None:
        home = self.where / str(port)
        home.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                "redis-server",
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--appendonly", "no",
                "--save", "",
                "--dir", str(home),
                "--logfile", str(home / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _wait_answers(self, port: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while self.cli(port, "PING") != "PONG":
            assert time.monotonic() < deadline, f"redis-server on {port} did not start"
            time.sleep(0.05)

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()

    def wait_ok(self, timeout_s: float = 60) -> None:
        """Until every running node says cluster_state:ok, 3 masters serve the slots, and
        every replica is in sync with its master (so WAIT can count it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            live = [p for p, proc in self.procs.items() if proc.poll() is None]
            states = [self.cli(p, "CLUSTER", "INFO") for p in live]
            links = [self.cli(p, "INFO", "replication") for p in live]
            synced = all("role:master" in r or "master_link_status:up" in r for r in links)
            if all("cluster_state:ok" in s for s in states) and len(self.masters()) == 3 and synced:
                return
            assert time.monotonic() < deadline, f"cluster not ok: {states[:1]}"
            time.sleep(0.1)

    def masters(self) -> list[int]:
        """Ports of the live masters that hold slots."""
        out = []
        for port, proc in self.procs.items():
            live = proc.poll() is None
            if (
                live
                and "role:master" in self.cli(port, "INFO", "replication")
                and self._slots(port)
            ):
                out.append(port)
        return out

    def _slots(self, port: int) -> bool:
        myself = [
            line for line in self.cli(port, "CLUSTER", "NODES").splitlines() if "myself" in line
        ]
        return bool(myself) and len(myself[0].split()) > 8

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot."""
        slot = self.cli(self.masters()[0], "CLUSTER", "KEYSLOT", key)
        for port in self.masters():
            for line in self.cli(port, "CLUSTER", "NODES").splitlines():
                parts = line.split()
                if "myself" not in parts[2]:
                    continue
                for span in parts[8:]:
                    lo, _, hi = span.partition("-")
                    if lo.isdigit() and int(lo) <= int(slot) <= int(hi or lo):
                        return port
        raise AssertionError(f"no master serves slot {slot}")

    def replica_of(self, master: int) -> int:
        """The port of a replica of the master on ``master``."""
        master_id = self.cli(master, "CLUSTER", "MYID")
        for line in self.cli(master, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[3] == master_id and "slave" in parts[2]:
                return int(parts[1].split("@")[0].rsplit(":", 1)[1])
        raise AssertionError(f"the master on {master} has no replica")

    def freeze(self, port: int) -> None:
        """SIGSTOP a node: it answers nothing (nor replicates) until :meth:`thaw`."""
        self.procs[port].send_signal(signal.SIGSTOP)

    def thaw(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGCONT)

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(10)

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins (as a replica of whoever took its slots)."""
        self._spawn(port)
        self._wait_answers(port)

    def flush(self) -> None:
        for port in self.masters():
            self.cli(port, "FLUSHALL")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Plane:
    """Where a guarantee test's records go: ``url`` (``data.src``), ``partitions``, and a
    redis-py client (``db``) to look at what is in Redis, summed over the partitions."""

    name: str
    url: str
    partitions: int
    db: Any

    def data(self, stream: str) -> dict[str, Any]:
        """The ``data:`` section of a config for ``stream`` on this plane."""
        return {"src": self.url, "stream": stream, "partitions": self.partitions}

    def client_config(self) -> dict[str, Any]:
        return {"data": {"src": self.url, "partitions": self.partitions}}

    def parts(self, stream: str) -> list[str]:
        return keys.partition_streams(stream, self.partitions)

    def finished(self, stream: str) -> list[bytes]:
        """Every uri answered under its uri, over the partitions."""
        return [u for p in self.parts(stream) for u in self.db.lrange(keys.finished(p), 0, -1)]

    def finished_count(self, stream: str) -> int:
        return sum(self.db.llen(keys.finished(p)) for p in self.parts(stream))

    def queued(self, stream: str) -> int:
        return sum(self.db.xlen(p) for p in self.parts(stream))

    def pending(self, stream: str, group: str = "serving") -> int:
        return sum(int(self.db.xpending(p, group)["pending"]) for p in self.parts(stream))

    def dead(self, stream: str) -> list[Any]:
        return [e for p in self.parts(stream) for e in self.db.xrange(keys.dead_letter(p))]


@dataclass
class LocalSentinel:
    """One master, one replica and three sentinels (quorum 2) on loopback; ``url`` is the
    ``redis+sentinel://`` URL of master ``zs``."""

    where: Path
    master_port: int = 0
    replica_port: int = 0
    sentinel_ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    password: str = ""  # the sentinels' own requirepass (and sentinel-pass between them)

    NAME = "zs"

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{seeds}/{self.NAME}"

    def start(self) -> LocalSentinel:
        ports = _free_ports(5)
        self.master_port, self.replica_port, self.sentinel_ports = ports[0], ports[1], ports[2:]
        self._data_node(self.master_port)
        self._data_node(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        for port in self.sentinel_ports:
            home = self.where / str(port)
            home.mkdir(parents=True, exist_ok=True)
            (home / "sentinel.conf").write_text(
                f"port {port}\nbind 127.0.0.1\ndir {home}\n"
                f"sentinel monitor {self.NAME} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {self.NAME} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {self.NAME} 5000\n"
                + (f"requirepass {self.password}\nsentinel sentinel-pass {self.password}\n"
                   if self.password else "")
            )  # fmt: skip
            self.procs[port] = subprocess.Popen(
                ["redis-server", str(home / "sentinel.conf"), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        self.wait_ok(self.master_port)
        return self

    def _data_node(self, port: int, *extra: str) -> None:
        home = self.where / str(port)
        home.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(home), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def cli(self, port: int, *args: str) -> str:
        auth = ["-a", self.password, "--no-auth-warning"]
        auth = auth if self.password and port in self.sentinel_ports else []
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *auth, *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout.strip()

    def master(self) -> int:
        """The port every sentinel names as the master (0 while they disagree)."""
        named = set()
        for port in self.sentinel_ports:
            lines = self.cli(port, "SENTINEL", "get-master-addr-by-name", self.NAME).splitlines()
            named.add(lines[-1] if len(lines) == 2 else "")
        return int(named.pop()) if len(named) == 1 and "" not in named else 0

    def wait_ok(self, master: int, timeout_s: float = 60) -> None:
        """Until the sentinels agree on ``master``, it has a replica in sync, and every
        sentinel knows that replica and the two other sentinels (else it cannot fail over)."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.cli(master, "INFO", "replication")
            known = all(
                self.cli(p, "SENTINEL", "replicas", self.NAME).count("\nip\n") >= 1
                and self.cli(p, "SENTINEL", "sentinels", self.NAME).count("\nip\n") >= 2
                for p in self.sentinel_ports
            )
            in_sync = "role:master" in info and "state=online" in info
            if self.master() == master and in_sync and known:
                return
            assert time.monotonic() < deadline, f"sentinel set-up not ok: {info}"
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(10)

    def restart_as_replica(self, port: int, master: int) -> None:
        self._data_node(port, "--replicaof", "127.0.0.1", str(master))

    stop = LocalCluster.stop
