r"""AlexNet exactly as in the paper (Krizhevsky, Sutskever & Hinton 2012), on ILSVRC-2012.

  python -m alexnet_jax.main --config=configs/paper.py --workdir=gs://BUCKET/alexnet_paper \
    --config.data.dir=/data/imagenet_prepared

Recipe (Sec. 5): batch 128, SGD momentum 0.9, weight decay 5e-4 inside the velocity, learning rate 0.01 divided
by 10 when the validation top-1 error stops improving (3 evaluations, i.e. epochs, without improvement), at most 3
times, 90 epochs; weights N(0, 0.01), biases 1 in conv2/4/5 and fc6/7. Network (Sec. 3): two groups in conv2/4/5,
LRN (k=2, n=5, alpha=1e-4, beta=0.75, alpha as printed), overlapping 3x3/2 pooling, dropout 0.5, 227x227 input.

Hardware and time: the paper took 5-6 days on two GTX 580s. One modern GPU does 90 epochs (115M images) in
hours, not days; see benchmarks/RESULTS.md for measured throughput.

Expected result (the paper, 1 CNN, 10-crop on ILSVRC-2012 val): 40.7% top-1 / 18.2% top-5 error. A run that ends
near 45-46% top-1 error points to a recipe bug (PAPER.md).

Until the ImageNet input pipeline lands (data.source='prepared'), this recipe runs on the synthetic source.
"""

from alexnet_jax import config_lib


def get_config():
  config = config_lib.base_config()  # the base config is the paper's recipe
  config.data.source = "synthetic"
  return config
