"""Run `synthesize` with the stand-in generator of test_synthesize.py (launched by torchrun in tests)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from terrasynth.models import generator as genmod  # noqa: E402
from terrasynth.synthesize import synthesize  # noqa: E402

genmod.GENERATOR_FAMILIES["colournoise"] = "test_synthesize:load_fake"

if __name__ == "__main__":
    gen_run, labels, out = sys.argv[1:4]
    synthesize(gen_run, labels, out, seed=1, batch_size=2)
