r"""The paper's recipe on synthetic data: no files needed, ImageNet-shaped inputs and 1000 classes.

For checking an installation, a machine's throughput, or the training loop itself:

  python -m alexnet_jax.main --config=configs/synthetic.py --workdir=runs/synthetic

Every image is made from its index (class-dependent coarse patterns plus noise), so a network can learn it and a run
is reproducible bit for bit. Evaluation uses 200 synthetic images (a number that does not divide the batch, to keep
the padding path honest). At full size the paper's initialisation makes the loss jump over its first steps, so a
few steps show that the loop runs, not that it learns. A tiny variant that shows learning in a minute on a laptop
CPU (10 classes, 1/8 width, PyTorch's initialisation, with which a network this thin passes signal; see
configs/demo.py):

  python -m alexnet_jax.main --config=configs/synthetic.py --workdir=runs/synthetic_tiny \
    --config.model.width=0.125 --config.model.image_size=67 --config.model.num_classes=10 \
    --config.model.init=torch --config.batch_size=16 --config.num_train_steps=300 --config.log_every_steps=50 \
    --config.optimizer.learning_rate=0.005

Expected (tested): the training loss, averaged over the last 50 of the 300 steps, below 0.5 (chance is ln 10 = 2.30;
measured here 0.010-0.018 from step 200 on and 0% top-1 error on the 200 evaluation images; 2026-11-24, 2-core CPU,
8 fake devices). The learning rate is half the paper's: at 0.01 this thin network at batch 16 learns and then turns
unstable (loss 0.54 at step 200, 1.27-1.72 at step 300).
"""

from alexnet_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.source = "synthetic"
  config.data.num_eval_examples = 200
  config.eval_every_steps = 1000
  return config
