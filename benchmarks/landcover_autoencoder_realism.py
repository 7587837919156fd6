"""The ceiling a land-cover autoencoder puts on realism: landscape metrics of its reconstructions.

Encodes and decodes the real maps of one split with a trained land-cover run's autoencoder
(no diffusion) and compares the reconstructions with the originals using the same realism
metrics as the generated maps. Whatever the reconstructions miss, no diffusion model on that
latent can recover: if they are already off by more than the target, fix the autoencoder.

    python benchmarks/landcover_autoencoder_realism.py --data DATA --run RUN [--split val] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from terrasynth.data.dataset import Dataset
from terrasynth.evaluate.realism import as_maps, compositions, realism_metrics
from terrasynth.io import write_json_atomic
from terrasynth.models.autoencoder import decode_indices, encode
from terrasynth.inference.landcover import load_landcover


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="label dataset the run was trained on")
    ap.add_argument("--run", type=Path, required=True, help="a `terrasynth landcover train` run")
    ap.add_argument("--split", default="val")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = Dataset.open(args.data)
    sc = ds.scheme
    real = as_maps(ds, (args.split,))
    model = load_landcover(args.run)
    rec = []
    with torch.no_grad():
        for i in range(0, len(real), args.batch):
            idx = torch.from_numpy(sc.to_indices(real[i : i + args.batch]).astype(np.int64))
            rec.append(decode_indices(model.vae, encode(model.vae, idx)).numpy())
    rec_codes = sc.to_codes(np.concatenate(rec))
    valid = real != (sc.nodata if sc.nodata is not None else -1)
    r = realism_metrics(real, rec_codes, sc, train=None, res=ds.info.gsd or 10.0)
    res = {
        "maps": len(real),
        "pixel_accuracy": float((rec_codes == real)[valid].mean()),
        "landscape_relative_error": {c: v["relative_error"] for c, v in r["landscape"].items()},
        "landscape_worst_relative_error": r["landscape_worst_relative_error"],
        "near_uniform_share": {"real": float((compositions(real, sc).max(1) >= 0.95).mean()),
                               "reconstructed": float((compositions(rec_codes, sc).max(1) >= 0.95).mean())},
    }  # fmt: skip
    if args.out:
        write_json_atomic(args.out, res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
