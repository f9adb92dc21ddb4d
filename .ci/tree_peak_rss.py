"""Peak of the summed resident memory of a process and all its descendants, sampled every 0.5 s (Linux /proc).

`/usr/bin/time -v` reports the largest single process; under pytest-xdist the workers run side by side, so the
suite's real peak is their sum. Usage: python .ci/tree_peak_rss.py PID  (prints the peak when PID exits).
"""
from __future__ import annotations

import os
import sys
import time


def children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while the tree was read
        tree.setdefault(parent, []).append(int(entry))
    return tree


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0  # ended while sampled


def main(root: int) -> None:
    peak = 0
    while os.path.exists(f"/proc/{root}"):
        tree, stack, total = children(), [root], 0
        while stack:
            pid = stack.pop()
            total += rss_bytes(pid)
            stack.extend(tree.get(pid, ()))
        peak = max(peak, total)
        time.sleep(0.5)
    print(f"{peak / 2**30:.2f} GiB")


if __name__ == "__main__":
    main(int(sys.argv[1]))
