r"""AlexNet exactly as in the paper (Krizhevsky, Sutskever & Hinton 2012), on ILSVRC-2012.

  python -m alexnet_jax.prepare --input_dir=SRC --output_dir=DST
  python -m alexnet_jax.main --config=configs/paper.py --workdir=DIR --config.data.dir=DST
  python -m alexnet_jax.evaluate --workdir=DIR --crops=10

SRC holds the official ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (or a class-folder tree); DST is the
prepared set (about 30 GB); data.source='auto' sees that DST was made by prepare and reads it (a data.dir that is not
a prepared set or a TFDS dataset is an error, and no data.dir at all is an error: this recipe never falls back to
synthetic images). A tiny local variant of the same recipe, full width, on any prepared 1000-class set, for checking
the path on a CPU:

  python -m alexnet_jax.main --config=configs/paper.py --workdir=DIR --config.data.dir=DST \
    --config.batch_size=8 --config.num_train_steps=3

Recipe (Sec. 5): batch 128, SGD momentum 0.9, weight decay 5e-4 inside the velocity, learning rate 0.01 divided
by 10 when the validation top-1 error stops improving (3 evaluations, i.e. epochs, without improvement), at most 3
times, 90 epochs; weights N(0, 0.01), biases 1 in conv2/4/5 and fc6/7. Network (Sec. 3): two groups in conv2/4/5,
LRN (k=2, n=5, alpha=1e-4, beta=0.75, alpha as printed), overlapping 3x3/2 pooling, dropout 0.5, 227x227 crops of
the 256x256 images (data.crop_fraction; a set prepared at another size is resized on read).

Hardware and time: the paper took 5-6 days on two GTX 580s. Measured here only on a 2-core CPU (19.8 images/s: ~67
days); no GPU has run it yet (benchmarks/RESULTS.md).

Expected result (the paper, 1 CNN, 10-crop on ILSVRC-2012 val): 40.7% top-1 / 18.2% top-5 error. Not yet
reproduced here. A run that ends near 45-46% top-1 error points to a recipe bug (PAPER.md).
"""

from alexnet_jax import config_lib


def get_config():
  return config_lib.base_config()  # the base config is the paper's recipe; data.source='auto' reads data.dir
