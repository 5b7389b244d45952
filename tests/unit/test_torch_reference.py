"""benchmarks/torch_reference.py is the same network and optimiser as ours: same logits, same loss, same parameters
after two SGD steps (momentum included), for both architectures. A benchmark against a different network would
compare nothing."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import model as model_lib
from alexnet_jax import optim, steps

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (a dev dependency on x86_64)")
from tests.support import ROOT  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import torch_reference  # noqa: E402

SIZE = {"paper": 67, "owt": 64}


@pytest.mark.parametrize("name", ["paper", "owt"])
def test_same_network_and_update_as_pytorch(name):
  make_model = functools.partial(
    model_lib.AlexNet, name, num_classes=10, image_size=SIZE[name], width=0.125, dropout_rate=0.0, init="torch"
  )
  tx = optim.paper_sgd(momentum=0.9, weight_decay=5e-4)
  graphdef, init = steps.init_train_state(make_model, tx, seed=0)
  state = jax.jit(init)()
  schedule = optim.base_schedule("constant", learning_rate=0.05, steps_per_epoch=1, total_steps=1)
  train_step = jax.jit(steps.make_train_step(graphdef, tx, schedule, lambda b: b["image"]))

  net = torch_reference.TorchAlexNet(name, num_classes=10, image_size=SIZE[name], width=0.125, dropout=0.0).double()
  torch_reference.load_jax_params(net, jax.device_get(state["params"]))
  opt = torch_reference.make_optimizer(net, lr=0.05)
  torch_step = torch_reference.make_step(net, opt, "float32", "cpu")

  rng = np.random.default_rng(0)
  for _ in range(2):
    images = rng.normal(0, 50, (8, SIZE[name], SIZE[name], 3)).astype(np.float32)
    labels = rng.integers(0, 10, 8).astype(np.int32)
    logits = nnx_logits(graphdef, state["params"], images)
    t_images = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float64))
    np.testing.assert_allclose(net(t_images).detach().numpy(), logits, rtol=1e-4, atol=1e-4)
    state, out = train_step(state, {"image": jnp.asarray(images), "label": jnp.asarray(labels)})
    t_loss = torch_step(t_images, torch.from_numpy(labels.astype(np.int64)))
    np.testing.assert_allclose(t_loss.item(), float(out["loss"].mean()), rtol=1e-5)

  params = jax.device_get(state["params"])
  convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
  for i, conv in enumerate(convs):
    want = params[f"conv{i + 1}"]["kernel"].transpose(3, 2, 0, 1)
    np.testing.assert_allclose(conv.weight.detach().numpy(), want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(net.fc6.weight.detach().numpy(), params["fc6"]["kernel"].T, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(net.fc8.bias.detach().numpy(), params["fc8"]["bias"], rtol=1e-4, atol=1e-6)


def nnx_logits(graphdef, params, images):
  from flax import nnx

  return np.asarray(nnx.merge(graphdef, params)(jnp.asarray(images)))
