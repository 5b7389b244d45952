"""alexnet_jax: AlexNet (Krizhevsky, Sutskever & Hinton, 2012) in JAX/Flax."""

from alexnet_jax.native import banners

banners.quiet_tensorflow_import()  # before anything imports TensorFlow: its start-up banner stays off the terminal

from alexnet_jax.native import compat  # noqa: E402, F401  (it prepares clu for a runtime without TensorFlow)
