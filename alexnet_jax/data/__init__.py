"""The data: what is stored, how it is read, and the paper's augmentation.

- ``format``: the prepared format on disk (metadata and its checks, statistics, shard names, records, encodings,
  damage checks); the one module that knows it.
- ``decode``: decoding images (any file or array a user has; the stored images inside tf.data).
- ``augment``: the paper's crops, flips, "fancy PCA" lighting and normalisations, as functions.
- ``batches``: what a source is (the interface, batch shapes, padded evaluation batches).
- ``pipeline``: ``AugmentedSource``, a reader's shards through the augmentation on tf.data; ``prepared`` and
  ``tfds_dataset``: the readers of a prepared set and of a TFDS dataset, each with its source; ``synthetic``: images
  made on the devices from their index; ``sources``: which of them a config reads.
- ``prepare``: the tool that writes a prepared set (``python -m alexnet_jax.prepare``); ``embedded``: the
  procedurally drawn dataset that needs no download (``python -m alexnet_jax.shapes``).

Nothing is imported here, so a tool that needs one module (``prepare``'s worker processes) loads just that one.
"""
