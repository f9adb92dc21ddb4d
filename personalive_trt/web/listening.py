"""Which addresses a process tree listens on (Linux ``/proc``): the check behind "nothing listens beyond loopback".

A server's sockets are not all its own: under ``serve --ray`` the local Ray's GCS, raylet, workers and agents are
child processes, each with listening sockets of its own. :func:`listening_sockets` walks the tree from a pid
(``/proc/<pid>/task/*/children``), collects each process's socket inodes (``/proc/<pid>/fd``) and matches them
with the kernel's tables of TCP sockets in LISTEN state and bound UDP sockets (``/proc/net/{tcp,tcp6,udp,udp6}``).
No dependency (psutil is not installed with the serve extras); elsewhere than Linux it raises.

Used by the tests (every socket of ``serve`` and ``serve --ray`` on loopback under the defaults) and by
``scripts/abuse.py``, which reports them.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Listener", "exposed", "listening_sockets", "process_tree"]

PROC = Path("/proc")
TCP_LISTEN = "0A"  # st column of /proc/net/tcp: TCP_LISTEN


@dataclass(frozen=True)
class Listener:
    """One listening socket: ``proto`` (tcp, tcp6, udp, udp6), the bound address and port, and its process."""

    proto: str
    address: str
    port: int
    pid: int
    command: str

    @property
    def loopback(self) -> bool:
        address = ipaddress.ip_address(self.address)
        if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:127.0.0.1: an IPv4 socket's view
            address = address.ipv4_mapped
        return address.is_loopback

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.proto} {host}:{self.port} ({self.command}, pid {self.pid})"


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (threads' children included)."""
    seen, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        for children in (PROC / str(current) / "task").glob("*/children"):
            try:
                todo += [int(child) for child in children.read_text().split()]
            except OSError:  # the process or thread ended meanwhile
                continue
    return seen


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:  # ended, or not ours to read
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _decode_address(hex_address: str, proto: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if proto.endswith("6"):  # four 32-bit words, each in host (little-endian) order
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)
    return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)


def _table(pid: int, proto: str) -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of the listening (TCP) or bound, unconnected (UDP) sockets in ``pid``'s
    network namespace."""
    try:
        lines = (PROC / str(pid) / "net" / proto).read_text().splitlines()[1:]
    except OSError:
        return {}
    table = {}
    for line in lines:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        listening = state == TCP_LISTEN if proto.startswith("tcp") else remote.split(":")[1] == "0000"
        if listening and inode:
            table[inode] = _decode_address(local, proto)
    return table


def listening_sockets(pid: int | None = None) -> list[Listener]:
    """The listening sockets of ``pid``'s process tree (default: this process's), sorted by process and port."""
    if not PROC.joinpath("self", "net", "tcp").exists():
        raise OSError("listing listening sockets needs Linux /proc")
    pids = process_tree(os.getpid() if pid is None else pid)
    found = []
    for current in pids:
        inodes = _socket_inodes(current)
        if not inodes:
            continue
        try:
            command = (PROC / str(current) / "comm").read_text().strip()
        except OSError:
            continue
        for proto in ("tcp", "tcp6", "udp", "udp6"):
            for inode, (address, port) in _table(current, proto).items():
                if inode in inodes:
                    found.append(Listener(proto, address, port, current, command))
    return sorted(set(found), key=lambda s: (s.pid, s.port, s.proto))


def exposed(listeners: list[Listener]) -> list[Listener]:
    """Those not on loopback (0.0.0.0 and :: are every interface)."""
    return [s for s in listeners if not s.loopback]
