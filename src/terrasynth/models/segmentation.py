"""Segmentation models: UNet, UNet++ and DeepLabV3+ from segmentation_models_pytorch.

A saved segmenter is two files in a run directory::

    segmenter.json          constructor arguments + the class scheme it predicts
    best.safetensors        weights selected by validation score
    last.safetensors        weights at the end of training

``build_segmenter`` takes explicit arguments (no config object); ``load_segmenter``
rebuilds the network from ``segmenter.json`` and loads the chosen weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import segmentation_models_pytorch as smp
from safetensors.torch import load_file, save_file

from terrasynth.classes import ClassScheme
from terrasynth.errors import UserError
from terrasynth.io import atomic_path, load_weights, read_json, write_json_atomic

Arch = Literal["unet", "unetplusplus", "deeplabv3plus"]
ARCHS: dict[str, type[torch.nn.Module]] = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,
    "deeplabv3plus": smp.DeepLabV3Plus,
}
SEGMENTER_FILE = "segmenter.json"
Which = Literal["best", "last"]


def build_segmenter(
    arch: Arch,
    encoder: str,
    in_channels: int,
    num_classes: int,
    encoder_weights: str | Path | None = None,
) -> torch.nn.Module:
    """An smp model mapping images (B, in_channels, H, W) to logits (B, num_classes, H, W).

    H and W must be multiples of 32 (16 for DeepLabV3+); :func:`predict` pads for you.
    ``encoder`` is any smp encoder name or ``tu-<timm name>``. ``encoder_weights`` is None
    (random init), the path of a local state dict for the encoder (``.safetensors``, or a
    ``torch.save`` file), or one of smp's names for the encoder (e.g. ``imagenet``), which smp
    fetches from the Hugging Face Hub (or its local cache: ``HF_HOME``, ``HF_HUB_OFFLINE=1``);
    offline and uncached that is a one-line error saying how to pass a file instead.
    """
    if arch not in ARCHS:
        raise UserError(f"arch {arch!r} is not known; choose one of {sorted(ARCHS)}")
    hub = encoder_weights if is_weights_name(encoder_weights) else None
    try:
        # encoder_weights=None (Python None, not a string) keeps smp from downloading.
        model = ARCHS[arch](encoder_name=encoder, encoder_weights=hub, in_channels=in_channels, classes=num_classes)
    except (KeyError, ValueError, RuntimeError) as exc:
        if hub is not None and "weights" in str(exc):
            raise UserError(f"encoder_weights {hub!r}: not a pretrained variant of {encoder} "
                            f"({str(exc).splitlines()[0][:200]}); or pass a local weights file") from exc  # fmt: skip
        raise UserError(
            f"encoder {encoder!r} cannot be built for {arch} ({str(exc).splitlines()[0][:160]}); "
            "use an smp encoder name (e.g. resnet18, mobilenet_v2) or tu-<timm model name>"
        ) from exc
    except (OSError, ImportError) as exc:  # the Hub cannot be reached and the weights are not cached
        repo = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {}).get(hub, {}).get("repo_id", "the Hub")
        raise UserError(
            f"encoder_weights {hub!r} for {encoder}: cannot be fetched from {repo} ({exc.__class__.__name__}; no internet?); "
            "download them where there is internet and pass the file (--encoder-weights PATH), or point HF_HOME at a "
            "cache that holds them"
        ) from exc
    if encoder_weights is not None and hub is None:
        load_encoder_weights(model, Path(encoder_weights))
    return model


def is_weights_name(w: str | Path | None) -> bool:
    """True for a pretrained-weights name (``imagenet``, ``ssl``...), False for None or a file path."""
    if w is None or isinstance(w, Path):
        return False
    return not any(c in w for c in "/\\") and not Path(w).suffix and not Path(w).exists()


def load_encoder_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a local encoder state dict into ``model.encoder``; key mismatches are an error."""
    if not path.is_file():
        raise UserError(f"{path}: encoder weights file not found; pass an existing --encoder-weights file")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{path}: cannot read encoder weights ({exc.__class__.__name__}); pass a state dict file") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if missing:
        raise UserError(
            f"{path}: encoder weights lack {len(missing)} key(s) of this encoder (first: {missing[0]}); "
            "pass weights saved from the same encoder"
        )
    if unexpected and set(unexpected) != {"fc.weight", "fc.bias"}:  # a classifier head is fine to drop
        raise UserError(f"{path}: encoder weights hold unknown key(s) (first: {unexpected[0]}); wrong encoder?")


def segmenter_spec(arch: str, encoder: str, in_channels: int, num_classes: int, scheme: ClassScheme) -> dict[str, Any]:
    """The constructor arguments (and scheme) written to ``segmenter.json``."""
    return {
        "family": "smp",
        "arch": arch,
        "encoder": encoder,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "scheme": scheme.to_dict(),
    }


def write_spec(run: Path, spec: dict[str, Any]) -> None:
    write_json_atomic(run / SEGMENTER_FILE, spec)


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Weights to a safetensors file, atomically."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def load_segmenter(run: str | Path, which: Which = "best") -> tuple[torch.nn.Module, ClassScheme]:
    """Rebuild a trained segmenter (eval mode, CPU) and the scheme its outputs index into."""
    run = Path(run)
    spec_path = run / SEGMENTER_FILE
    if not spec_path.is_file():
        raise UserError(f"{run}: not a segmentation run (no {SEGMENTER_FILE}); pass the --out of 'terrasynth segment train'")
    if which not in ("best", "last"):
        raise UserError(f"which={which!r}: choose 'best' or 'last'")
    weights = run / f"{which}.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights}: no {which} weights yet; finish training (rerun the train command to resume)")
    spec = read_json(spec_path, "rerun 'terrasynth segment train' or restore the run directory")
    try:
        scheme = ClassScheme.from_dict(spec["scheme"], where=str(spec_path))
        arch, encoder, in_ch, k = spec["arch"], spec["encoder"], int(spec["in_channels"]), int(spec["num_classes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{spec_path}: field {exc} is missing or of the wrong type; restore the run directory") from exc
    model = build_segmenter(arch, encoder, in_ch, k)
    state = load_weights(weights, "rerun the train command to write it again, or evaluate --checkpoint last/best")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{weights}: weights do not fit the model in {spec_path} ({str(exc).splitlines()[0]}); "
                        "restore the run directory") from exc  # fmt: skip
    return inference_ready(model, arch), scheme


# Inference (eval mode, no gradients) is faster in channels_last memory for these architectures on a
# CPU without AVX-512 (benchmarks/bench_evaluate.py; docs/benchmarks.md "Segmenter inference").
CHANNELS_LAST_INFERENCE = {"unet", "unetplusplus", "deeplabv3plus"}


def inference_ready(model: torch.nn.Module, arch: str | None = None) -> torch.nn.Module:
    """Eval mode, and channels_last memory where it measured faster (``predict_logits`` follows the
    model's format). The outputs are the same up to float rounding; ``arch=None`` keeps the format."""
    model.eval()
    if arch in CHANNELS_LAST_INFERENCE:
        model.to(memory_format=torch.channels_last)
    return model


def is_channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's first convolution weight is stored channels_last (not merely both ways)."""
    w = next((p for p in model.parameters() if p.dim() == 4), None)
    return w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)


def pad_multiple(x: torch.Tensor, multiple: int = 32) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) on the bottom/right to multiples of ``multiple``; returns the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) float in [0, 1] -> logits (B, K, H, W) (padded for the encoder, then cropped)."""
    x, (h, w) = pad_multiple(images)
    if is_channels_last(model):
        x = x.contiguous(memory_format=torch.channels_last)
    return model(x)[..., :h, :w]


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) float in [0, 1] -> training indices (B, H, W) int64 (argmax)."""
    return predict_logits(model, images).argmax(1)
