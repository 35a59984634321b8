"""What the host took from this machine while a bench ran: a virtual machine's CPUs can be stopped by
the hypervisor for another guest ("steal" time, from /proc/stat), which slows a run down without any
change in the code. The benches print it so that a slow figure can be told from a slow host."""
from __future__ import annotations

import os
import time


def steal_seconds() -> float | None:
    """CPU seconds stolen from all of this machine's CPUs since boot, or None where Linux does not say."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class StealClock:
    """``with StealClock() as clock: ...``, then ``clock.summary()``: the stolen CPU time over the block."""

    def __enter__(self):
        self.start, self.wall = steal_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        end = steal_seconds()
        self.stolen = None if end is None or self.start is None else end - self.start
        self.wall = time.perf_counter() - self.wall

    def summary(self) -> str:
        if self.stolen is None:
            return "host steal time: not reported on this system"
        cpus = os.cpu_count() or 1
        return (f"host steal time: {self.stolen:.1f} CPU s of {self.wall * cpus:.1f} "
                f"({self.stolen / max(self.wall * cpus, 1e-9):.0%}); a large share means the figures are the host's")
