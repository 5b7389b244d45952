"""The paper's recipe on ImageNet, over learning rate and weight decay (a 2 x 3 grid: 6 runs).

python launch/sweep.py launch/sweeps/paper_lr_wd.py print
python launch/sweep.py launch/sweeps/paper_lr_wd.py slurm && sbatch workdirs/sweeps/paper_lr_wd/sweep.sbatch
python launch/sweep.py launch/sweeps/paper_lr_wd.py summary
"""

import os

config = "configs/paper.py"
workdir_root = "workdirs/sweeps/paper_lr_wd"
fixed = {"data.dir": os.environ.get("DATA_DIR", "/data/imagenet_prepared")}
grid = {
  "optimizer.learning_rate": [0.01, 0.02],
  "optimizer.weight_decay": [0.0005, 0.0002, 0.0001],
}
