"""Peak memory of a command and every process it starts (comp's training workers).

getrusage's ru_maxrss is the largest single process's peak, which under-counts a run whose
units train in several worker processes at once (compute.workers); summing the processes'
RSS over-counts it instead, since each process maps TensorFlow's shared libraries (about
400 MB here) and the same cached feature files. So the bench scripts sample the summed
PSS (proportional set size: a page shared by n processes counts 1/n in each) of the whole
process tree: the memory the run holds. With one process, PSS and RSS are about equal.

    python bench/proctree.py COMMAND [ARG ...]   (e.g. comp stage=all data.dir=...)
runs COMMAND and prints its wall seconds and peak memory; `--smoke` measures a Python child
that holds 200 MB across two processes (seconds, for CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def tree_pss(root: int) -> int:
    """Bytes of memory process `root` and all its descendants hold now: their summed
    PSS (Linux /proc/<pid>/smaps_rollup)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:  # ppid is the 2nd field after "(comm)"
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        children.setdefault(parent, []).append(int(name))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                total += next(int(line.split()[1]) * 1024 for line in rollup
                              if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
        stack += children.get(pid, [])
    return total


def run_measured(command: list[str], every: float = 0.5, **popen) -> tuple[int, float, float]:
    """Run `command` (Popen keyword arguments `popen`) to its end; return (exit code, wall
    seconds, peak summed PSS MiB of its process tree, sampled every `every` seconds)."""
    started = time.time()
    child = subprocess.Popen(command, **popen)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_pss(child.pid))
        time.sleep(every)
    return child.returncode, time.time() - started, peak / 2**20


# --smoke's command: a child holding 100 MB that starts a grandchild holding 100 MB
_SMOKE = ("import subprocess, sys, time; a = bytearray(100 * 2**20); "
          "subprocess.run([sys.executable, '-c', 'import time; b = bytearray(100 * 2**20); "
          "time.sleep(1.5)'])")


def main(argv: list[str]) -> int:
    """Measure the command `argv` (or --smoke's); print one table row."""
    if not argv:
        raise SystemExit(__doc__)
    command = [sys.executable, "-c", _SMOKE] if argv == ["--smoke"] else argv
    code, wall, peak = run_measured(command, every=0.2)
    print("| command | exit code | wall s | peak memory MiB (PSS of the process tree) |")
    print("|---|---|---|---|")
    print(f"| {' '.join(argv)[:60]} | {code} | {wall:.1f} | {peak:.0f} |")
    if argv == ["--smoke"] and not 200 <= peak < 400:
        raise SystemExit(f"bench/proctree.py --smoke: measured {peak:.0f} MiB for two "
                         "processes of 100 MB each")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
