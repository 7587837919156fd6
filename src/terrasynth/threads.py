"""CPU thread policy, set once at start-up: :func:`configure_threads` (called by ``terrasynth.cli.main``).

Measured (``benchmarks/bench_contention.py``, docs/benchmarks.md "CPU contention"): torch's
OpenMP runtime (libgomp in the PyPI wheels) lets idle worker threads *spin* while they wait at
the end of each parallel region. With as many threads as cores and one other CPU-bound process
on the machine, a spinning thread burns the core its partner needs, every region waits for the
descheduled thread, and a land-cover diffusion step went from ~1.2 s to ~8 s and more. With
``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep, so the job slows in proportion to the CPU it
gets instead of collapsing. The variable is read when the OpenMP runtime loads (the first
``import torch``), so it is set before any command imports torch; a value the user set wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def cpu_budget() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_threads() -> None:
    """Set the thread policy before torch (and its OpenMP runtime) is loaded; user settings win.

    - ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning;
    - ``OMP_NUM_THREADS``: only when a cgroup quota allows fewer CPUs than the affinity mask shows
      (torch would otherwise start one thread per visible core).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    n = cpu_budget()
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n < visible:
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import sys

    if "torch" in sys.modules:  # too late for the environment (tests, notebooks): match the thread count
        import torch

        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(n)
