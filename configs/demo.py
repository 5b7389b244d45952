r"""A CPU-sized AlexNet that learns in a couple of minutes: what `make demo` runs.

  python -m alexnet_jax.main --config=configs/demo.py --workdir=workdirs/demo

The paper's architecture (two groups, LRN, overlapping pooling, dropout) and optimiser (SGD momentum 0.9, coupled
weight decay 5e-4) at 1/4 width on 67x67 images, 10 classes, batch 64. Two changes from the paper, both because
the network is small: PyTorch's default initialisation instead of N(0, 0.01) (at 1/4 width the paper's
initialisation passes almost no signal through 8 layers and the loss sits at ln(10) for hundreds of steps), and
the constant schedule (the run is too short for plateaus).

Hardware and time: 2 CPU cores, about 1-2 minutes. Expected: eval top-1 error near 0 on the synthetic classes
(chance: 90%) after 200 steps.
"""

from alexnet_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.source = "synthetic"
  config.data.num_train_examples = 12_800
  config.data.num_eval_examples = 500
  config.model.num_classes = 10
  config.model.width = 0.25
  config.model.image_size = 67
  config.model.init = "torch"
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_train_steps = 200
  config.schedule.name = "constant"
  config.log_every_steps = 25
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  return config
