"""The native libraries' environment, tamed in one place: what TensorFlow, libtpu, the CUDA plugin and the Python
libraries around them (orbax, fsspec, JAX's backend discovery) would otherwise say or take that is not about the run.

- ``banners``: TensorFlow's C++ log level, and the start-up banners (TensorFlow's oneDNN line, the CUDA plugin's
  "Could not find cuda drivers", libtpu's "could not determine TPU accelerator type") filtered off file descriptor 2,
  every other line kept; the import hook that runs TensorFlow's first import inside that filter.
- ``tensorflow_devices``: TensorFlow kept off the GPUs and TPUs that JAX needs.
- ``compat``: the range of versions the package supports, Colab's included (its TPU runtimes ship without
  TensorFlow; its protobuf and tensorflow-metadata may disagree).
- ``library_logs``: the Python libraries' INFO narration (orbax's every save, fsspec's every file, JAX's missing
  backends) dropped, their warnings and errors kept.

``alexnet_jax/__init__.py`` installs the import hook and ``compat`` before anything imports TensorFlow or clu.
"""
