r"""A CPU-sized AlexNet on the embedded shapes dataset: what `make demo` runs, through the real data path.

  python -m alexnet_jax.shapes --output_dir=demo_data/shapes
  python -m alexnet_jax.prepare --input_dir=demo_data/shapes --output_dir=demo_data/shapes_prepared --image_size=76
  python -m alexnet_jax.main --config=configs/demo.py --workdir=workdirs/demo
  python -m alexnet_jax.evaluate --workdir=workdirs/demo --crops=10

(`make demo` runs these four for you.) The same recipe trains on any prepared class-folder set:
`--config.data.dir=DST --config.model.num_classes=N`.

Hardware and time: 2 CPU cores (one JAX CPU device), about 4 minutes of training and 15 s of 10-crop evaluation.
Expected: top-1 error near 12-20% (chance: 90%), top-5 near 0.5%, on the 1,000 validation images. Measured here
(2026-11-22, 2-core EPYC, 2,790 steps in 4 min 0 s): 17.2% top-1 centre crop, 12.3% / 0.1% top-1 / top-5 with the
paper's 10 crops (15.3% / 0.3% before the CPU fast paths changed the float rounding).

The paper's pipeline and network scaled to a CPU (76x76 stored, 67x67 crops, 1/4 width, batch 64), with PyTorch's
initialisation and a step schedule (divide by 10 after 24 of the 30 epochs).
Why: docs/training.md#the-recipes-data-and-settings.
"""

from alexnet_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.dir = "demo_data/shapes_prepared"
  config.data.shuffle_buffer = 6000
  config.model.num_classes = 10
  config.model.width = 0.25
  config.model.image_size = 67
  config.model.init = "torch"
  config.batch_size = 64
  config.eval_batch_size = 200
  config.num_epochs = 30.0
  config.schedule.name = "step"
  config.schedule.step_epochs = (24.0,)
  config.log_every_steps = 25
  config.eval_every_steps = 0  # centre-crop evaluation at the end; the demo then runs the 10-crop one
  config.checkpoint_every_steps = 200
  # The recipe sits at chance with small gradients for ~6 log windows (steps 200-325 of a run measured 2026-12-02)
  # before it learns: the collapse warning waits 12 windows (300 steps), not the default 3, so a healthy demo stays
  # quiet; a real collapse is still named by step ~600 of 2,790.
  config.health.patience = 12
  return config
