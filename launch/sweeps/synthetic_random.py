"""A random search that runs on a laptop CPU in minutes: a small AlexNet on synthetic data.

python launch/sweep.py launch/sweeps/synthetic_random.py run
python launch/sweep.py launch/sweeps/synthetic_random.py summary
"""

config = "configs/synthetic.py"
workdir_root = "workdirs/sweeps/synthetic_random"
fixed = {
  "model.width": 0.125,
  "model.image_size": 67,
  "model.num_classes": 10,
  "model.init": "torch",
  "batch_size": 32,
  "eval_batch_size": 32,
  "num_train_steps": 60,
  "log_every_steps": 20,
  "checkpoint_every_steps": 60,
}
random = {
  "optimizer.learning_rate": loguniform(0.003, 0.1),  # noqa: F821 - provided by launch/sweep.py
  "model.dropout_rate": choice(0.0, 0.5),  # noqa: F821
}
num_samples = 4
seed = 0
