r"""AlexNet as the authors ran it (Krizhevsky, Sutskever & Hinton 2012), on ILSVRC-2012.

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

Hardware and time: the paper took 5-6 days on two GTX 580s; measured here only on a 2-core CPU (19.8 images/s: ~67
days for 90 epochs); no GPU has run it yet (benchmarks/RESULTS.md).
Expected: 60,965,224 parameters (DIR/run.json); 40.7% top-1 / 18.2% top-5 error, 10-crop on ILSVRC-2012 val (the
paper, 1 CNN; not yet reproduced here); near 45-46% top-1 points to a recipe bug. First steps: the loss stays near
ln(1000) = 6.91 for ~0.2-1.6 epochs (Caffe users' reports); health.max_steps_at_chance=500 warns "at chance" at
step 500 if it has not left it (a warning: a healthy ImageNet run may get it); still 6.9 after ~2 epochs is dead.

Batch 128, 90 epochs, SGD momentum 0.9, weight decay 5e-4 inside the velocity, lr 0.01 divided by 10 on plateau (3
times), with the authors' code (cuda-convnet2's layer files) where it differs from the text: LRN alpha/n per column,
N(0, 0.03) for conv3-5, biases at 2x the rate without decay. configs/paper.py:text is the recipe exactly as printed.
Which settings, why, and the first-steps study (issue 13): docs/paper_recipe.md; every deviation: docs/DEVIATIONS.md.
"""

from alexnet_jax import config_lib

VARIANTS = ("authors", "text")


def get_config(variant: str = "authors"):
  """``authors`` (the default): the paper's recipe with the authors' code where it differs from the text;
  ``text`` (``--config=configs/paper.py:text``): every setting exactly as printed."""
  if variant not in VARIANTS:
    raise ValueError(f"configs/paper.py:{variant}: the variants are {', '.join(VARIANTS)}")
  config = config_lib.base_config()  # the base config is the paper's text; data.source='auto' reads data.dir
  if variant == "authors":
    config.model.lrn_alpha_over_n = True
    config.model.lrn_per_column = True
    config.model.init = "cuda_convnet2"
    config.optimizer.bias_lr_multiplier = 2.0
    config.optimizer.decay_biases = False
  config.health.max_steps_at_chance = 500  # the docstring's promise: left chance by then, or told so
  return config
