r"""The paper's recipe on synthetic data: no files needed, ImageNet-shaped inputs and 1000 classes.

For checking an installation, a machine's throughput, or the training loop itself:

  python -m alexnet_jax.main --config=configs/synthetic.py --workdir=/tmp/alexnet_synthetic

Every image is made from its index (class-dependent coarse patterns plus noise), so the loss falls and a run is
reproducible bit for bit. Evaluation uses 200 synthetic images (a number that does not divide the batch, to keep
the padding path honest). Expected: the loss falls below ln(1000) = 6.91 within a few hundred steps on a GPU.
A tiny variant for a laptop CPU:

  python -m alexnet_jax.main --config=configs/synthetic.py --workdir=/tmp/s \
    --config.model.width=0.125 --config.model.image_size=67 --config.batch_size=16 --config.num_train_steps=20
"""

from alexnet_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.source = "synthetic"
  config.data.num_eval_examples = 200
  config.eval_every_steps = 1000
  return config
