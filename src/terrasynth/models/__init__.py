"""Models, one file per family, named after its paper."""
