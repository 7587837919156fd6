"""Command-line command families; each module's ``register(cli)`` adds its parsers."""
