r"""The paper's recipe on synthetic data: no files needed, ImageNet-shaped inputs and 1000 classes.

For checking an installation, a machine's throughput, or the training loop itself. The images are made on the
devices, inside the train step, from each example's index: the host only sends indices and labels (about 0.1 us of
host time an example), so it does not limit the throughput:

  python -m alexnet_jax.main --config=configs/synthetic.py --workdir=runs/synthetic

Hardware and time: any machine (the full-size network trains at 19.8 images/s on a 2-core CPU: docs/performance.md).
Expected: the loop runs; at full size the paper's initialisation makes the loss jump over its first steps, so a few
steps show that the loop runs, not that it learns. A tiny variant shows learning in a minute on a laptop CPU (10
classes, 1/8 width, PyTorch's initialisation, half the paper's learning rate):

  python -m alexnet_jax.main --config=configs/synthetic.py --workdir=runs/synthetic_tiny \
    --config.model.width=0.125 --config.model.image_size=67 --config.model.num_classes=10 \
    --config.model.init=torch --config.batch_size=16 --config.num_train_steps=300 --config.log_every_steps=50 \
    --config.optimizer.learning_rate=0.005

Expected (tested): the training loss, averaged over the last 50 of the 300 steps, below 0.5 (chance is ln 10 = 2.30;
measured here 0.003-0.029 from step 200 on, 0.0069 over the last 50, and 0% top-1 error on the 200 evaluation images;
2026-11-30, 2-core CPU, 8 fake devices). How the images are made, and why these settings:
docs/training.md#the-recipes-data-and-settings.
"""

from alexnet_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.source = "synthetic"
  config.data.num_eval_examples = 200
  config.eval_every_steps = 1000
  return config
