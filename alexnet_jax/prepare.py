"""``python -m alexnet_jax.prepare``: the command (``alexnet_jax.data.prepare``, whose docstring is this module's),
kept at this path with the names the README, docs and notebooks use: ``prepare.prepare``, ``prepare.decode_rgb``,
``prepare.to_uint8_rgb``, ``prepare.METADATA``, ...
"""

from alexnet_jax.data import prepare as _tool
from alexnet_jax.data.decode import decode_rgb, resize_and_center_crop, square_crop, to_uint8_rgb
from alexnet_jax.data.format import FORMAT_VERSION, METADATA, STATS
from alexnet_jax.data.prepare import PrepareError, define_flags, find_images, is_system_entry, main, prepare

__doc__ = _tool.__doc__  # what --help prints
__all__ = [
  "FORMAT_VERSION",
  "METADATA",
  "STATS",
  "PrepareError",
  "decode_rgb",
  "define_flags",
  "find_images",
  "is_system_entry",
  "main",
  "prepare",
  "resize_and_center_crop",
  "square_crop",
  "to_uint8_rgb",
]

if __name__ == "__main__":
  from alexnet_jax import cli

  define_flags()
  cli.run(main)
