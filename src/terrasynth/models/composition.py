"""Class-ratio conditioning shared by every land-cover generator family (latent, masked discrete).

A generator conditioned on composition takes a (B, K) vector of class shares (all zeros = the
"null" condition of classifier-free guidance). :class:`CompositionPrior` turns a user's partial
request into that vector and, when none is requested, draws each map's composition from those
of the training maps (ancestral sampling of p(composition) p(map | composition)).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from terrasynth.classes import ClassScheme
from terrasynth.errors import UserError
from terrasynth.io import load_weights

COMPOSITIONS_FILE = "train_compositions.safetensors"


class CompositionPrior:
    """The scheme, the training class shares and the (N, K) training compositions of a generator."""

    scheme: ClassScheme
    conditional: bool

    def _init_prior(self, scheme: ClassScheme, class_frequencies: list[float] | None,
                    train_compositions: torch.Tensor | None) -> None:  # fmt: skip
        self.scheme = scheme
        self.class_frequencies = class_frequencies or [1.0 / scheme.num_classes] * scheme.num_classes
        self.train_compositions = train_compositions

    def composition_vector(self, composition: dict[int, float]) -> torch.Tensor:
        """Class codes -> fractions (partial is fine) as a (K,) vector summing to 1.

        Unspecified classes share the remaining mass in proportion to their training frequency.
        """
        k = self.scheme.num_classes
        lut = {c: i for i, c in enumerate(self.scheme.codes)}
        vec = torch.zeros(k)
        given = torch.zeros(k, dtype=torch.bool)
        for code, frac in composition.items():
            vec[lut[code]] = frac
            given[lut[code]] = True
        rest = 1.0 - float(vec.sum())
        prior = torch.tensor(self.class_frequencies) * (~given)
        if prior.sum() > 0 and rest > 0:
            vec += rest * prior / prior.sum()
        return vec / vec.sum().clamp_min(1e-8)

    def conditions(self, n: int, composition: torch.Tensor | None, generator: torch.Generator,
                   guidance: float | None, default_guidance: float) -> tuple[torch.Tensor | None, float]:  # fmt: skip
        """(n, K) conditions and the guidance scale for one batch.

        A requested ``composition`` (K,) is repeated; with none, a conditional model draws each map's
        composition from the training maps' and samples without guidance (unless ``guidance`` is given).
        """
        if composition is not None and not self.conditional:
            raise UserError("this land-cover model was trained without composition control; retrain with "
                            "--set diffusion.composition_control=true or drop --composition")  # fmt: skip
        cond = composition.to(torch.float32).expand(n, -1).contiguous() if composition is not None else None
        if cond is None and self.conditional and self.train_compositions is not None:
            pick = torch.randint(0, len(self.train_compositions), (n,), generator=generator)
            cond = self.train_compositions[pick].to(torch.float32)
            guidance = 1.0 if guidance is None else guidance
        return cond, default_guidance if guidance is None else guidance

    def save_compositions(self, path: Path) -> None:
        if self.train_compositions is not None:
            save_file({"compositions": self.train_compositions.contiguous()}, path / COMPOSITIONS_FILE)

    @staticmethod
    def load_compositions(path: Path) -> torch.Tensor | None:
        comp = path / COMPOSITIONS_FILE
        return load_weights(comp)["compositions"] if comp.exists() else None
