"""``python tests/reliability_runner.py ARGS`` = ``terrasynth ARGS`` plus test-only hooks (set by env):

- the stand-in generator family ``colournoise`` (see ``reliability_gen``) is registered;
- ``TS_KILL_AT_REPLACE=N`` SIGKILLs this process at its N-th ``os.replace`` (the commit point
  of every atomic write), before the rename (``TS_KILL_WHEN=before``, default) or after it;
- ``TS_FSIZE=BYTES`` caps the size of any file this process writes (RLIMIT_FSIZE, SIGXFSZ
  ignored so writes fail with EFBIG as on a full quota).
"""

from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _install_hooks() -> None:
    if os.environ.get("TS_FSIZE"):
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        n = int(os.environ["TS_FSIZE"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    if os.environ.get("TS_KILL_AT_REPLACE"):
        target, when = int(os.environ["TS_KILL_AT_REPLACE"]), os.environ.get("TS_KILL_WHEN", "before")
        real_replace, count = os.replace, [0]

        def replace(src, dst, *a, **k):
            count[0] += 1
            if count[0] == target and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst, *a, **k)
            if count[0] == target:
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace


if __name__ == "__main__":
    _install_hooks()
    from terrasynth.models import generator

    generator.GENERATOR_FAMILIES.setdefault("colournoise", "reliability_gen:load_generator")
    from terrasynth.cli import main

    sys.exit(main(sys.argv[1:]))
