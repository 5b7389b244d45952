"""``python -m alexnet_jax.shapes``: the embedded dataset's command (``alexnet_jax.data.embedded``, whose docstring
is this module's), kept at this path with the names the docs and notebooks use: ``shapes.generate``,
``shapes.draw``, ``shapes.CLASSES``.
"""

from alexnet_jax.data import embedded as _embedded
from alexnet_jax.data.embedded import CLASSES, define_flags, draw, generate, main

__doc__ = _embedded.__doc__  # what --help prints
__all__ = ["CLASSES", "define_flags", "draw", "generate", "main"]

if __name__ == "__main__":
  from alexnet_jax import cli

  define_flags()
  cli.run(main)  # a bad flag value: one `error:` line, exit 2
