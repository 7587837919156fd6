"""One way to build a Hugging Face ``Accelerator`` that several stages can share in one process.

Accelerate keeps its state (device, distributed setup, mixed precision) in process-wide
singletons and refuses a second ``Accelerator`` with another ``mixed_precision``. The
pipeline runs stages with different precisions in one process (a bf16 segmenter, then an
fp32 diffusion model), so the precision part of that state is reset between them; the
distributed part (``PartialState``: ranks, process group) is kept.
"""

from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState


def make_accelerator(**kwargs: Any) -> Accelerator:
    """``Accelerator(**kwargs)``, resetting precision state left by an earlier stage if it differs."""
    if AcceleratorState._shared_state:
        wanted = kwargs.get("mixed_precision") or "no"
        if str(AcceleratorState().mixed_precision) != str(wanted) or kwargs.get("cpu"):
            AcceleratorState._reset_state(reset_partial_state=False)
            GradientState._reset_state()
    return Accelerator(**kwargs)


def dist_state():
    """The process's ``PartialState`` (rank, world size, device).

    Without CUDA the ranks that ``torchrun``/``accelerate launch`` started join over gloo on the
    CPU; a bare ``PartialState()`` would leave each of them believing it is alone (rank 0 of 1).
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where autocast pays off."""
    from pathlib import Path

    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_kind() -> str:
    """The hardware a run's numbers depend on beyond its config and seed, e.g. ``"cpu: AMD EPYC 7B13"``
    or ``"cuda: NVIDIA H200"``; ``" (bf16)"`` marks a CPU with native bf16, where ``auto`` precision
    trains in bf16 (so the same seed gives other numbers than on a CPU without it)."""
    import platform
    from pathlib import Path

    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    name = platform.processor() or platform.machine()
    try:
        models = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")]  # fmt: skip
        name = models[0] if models else name
    except OSError:
        pass
    return f"cpu: {name}" + (" (bf16)" if cpu_supports_bf16() else "")


def resolve_precision(value: str | bool) -> str:
    """Accelerate's ``mixed_precision`` for a config's ``no|bf16|fp16|auto`` on this machine."""
    import torch

    value = {True: "bf16", False: "no"}.get(value, value)  # type: ignore[arg-type]
    if torch.cuda.is_available():
        if value == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if value == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp16"
        return str(value)
    if value == "auto":
        return "bf16" if cpu_supports_bf16() else "no"
    return "no" if value == "fp16" else str(value)  # fp16 autocast is a GPU feature
