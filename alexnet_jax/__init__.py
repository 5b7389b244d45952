"""alexnet_jax: AlexNet (Krizhevsky, Sutskever & Hinton, 2012) in JAX/Flax."""

from alexnet_jax import compat  # noqa: F401  (first: it prepares clu for a runtime without TensorFlow)
