"""The network of the paper, layer by layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import model as M

PAPER_SHAPES = {
  "conv1": (55, 55, 96),
  "pool1": (27, 27, 96),
  "conv2": (27, 27, 256),
  "pool2": (13, 13, 256),
  "conv3": (13, 13, 384),
  "conv4": (13, 13, 384),
  "conv5": (13, 13, 256),
  "pool5": (6, 6, 256),
  "fc6": (4096,),
  "fc7": (4096,),
  "fc8": (1000,),
}
OWT_SHAPES = {
  "conv1": (55, 55, 64),
  "pool1": (27, 27, 64),
  "conv2": (27, 27, 192),
  "pool2": (13, 13, 192),
  "conv3": (13, 13, 384),
  "conv4": (13, 13, 256),
  "conv5": (13, 13, 256),
  "pool5": (6, 6, 256),
  "fc6": (4096,),
  "fc7": (4096,),
  "fc8": (1000,),
}


def abstract_model(name, **kw):
  return nnx.eval_shape(lambda: M.AlexNet(name, rngs=nnx.Rngs(0), **kw))


def params_of(model):
  return nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])


@pytest.mark.parametrize("name,size,shapes", [("paper", 227, PAPER_SHAPES), ("owt", 224, OWT_SHAPES)])
def test_every_layer_output_shape(name, size, shapes):
  model = abstract_model(name)
  graphdef, params = nnx.split(model, nnx.Param)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  _, acts = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x, return_activations=True), params, x)
  assert {k: v.shape[1:] for k, v in acts.items()} == shapes
  assert all(v.shape[0] == 2 for v in acts.values())


def test_parameter_counts():
  assert M.count_params(params_of(abstract_model("paper"))) == 60_965_224
  assert M.count_params(params_of(abstract_model("owt"))) == 61_100_840


def test_paper_kernel_shapes_have_two_groups():
  p = params_of(abstract_model("paper"))
  assert p["conv1"]["kernel"].shape == (11, 11, 3, 96)
  assert p["conv2"]["kernel"].shape == (5, 5, 48, 256)  # 5x5x48: each half sees its own 48 maps
  assert p["conv3"]["kernel"].shape == (3, 3, 256, 384)  # conv3 crosses the two GPUs
  assert p["conv4"]["kernel"].shape == (3, 3, 192, 384)
  assert p["conv5"]["kernel"].shape == (3, 3, 192, 256)
  assert p["fc6"]["kernel"].shape == (9216, 4096)


def lrn_numpy(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """Sec. 3.3, transcribed literally: loops over channels i and the window j."""
  out = np.empty_like(a)
  channels = a.shape[-1]
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    s = sum(a[..., j] ** 2 for j in range(lo, hi + 1))
    out[..., i] = a[..., i] / (k + alpha * s) ** beta
  return out


@pytest.mark.parametrize("alpha_over_n", [False, True])
def test_local_response_norm_matches_the_formula(alpha_over_n):
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 60, (2, 3, 4, 11)).astype(np.float64)  # large activations, so alpha matters
  expected = lrn_numpy(a, alpha=1e-4 / 5 if alpha_over_n else 1e-4)
  got = M.local_response_norm(jnp.asarray(a, jnp.float32), alpha_over_n=alpha_over_n)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-6)
  other = M.local_response_norm(jnp.asarray(a, jnp.float32), alpha_over_n=not alpha_over_n)
  assert np.abs(np.asarray(other) - expected).max() > 1e-3  # the two readings really differ


def test_lrn_runs_in_float32_for_bfloat16_inputs():
  x = jnp.linspace(0, 50, 2 * 5 * 5 * 8, dtype=jnp.float32).reshape(2, 5, 5, 8)
  out = M.local_response_norm(x.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  ref = M.local_response_norm(x.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), rtol=1e-2)


def test_grouped_conv_equals_two_half_convs():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 8)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)
  halves = [
    jax.lax.conv_general_dilated(
      x[..., 4 * g : 4 * g + 4],
      kernel[..., 3 * g : 3 * g + 3],
      (1, 1),
      [(1, 1), (1, 1)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    for g in range(2)
  ]
  expected = np.concatenate([np.asarray(h) for h in halves], axis=-1)
  for impl in ("split", "grouped"):
    got = M.grouped_conv(x, kernel, groups=2, stride=1, padding=1, impl=impl)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_split_and_grouped_networks_agree():
  x = jax.random.normal(jax.random.key(0), (2, 67, 67, 3)) * 50
  a = M.AlexNet("paper", width=0.125, image_size=67, conv_impl="split", rngs=nnx.Rngs(3))
  b = M.AlexNet("paper", width=0.125, image_size=67, conv_impl="grouped", rngs=nnx.Rngs(3))
  # Logits of magnitude <= 0.8: the two agree to float32 rounding (measured: 6e-8); the bound leaves room for another
  # XLA (the newest-versions leg) summing in another order, and is still far below a bfloat16 rounding (2e-6).
  np.testing.assert_allclose(np.asarray(a(x)), np.asarray(b(x)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,size,per_column", [("paper", 67, False), ("owt", 64, False), ("paper", 67, True)])
def test_the_model_split_computes_the_same_network_and_its_gradient(name, size, per_column):
  """mesh.model=2 (each device its own slice of every conv layer, inside shard_map; the LRN's window across the split
  through a halo, or none per column) against one device: the same activations, logits and gradients."""
  from alexnet_jax import parallel

  mesh = parallel.create_mesh(2)  # data 4 x model 2
  kw = dict(width=0.125, image_size=size, num_classes=10, dropout_rate=0.0, rngs=nnx.Rngs(0))
  kw["lrn_per_column"] = per_column
  one, split = M.AlexNet(name, **kw), M.AlexNet(name, mesh=mesh, **{**kw, "rngs": nnx.Rngs(0)})
  x = jax.random.normal(jax.random.key(1), (8, size, size, 3)) * 20

  def run(model, **jit_kw):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p, x):
      logits, acts = nnx.merge(graphdef, p)(x, return_activations=True)
      return jnp.sum(logits**2) + sum(jnp.sum(jnp.sin(a)) for a in acts.values()), acts

    return jax.jit(jax.value_and_grad(loss, has_aux=True), **jit_kw)(params, x)

  params = nnx.split(split, nnx.Param)[1]
  shardings = (parallel.state_shardings(mesh, params), parallel.batch_sharding(mesh))
  (loss_one, acts_one), grads_one = run(one)
  (loss_split, acts_split), grads_split = run(split, in_shardings=shardings)
  assert acts_split["conv2"].sharding.spec == jax.sharding.PartitionSpec("data", None, None, "model")
  np.testing.assert_allclose(float(loss_split), float(loss_one), rtol=1e-6)  # measured: 8e-8
  for key in acts_one:
    np.testing.assert_allclose(np.asarray(acts_split[key]), np.asarray(acts_one[key]), rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(grads_one), jax.tree.leaves(grads_split), strict=True):
    a, b = np.asarray(a), np.asarray(b)  # float32 sums in another order: to rounding of the largest entries
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())


def test_lrn_across_a_channel_split_sees_its_neighbours():
  """The halo: each device's window reaches n//2 channels into the next device's (zeros only at the ends)."""
  from jax.sharding import PartitionSpec as P

  from alexnet_jax import parallel

  mesh = parallel.create_mesh(4)  # data 2 x model 4: three splits
  x = jax.random.normal(jax.random.key(2), (2, 3, 3, 16)) * 30
  split = jax.shard_map(
    lambda a: M.local_response_norm(a, axis_name="model"),
    mesh=mesh,
    in_specs=P("data", None, None, "model"),
    out_specs=P("data", None, None, "model"),
  )
  np.testing.assert_allclose(np.asarray(jax.jit(split)(x)), np.asarray(M._lrn_reference(x)), rtol=5e-6)
  grad = lambda f: jax.grad(lambda a: jnp.sum(jnp.cos(f(a))))(x)
  np.testing.assert_allclose(np.asarray(grad(jax.jit(split))), np.asarray(grad(M._lrn_reference)), rtol=1e-4, atol=5e-6)


def test_per_column_lrn_normalises_each_column_apart():
  """model.lrn_per_column: cuda-convnet's per-GPU response norm. Each half of the channels is normalised as if it
  were the whole layer (windows stop at the column's edge), value and hand-written gradient; the network with it
  differs from the all-channel one only through the two channels at the split."""
  x = jax.random.uniform(jax.random.key(0), (2, 3, 3, 12), minval=-40, maxval=60)
  kw = dict(alpha=1e-3, alpha_over_n=True)  # a large alpha, so the window term matters
  halves = lambda a: jnp.concatenate([M._lrn_reference(a[..., :6], **kw), M._lrn_reference(a[..., 6:], **kw)], -1)
  fast, ref = (value_and_grad_of(f, x) for f in (lambda a: M.local_response_norm(a, groups=2, **kw), halves))
  np.testing.assert_allclose(float(fast[0]), float(ref[0]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(fast[1]), np.asarray(ref[1]), rtol=5e-6, atol=5e-7)
  joint = np.asarray(M.local_response_norm(x, **kw))
  apart = np.asarray(M.local_response_norm(x, groups=2, **kw))
  np.testing.assert_array_equal(apart[..., [0, 1, 2, 3, 8, 9, 10, 11]], joint[..., [0, 1, 2, 3, 8, 9, 10, 11]])
  assert not np.allclose(apart[..., 4:8], joint[..., 4:8])


def test_overlapping_max_pool_matches_reduce_window():
  x = jax.random.normal(jax.random.key(1), (2, 13, 13, 5))
  ref = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
  np.testing.assert_array_equal(np.asarray(M.overlapping_max_pool(x)), np.asarray(ref))


def test_paper_initialisation():
  params = params_of(M.AlexNet("paper", rngs=nnx.Rngs(0)))
  for layer in M.LAYER_NAMES:
    w = np.asarray(params[layer]["kernel"])
    assert abs(w.std() - 0.01) < 0.0005, (layer, w.std())
    assert abs(w.mean()) < 0.001, layer
    bias = np.asarray(params[layer]["bias"])
    expected = 1.0 if layer in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
    np.testing.assert_array_equal(bias, np.full_like(bias, expected), err_msg=layer)
  assert all(params[layer]["kernel"].dtype == jnp.float32 for layer in M.LAYER_NAMES)


@pytest.mark.parametrize(
  "init,stds,bias_one",
  [
    ("cuda_convnet2", {"conv3": 0.03, "conv4": 0.03, "conv5": 0.03}, 1.0),  # the authors' layer files
    ("caffe", {"fc6": 0.005, "fc7": 0.005}, 0.1),  # bvlc_alexnet
  ],
)
def test_published_initialisations(init, stds, bias_one):
  params = params_of(M.AlexNet("paper", init=init, rngs=nnx.Rngs(0)))
  for layer in M.LAYER_NAMES:
    w = np.asarray(params[layer]["kernel"])
    std = stds.get(layer, 0.01)
    assert abs(w.std() - std) < 0.05 * std, (layer, w.std(), std)
    bias = np.asarray(params[layer]["bias"])
    expected = bias_one if layer in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
    np.testing.assert_array_equal(bias, np.full_like(bias, expected), err_msg=layer)


def test_owt_uses_pytorch_default_init():
  params = params_of(M.AlexNet("owt", width=0.25, rngs=nnx.Rngs(0)))
  w = np.asarray(params["conv2"]["kernel"])
  bound = 1 / np.sqrt(5 * 5 * w.shape[2])
  assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
  # the paper network with PyTorch's init (the demo's) keeps the architecture's biases of one
  demo = params_of(M.AlexNet("paper", width=0.25, image_size=67, init="torch", rngs=nnx.Rngs(0)))
  np.testing.assert_array_equal(np.asarray(demo["fc6"]["bias"]), 1.0)
  assert 0 < np.abs(np.asarray(demo["conv3"]["bias"])).max() <= 1 / np.sqrt(3 * 3 * demo["conv3"]["kernel"].shape[2])


def test_dropout_only_when_training():
  model = M.AlexNet("paper", width=0.125, image_size=67, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (4, 67, 67, 3)) * 50
  no_dropout = M.AlexNet("paper", width=0.125, image_size=67, dropout_rate=0.0, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(no_dropout(x)))  # eval: dropout off
  train_a, train_b = model(x, dropout_rng=jax.random.key(1)), model(x, dropout_rng=jax.random.key(2))
  assert not np.allclose(np.asarray(train_a), np.asarray(model(x)))
  assert not np.allclose(np.asarray(train_a), np.asarray(train_b))
  kept = M.dropout(jnp.ones((10_000,)), 0.5, jax.random.key(3))
  assert abs(float((kept > 0).mean()) - 0.5) < 0.03 and float(kept.max()) == 2.0


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = M.AlexNet("paper", width=0.125, image_size=67, dtype="bfloat16", rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 67, 67, 3)) * 50
  logits, acts = model(x, return_activations=True)
  assert logits.dtype == jnp.float32 and acts["conv3"].dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params_of(model)))
  ref = M.AlexNet("paper", width=0.125, image_size=67, rngs=nnx.Rngs(0))(x)
  # bfloat16's 8 bits of mantissa through 8 layers, on logits spread over 1.5: measured 2.5e-3 off at most.
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), rtol=0, atol=1e-2)


def test_image_too_small_is_a_clear_error():
  with pytest.raises(ValueError, match="too small"):
    M.AlexNet("paper", image_size=31, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------------------------
# The CPU fast paths compute the plain path's function and gradient (benchmarks/RESULTS.md has what they buy).
# ---------------------------------------------------------------------------------------------------------------
def value_and_grad_of(f, x):
  w = jax.random.normal(jax.random.key(9), jax.eval_shape(f, x).shape)  # a random linear readout: all outputs matter
  return jax.jit(jax.value_and_grad(lambda x: jnp.sum(f(x) * w)))(x)


@pytest.mark.parametrize("alpha_over_n,beta", [(False, 0.75), (True, 0.75), (False, 0.6)])
def test_lrn_fast_gradient_equals_the_formula_differentiated(alpha_over_n, beta):
  x = jax.random.uniform(jax.random.key(0), (2, 5, 5, 13), minval=-40, maxval=60)
  kw = dict(alpha=1e-3, beta=beta, alpha_over_n=alpha_over_n)  # a large alpha, so the window term matters
  fast, ref = (value_and_grad_of(lambda a, f=f: f(a, **kw), x) for f in (M.local_response_norm, M._lrn_reference))
  np.testing.assert_allclose(float(fast[0]), float(ref[0]), rtol=5e-6)
  np.testing.assert_allclose(np.asarray(fast[1]), np.asarray(ref[1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 13, 13, 5), (2, 14, 16, 3), (1, 27, 27, 4)])
def test_max_pool_gradient_goes_to_the_first_maximum_like_select_and_scatter(shape):
  x = jax.random.normal(jax.random.key(1), shape)
  x = x.at[:, 2, :, :].set(x[:, 1, :, :]).at[:, :, 4, :].set(x[:, :, 3, :])  # ties across rows and columns
  x = jnp.round(x * 2) / 2  # and many more ties
  rw = lambda a: jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
  (v, g), (v_ref, g_ref) = value_and_grad_of(M.overlapping_max_pool, x), value_and_grad_of(rw, x)
  assert float(v) == float(v_ref)
  # the same routing; where overlapping windows send two gradients to one input, they add in another order
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-6, atol=1e-6)


def test_max_pool_other_windows_use_the_general_gradient():
  x = jnp.round(jax.random.normal(jax.random.key(2), (2, 11, 12, 3)) * 2) / 2
  for window, stride in ((2, 2), (3, 1), (5, 3)):
    pool = lambda a, w=window, s=stride: M.overlapping_max_pool(a, w, s)
    rw = lambda a, w=window, s=stride: jax.lax.reduce_window(
      a, -jnp.inf, jax.lax.max, (1, w, w, 1), (1, s, s, 1), "VALID"
    )
    got, want = value_and_grad_of(pool, x)[1], value_and_grad_of(rw, x)[1]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stride,padding", [(4, 0), (4, 2), (2, 1)])
def test_patches_conv_equals_the_convolution(stride, padding):
  x = jax.random.normal(jax.random.key(3), (2, 35, 35, 3))
  kernel = jax.random.normal(jax.random.key(4), (11, 11, 3, 8)) * 0.1
  conv = lambda k: M.grouped_conv(x, k, groups=1, stride=stride, padding=padding, impl="split")
  patches = lambda k: M.grouped_conv(x, k, groups=1, stride=stride, padding=padding, impl="patches")
  (v, g), (v_ref, g_ref) = value_and_grad_of(patches, kernel), value_and_grad_of(conv, kernel)
  np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["paper", "owt"])
def test_fast_network_equals_the_plain_network(name, monkeypatch):
  """Loss and every gradient of the whole network: fast LRN, pooling and conv1 against the formulas as written."""
  size = 67 if name == "paper" else 64
  x = jax.random.normal(jax.random.key(5), (4, size, size, 3)) * 50
  labels = jnp.arange(4) % 10

  def loss_and_grads(conv1_impl):
    model = M.AlexNet(name, num_classes=10, width=0.125, image_size=size, conv1_impl=conv1_impl, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: -jnp.mean(jax.nn.log_softmax(nnx.merge(graphdef, p)(x, dropout_rng=jax.random.key(6)))[:, labels])
    return jax.jit(jax.value_and_grad(loss))(params)

  fast = loss_and_grads("patches")
  plain_pool = lambda a, window=3, stride=2: jax.lax.reduce_window(
    a, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID"
  )
  monkeypatch.setattr(M, "local_response_norm", M._lrn_reference)
  monkeypatch.setattr(M, "overlapping_max_pool", plain_pool)
  plain = loss_and_grads("conv")
  np.testing.assert_allclose(float(fast[0]), float(plain[0]), rtol=1e-5)
  for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(fast[1]), jax.tree.leaves(plain[1]), strict=True):
    scale = float(jnp.max(jnp.abs(g_ref))) or 1.0
    np.testing.assert_allclose(np.asarray(g) / scale, np.asarray(g_ref) / scale, atol=2e-5, err_msg=str(path))


# ---------------------------------------------------------------------------------------------------------------
# alexnet_bn: the LARS paper's AlexNet-BN.
# ---------------------------------------------------------------------------------------------------------------
def bn_model(**kw):
  kw = {"width": 0.125, "image_size": 67, "num_classes": 10, "dropout_rate": 0.0, "rngs": nnx.Rngs(0), **kw}
  return M.AlexNet("alexnet_bn", **kw)


def test_alexnet_bn_layers_have_no_conv_bias_and_batch_norm_in_place_of_lrn():
  from alexnet_jax import steps

  _, params, stats = steps.split_model(abstract_model("alexnet_bn"))
  paper = params_of(abstract_model("paper"))
  for i in range(1, 6):
    layer = f"conv{i}"
    channels = paper[layer]["kernel"].shape[-1]
    assert params[layer]["kernel"].shape == paper[layer]["kernel"].shape  # the paper's layers, groups included
    assert {k: v.shape for k, v in params[layer].items()} == {
      "kernel": paper[layer]["kernel"].shape,
      "scale": (channels,),
      "bias": (channels,),  # batch norm's offset: the conv itself has none
    }
    assert {k: v.shape for k, v in stats[layer].items()} == {
      "mean": (channels,),
      "var": (channels,),
      "average_weight": (),
    }
  assert set(stats) == {f"conv{i}" for i in range(1, 6)}  # the fully connected layers keep their bias, no BN
  assert M.count_params(params) == M.count_params(paper) + sum(paper[f"conv{i}"]["bias"].size for i in range(1, 6))
  fresh = steps.split_model(bn_model())[1]
  assert all(float(jnp.abs(fresh[f"conv{i}"]["bias"]).max()) == 0.0 for i in range(1, 6))
  assert all(float(fresh[f"conv{i}"]["scale"].min()) == 1.0 for i in range(1, 6))
  assert float(jnp.std(fresh["fc6"]["kernel"])) == pytest.approx(0.005, rel=0.05)  # the NVCaffe ('caffe') init


def test_batch_norm_statistics_per_group_match_numpy_on_one_device_and_across_eight():
  """Groups of consecutive examples: the global view (a reshape) and inside shard_map over 8 devices (a psum into
  each group's row) both give NumPy's per-group mean and biased variance, and their average over the groups."""
  from jax.sharding import PartitionSpec as P

  x = np.asarray(jax.random.normal(jax.random.key(0), (16, 3, 3, 5)), np.float64) * 3 + np.arange(5)
  for groups in (1, 2, 4, 8):
    g = x.reshape(groups, 16 // groups, 3, 3, 5)
    mean, var = g.mean(axis=(1, 2, 3)), g.var(axis=(1, 2, 3))  # [groups, C]
    per_example_mean = np.repeat(mean, 16 // groups, axis=0)
    m, v, running_m, running_v = M.batch_norm_statistics(jnp.asarray(x, jnp.float32), groups)
    np.testing.assert_allclose(np.asarray(m).reshape(16, 5), per_example_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(v).reshape(16, 5), np.repeat(var, 16 // groups, 0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(running_m), mean.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(running_v), var.mean(0), rtol=1e-5)

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    spmd = jax.shard_map(
      lambda a, groups=groups: M.batch_norm_statistics(a, groups, "data"),
      mesh=mesh,
      in_specs=P("data"),
      out_specs=(P("data"), P("data"), P(), P()),
    )
    sharded = jax.sharding.NamedSharding(mesh, P("data"))
    m8, v8, running_m8, running_v8 = jax.jit(spmd, in_shardings=sharded)(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(m8).reshape(8, 5), per_example_mean[::2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(v8).reshape(8, 5), np.repeat(var, 16 // groups, 0)[::2], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(running_m8), mean.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(running_v8), var.mean(0), rtol=1e-5)


@pytest.mark.parametrize("bn_groups", [1, 2])
def test_alexnet_bn_under_the_data_axis_and_the_model_split_equals_one_device(bn_groups):
  """Training mode on a data 4 x model 2 mesh (conv layers inside shard_map, statistics summed over 'data') against
  one device: the same loss, gradients and running statistics, for global and per-group statistics."""
  from alexnet_jax import parallel, steps

  mesh = parallel.create_mesh(2)
  one, split = bn_model(bn_groups=bn_groups), bn_model(bn_groups=bn_groups, mesh=mesh)
  x = jax.random.normal(jax.random.key(1), (8, 67, 67, 3)) * 20

  def run(model, **jit_kw):
    graphdef, params, stats = steps.split_model(model)

    def loss(p, s, x):
      net = nnx.merge(graphdef, p, s)
      logits = net(x, train=True)
      return jnp.sum(logits**2), nnx.to_pure_dict(nnx.state(net, nnx.BatchStat))

    return jax.jit(jax.value_and_grad(loss, has_aux=True), **jit_kw)(params, stats, x)

  _, params, stats = steps.split_model(split)
  shardings = (parallel.state_shardings(mesh, params), parallel.state_shardings(mesh, stats))
  (loss_one, stats_one), grads_one = run(one)
  (loss_split, stats_split), grads_split = run(split, in_shardings=(*shardings, parallel.batch_sharding(mesh)))
  np.testing.assert_allclose(float(loss_split), float(loss_one), rtol=1e-5)
  assert float(stats_one["conv1"]["average_weight"]) == 1.0
  for a, b in zip(jax.tree.leaves(stats_one), jax.tree.leaves(stats_split), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_one), jax.tree.leaves(grads_split), strict=True):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())


def test_alexnet_bn_evaluation_uses_the_running_statistics():
  """Outside training, conv1's output is relu((conv - running mean) / sqrt(running var + eps) * scale + offset) with
  the stored statistics (set here by hand), not the batch's; a training pass moves the running averages by NVCaffe's
  normalised rule: after one batch they are the batch's mean and unbiased variance."""
  from alexnet_jax import steps

  model = bn_model(conv1_impl="conv")
  graphdef, params, stats = steps.split_model(model)
  rng = np.random.default_rng(0)
  c = params["conv1"]["scale"].shape[0]
  params["conv1"]["scale"] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
  params["conv1"]["bias"] = jnp.asarray(rng.normal(size=c), jnp.float32)
  stats["conv1"]["mean"] = jnp.asarray(rng.normal(size=c), jnp.float32)
  stats["conv1"]["var"] = jnp.asarray(rng.uniform(0.5, 3.0, c), jnp.float32)
  x = jax.random.normal(jax.random.key(2), (4, 67, 67, 3))
  conv = np.asarray(
    jax.lax.conv_general_dilated(
      x, params["conv1"]["kernel"], (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  ).astype(np.float64)
  s, st = jax.tree.map(np.asarray, params["conv1"]), jax.tree.map(np.asarray, stats["conv1"])
  want = np.maximum((conv - st["mean"]) / np.sqrt(st["var"] + 1e-5) * s["scale"] + s["bias"], 0)
  _, acts = nnx.merge(graphdef, params, stats)(x, return_activations=True)
  np.testing.assert_allclose(np.asarray(acts["conv1"]), want, rtol=1e-4, atol=1e-4)

  net = nnx.merge(graphdef, params, stats)
  _, acts_train = net(x, train=True, return_activations=True)
  batch_mean, batch_var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
  with_batch = np.maximum((conv - batch_mean) / np.sqrt(batch_var + 1e-5) * s["scale"] + s["bias"], 0)
  np.testing.assert_allclose(np.asarray(acts_train["conv1"]), with_batch, rtol=1e-4, atol=1e-4)
  assert np.abs(with_batch - want).max() > 0.1  # the two modes differ: the check can fail
  moved = nnx.to_pure_dict(nnx.state(net, nnx.BatchStat))["conv1"]
  count = conv.size // c
  np.testing.assert_allclose(np.asarray(moved["mean"]), batch_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(moved["var"]), batch_var * count / (count - 1), rtol=1e-4)
  assert float(moved["average_weight"]) == 1.0
  mean, var, weight = M.running_average(moved["mean"], moved["var"], moved["average_weight"], 1.0, 2.0, 11, 0.999)
  np.testing.assert_allclose(np.asarray(mean), (0.999 * batch_mean + 1.0) / 1.999, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(var), (0.999 * np.asarray(moved["var"]) + 2.0 * 11 / 10) / 1.999, rtol=1e-5)
  assert float(weight) == pytest.approx(1.999)
