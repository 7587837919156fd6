"""terrasynth: synthetic, labelled Earth-observation training data and the proof of whether it helps."""

__version__ = "0.1.0"
