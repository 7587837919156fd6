"""Inference: loading trained generators and sampling from them, apart from training.

Nothing here imports :mod:`terrasynth.train`; the pipeline and the commands sample through
this package (land-cover maps, preview grids) or through :func:`terrasynth.models.generator.load_generator`
(images).
"""
