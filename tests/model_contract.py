"""The shared model contract every model family's test applies (as smp's ``tests/models/base.py``).

A family's test subclasses ``ModelContract`` in a few lines, naming the class ``Test...`` so
pytest collects it, and gives:

- ``build()``: a fresh tiny model (channels 4-16, 16-32 px); the contract seeds torch first;
- ``inputs()``: a tuple of input tensors (seeded, so every call returns the same tensors);
- ``expected_shape``: the output's shape, or a list of shapes when ``forward`` returns several;
- ``save_load(model, path)``: the family's own save and load, returning the loaded model.

Optionally ``forward(model, inputs)`` when the model is not called as ``model(*inputs)``,
``zero_grad_ok`` for parameter-name prefixes whose gradient is zero by design at initialisation
(ControlNet's zero convolutions cut everything upstream), and ``round_trip_atol``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

Output = torch.Tensor | list[torch.Tensor]


def flat(out: Any) -> list[torch.Tensor]:
    """Tensors of a model output: a tensor, a diffusers output (``.sample``) or nested lists/tuples."""
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "sample"):
        return [out.sample]
    return [t for o in out for t in flat(o)]


class ModelContract:
    """Output shape, backward pass, seeded determinism and save/load round trip (not collected itself)."""

    expected_shape: tuple[int, ...] | list[tuple[int, ...]]
    zero_grad_ok: tuple[str, ...] = ()
    # Weights must come back bit for bit; outputs too, unless the loaded model may pick another
    # (equally valid) kernel, e.g. diffusers' attention after from_pretrained.
    round_trip_atol = 0.0
    seed = 0

    def build(self) -> torch.nn.Module:
        raise NotImplementedError

    def inputs(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def save_load(self, model: torch.nn.Module, path: Path) -> torch.nn.Module:
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
        return model(*inputs)

    # ---- helpers ---------------------------------------------------------------------

    def seeded(self, seed: int | None = None) -> torch.nn.Module:
        torch.manual_seed(self.seed if seed is None else seed)
        return self.build()

    def outputs(self, model: torch.nn.Module) -> list[torch.Tensor]:
        with torch.no_grad():
            return flat(self.forward(model.eval(), self.inputs()))

    # ---- the contract ------------------------------------------------------------------

    def test_output_shape(self):
        outs = self.outputs(self.seeded())
        shapes = self.expected_shape if isinstance(self.expected_shape, list) else [self.expected_shape]
        assert [tuple(o.shape) for o in outs] == [tuple(s) for s in shapes]
        assert all(torch.isfinite(o).all() for o in outs)

    def test_backward_reaches_every_trainable_parameter(self):
        model = self.seeded().train()
        outs = flat(self.forward(model, self.inputs()))
        g = torch.Generator().manual_seed(1)
        # A random projection, so no gradient cancels by symmetry (as a plain mean can).
        loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
        loss.backward()
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert params
        missing = [n for n, p in params if p.grad is None]
        assert not missing, f"no gradient reaches {missing[:5]}"
        assert all(torch.isfinite(p.grad).all() for _, p in params)
        dead = [n for n, p in params if not p.grad.any() and not n.startswith(self.zero_grad_ok)]
        assert not dead, f"zero gradient for {dead[:5]}"

    def test_seeded_determinism(self):
        a, b, c = self.seeded(), self.seeded(), self.seeded(self.seed + 1)
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert any(not torch.equal(sa[k], sc[k]) for k in sa)  # the seed is what made them equal
        for x, y in zip(self.outputs(a), self.outputs(b)):
            assert torch.equal(x, y)

    def test_save_load_round_trip(self, tmp_path: Path):
        model = self.seeded()
        loaded = self.save_load(model, tmp_path)
        assert loaded is not model
        sa, sb = model.state_dict(), loaded.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        for x, y in zip(self.outputs(model), self.outputs(loaded)):
            assert torch.equal(x, y) if not self.round_trip_atol else torch.allclose(x, y, rtol=0, atol=self.round_trip_atol)
