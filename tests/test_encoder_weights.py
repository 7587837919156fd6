"""Pretrained encoders by smp's names (``imagenet``), as users with internet type them.

No weights can be downloaded here, so the Hub path is tested against a Hugging Face cache
folder built by the test (the layout ``hf_hub_download`` reads offline), and the offline
error against an empty cache. Both run in a subprocess: huggingface_hub reads HF_HOME and
HF_HUB_OFFLINE when it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

from terrasynth.models.segmentation import build_segmenter, is_weights_name


def _env(hf_home: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


def _hub_cache(hf_home: Path, encoder: str = "resnet18", name: str = "imagenet") -> dict[str, torch.Tensor]:
    """A Hub cache holding smp's weights for ``encoder``/``name`` (random numbers, the real layout)."""
    s = smp.encoders.encoders[encoder]["pretrained_settings"][name]
    snap = hf_home / "hub" / f"models--{s['repo_id'].replace('/', '--')}" / "snapshots" / s["revision"]
    snap.mkdir(parents=True)
    torch.manual_seed(123)
    enc = smp.Unet(encoder_name=encoder, encoder_weights=None, classes=2).encoder
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in enc.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({"encoder": encoder}))
    return state


CHECK = """
import sys, torch
from safetensors.torch import load_file
from terrasynth.models.segmentation import build_segmenter
m = build_segmenter("unet", "resnet18", 3, 4, "imagenet")
ref = load_file(sys.argv[1])
bad = [k for k, v in m.encoder.state_dict().items() if k in ref and not torch.equal(v, ref[k])]
print("equal" if not bad else f"differ {bad[:3]}")
"""


def test_imagenet_name_loads_from_the_hub_cache(tmp_path):
    _hub_cache(tmp_path / "hf")
    snap = next((tmp_path / "hf").rglob("model.safetensors"))
    out = subprocess.run([sys.executable, "-c", CHECK, str(snap)], env=_env(tmp_path / "hf"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "equal"


def test_imagenet_offline_is_a_one_line_error(tmp_path):
    """segment train --encoder-weights imagenet without internet or cache: exit 2, one line, how to fix."""
    from conftest import make_dataset

    data = make_dataset(tmp_path / "d", n=4, size=32)
    out = subprocess.run(
        [sys.executable, "-m", "terrasynth", "segment", "train", "--data", str(data), "--out", str(tmp_path / "run"),
         "--encoder-weights", "imagenet", "--max-steps", "1"],
        env=_env(tmp_path / "empty-hf"), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    err = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(err) == 1 and "imagenet" in err[0] and "--encoder-weights PATH" in err[0], out.stderr
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_wrong_variant_name_is_a_one_line_error():
    from terrasynth.errors import UserError

    with pytest.raises(UserError, match="not a pretrained variant of mobilenet_v2"):
        build_segmenter("unet", "mobilenet_v2", 3, 2, "swsl")


def test_names_and_paths_are_told_apart(tmp_path):
    f = tmp_path / "enc.safetensors"
    f.write_bytes(b"")
    assert is_weights_name("imagenet") and is_weights_name("ssl")
    assert not is_weights_name(None) and not is_weights_name(str(f)) and not is_weights_name("w/enc.pth")
    assert not is_weights_name(f)
