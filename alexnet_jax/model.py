"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) as Flax NNX modules.

Three architectures:
  * ``paper``: the network of the paper (Sec. 3, Fig. 2): 96-256-384-384-256 convolutions, two groups in conv2,
    conv4 and conv5 (the two-GPU layout), local response normalisation after conv1 and conv2, overlapping 3x3/2
    max-pooling, fc 4096-4096-1000. 227x227 input. 60,965,224 parameters.
  * ``owt``: torchvision's single-column "one weird trick" variant (64-192-384-256-256, no LRN, no groups,
    224x224 input with padding 2 in conv1). 61,100,840 parameters.
  * ``alexnet_bn``: the AlexNet-BN of You, Gitman & Ginsburg 2017 ("Large Batch Training of Convolutional Networks",
    the LARS paper, Sec. 4 and Table 3): the paper network with its LRN removed and every convolution without a bias,
    followed by batch normalisation (a learned per-channel scale and offset), then the ReLU; the fully connected
    layers are unchanged (bias, ReLU, dropout). Where BN sits (after each conv, none on the fc layers) follows the
    issue's reading of the LARS paper; the authors' NVCaffe AlexNet-BN prototxt was not found (their published
    AlexNet prototxt, borisgin/caffe models/bvlc_alexnet/train_val_ls.prototxt, is the LRN network with Caffe's
    init: N(0, 0.01) convs, N(0, 0.005) fc6/fc7, zero biases, which ``alexnet_bn`` uses by default: init 'caffe'
    with biases of 0). Batch statistics: ``batch_norm``.

The modules hold parameters only; the training code uses them through ``nnx.split`` / ``nnx.merge`` (see
``train.py``). Randomness (dropout) is passed in explicitly, so a step's dropout masks are a pure function of the
step's key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

Array = jax.Array
LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The shape of one AlexNet variant: everything that differs between ``paper`` and ``owt``."""

  conv_channels: tuple[int, ...]
  conv_kernels: tuple[int, ...]
  conv_strides: tuple[int, ...]
  conv_paddings: tuple[int, ...]
  conv_groups: tuple[int, ...]  # 2 = the paper's two-GPU column split: each half sees only its own half
  lrn_after: tuple[bool, ...]
  pool_after: tuple[bool, ...]
  fc_features: tuple[int, ...]
  image_size: int
  pooled_size: int | None  # torchvision's AdaptiveAvgPool2d((6, 6)); None: flatten what conv5 gives
  bias_one: tuple[str, ...]  # layers whose bias starts at 1 (paper init, Sec. 5)
  batch_norm: bool = False  # conv -> batch norm -> ReLU, convs without bias (AlexNet-BN, the LARS paper)


ARCHITECTURES: dict[str, Architecture] = {
  "paper": Architecture(
    conv_channels=(96, 256, 384, 384, 256),
    conv_kernels=(11, 5, 3, 3, 3),
    conv_strides=(4, 1, 1, 1, 1),
    conv_paddings=(0, 2, 1, 1, 1),
    conv_groups=(1, 2, 1, 2, 2),
    lrn_after=(True, True, False, False, False),
    pool_after=(True, True, False, False, True),
    fc_features=(4096, 4096),
    image_size=227,
    pooled_size=None,
    bias_one=("conv2", "conv4", "conv5", "fc6", "fc7"),
  ),
  "owt": Architecture(
    conv_channels=(64, 192, 384, 256, 256),
    conv_kernels=(11, 5, 3, 3, 3),
    conv_strides=(4, 1, 1, 1, 1),
    conv_paddings=(2, 2, 1, 1, 1),
    conv_groups=(1, 1, 1, 1, 1),
    lrn_after=(False,) * 5,
    pool_after=(True, True, False, False, True),
    fc_features=(4096, 4096),
    image_size=224,
    pooled_size=6,
    bias_one=(),
  ),
  "alexnet_bn": Architecture(
    conv_channels=(96, 256, 384, 384, 256),
    conv_kernels=(11, 5, 3, 3, 3),
    conv_strides=(4, 1, 1, 1, 1),
    conv_paddings=(0, 2, 1, 1, 1),
    conv_groups=(1, 2, 1, 2, 2),
    lrn_after=(False,) * 5,
    pool_after=(True, True, False, False, True),
    fc_features=(4096, 4096),
    image_size=227,
    pooled_size=None,
    bias_one=(),
    batch_norm=True,
  ),
}


# ---------------------------------------------------------------------------------------------------------------
# The paper's building blocks, as plain functions.
# ---------------------------------------------------------------------------------------------------------------
def _lrn_window_sum(sq: Array, n: int, axis_name: str | None = None, groups: int = 1) -> Array:
  """Sum over each channel's window of ``n`` neighbours (zero beyond the edges): n shifted slices, one fused pass.

  ``groups`` > 1: the channels are that many independent columns (cuda-convnet's per-GPU response norm), and a
  window stops at its column's edges.

  With ``axis_name`` (inside ``shard_map``, channels split over that mesh axis in order) the window reaches across
  the split: each device receives its neighbours' ``n // 2`` edge channels (two ``ppermute`` of a thin slice), and
  zeros only at the ends of the whole channel axis. The same sums as on one device."""
  half, channels = n // 2, sq.shape[-1]
  if axis_name is None:
    padded = jnp.pad(sq, [(0, 0)] * (sq.ndim - 1) + [(half, half)])
  else:
    if channels < half:
      raise ValueError(f"LRN over a channel split needs at least {half} channels per device, got {channels}")
    if groups > 1:
      raise ValueError("a per-column LRN inside the model split: each device already holds one column (groups=1)")
    devices = jax.lax.axis_size(axis_name)
    from_left = jax.lax.ppermute(sq[..., channels - half :], axis_name, [(i, i + 1) for i in range(devices - 1)])
    from_right = jax.lax.ppermute(sq[..., :half], axis_name, [(i + 1, i) for i in range(devices - 1)])
    padded = jnp.concatenate([from_left, sq, from_right], axis=-1)
  if groups == 1:
    return sum(padded[..., i : i + channels] for i in range(n))
  if channels % groups:
    raise ValueError(f"a per-column LRN needs the {channels} channels to divide into {groups} columns")
  # Each neighbour's term masked where it lies in another column: the channel axis keeps its layout (a reshape into
  # columns of 48 channels costs 16% more memory traffic on a TPU: RESULTS.md). The masks are constants that XLA
  # folds into the one fused pass.
  column = np.arange(channels) // (channels // groups)
  neighbours = [np.clip(np.arange(channels) + i - half, 0, channels - 1) for i in range(n)]
  return sum(
    padded[..., i : i + channels] * jnp.asarray(column[nb] == column, sq.dtype) for i, nb in enumerate(neighbours)
  )


def _neg_pow(d: Array, beta: float) -> Array:
  """d ** -beta; for the paper's beta = 0.75 as rsqrt(d) * sqrt(rsqrt(d)), several times cheaper than pow."""
  if beta == 0.75:
    r = jax.lax.rsqrt(d)
    return r * jnp.sqrt(r)
  return jax.lax.pow(d, -beta)


def _lrn_reference(
  x: Array,
  *,
  k: float = 2.0,
  n: int = 5,
  alpha: float = 1e-4,
  beta: float = 0.75,
  alpha_over_n: bool = False,
  axis_name: str | None = None,
  groups: int = 1,
) -> Array:
  """The formula of Sec. 3.3 written directly (and differentiated by JAX): the reference for the fast path."""
  a = x.astype(jnp.float32)
  scale = alpha / n if alpha_over_n else alpha
  return (a * jax.lax.pow(k + scale * _lrn_window_sum(jnp.square(a), n, axis_name, groups), -beta)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _lrn(a: Array, k: float, n: int, scale: float, beta: float, axis_name: str | None, groups: int) -> Array:
  return a * _neg_pow(k + scale * _lrn_window_sum(jnp.square(a), n, axis_name, groups), beta)


def _lrn_fwd(a, k, n, scale, beta, axis_name, groups):
  d = k + scale * _lrn_window_sum(jnp.square(a), n, axis_name, groups)
  return a * _neg_pow(d, beta), (a, d)


def _lrn_bwd(k, n, scale, beta, axis_name, groups, residuals, g):
  # b_i = a_i d_i^-beta with d_j = k + scale * sum_{m in W(j)} a_m^2, and i in W(j) <=> j in W(i):
  # dL/da_i = g_i d_i^-beta - 2 scale beta a_i sum_{j in W(i)} g_j a_j d_j^(-beta-1).
  del k
  a, d = residuals
  s = _neg_pow(d, beta)
  return (g * s - (2.0 * scale * beta) * a * _lrn_window_sum(g * a * s / d, n, axis_name, groups),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


def local_response_norm(
  x: Array,
  *,
  k: float = 2.0,
  n: int = 5,
  alpha: float = 1e-4,
  beta: float = 0.75,
  alpha_over_n: bool = False,
  axis_name: str | None = None,
  groups: int = 1,
) -> Array:
  """Sec. 3.3: b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta over channels (the last axis).

  ``alpha_over_n=False`` is the formula as printed; ``True`` divides alpha by n, as the authors' cuda-convnet,
  Caffe and PyTorch do. Computed in float32 whatever the input dtype. The fast path: its gradient is written by hand
  (one more windowed sum, instead of JAX's transpose of n slices: 4.7x less time for forward + backward on CPU) and
  ``beta = 0.75`` uses rsqrt instead of pow; ``_lrn_reference`` is the plain formula, and the tests
  hold the two to float32 rounding. ``axis_name``: the channels are split over that mesh axis (inside
  ``shard_map``); the window still spans all channels, through a halo of ``n // 2`` channels at each split.
  ``groups``: the channels are that many columns normalised apart (cuda-convnet's per-GPU layers; no halo).
  """
  scale = alpha / n if alpha_over_n else alpha
  a = x.astype(jnp.float32)
  return _lrn(a, float(k), int(n), float(scale), float(beta), axis_name, int(groups)).astype(x.dtype)


def _window_slices(x: Array, axis: int, window: int, stride: int) -> list[Array]:
  """The ``window`` strided slices along ``axis`` whose elementwise maximum is a 1-D max-pool."""
  n = (x.shape[axis] - window) // stride + 1
  return [jax.lax.slice_in_dim(x, i, i + stride * (n - 1) + 1, stride, axis) for i in range(window)]


def _max_1d(x: Array, axis: int, window: int, stride: int) -> Array:
  slices = _window_slices(x, axis, window, stride)
  out = slices[0]
  for s in slices[1:]:
    out = jnp.maximum(out, s)
  return out


def _max_1d_grad(x: Array, y: Array, g: Array, axis: int, window: int, stride: int) -> Array:
  """Gradient of ``y = _max_1d(x)``: each output's gradient to the first maximum of its window."""
  zero = jnp.zeros((), g.dtype)
  taken = jnp.zeros(y.shape, bool)
  routed = []
  for s in _window_slices(x, axis, window, stride):
    hit = (s == y) & ~taken
    taken = taken | hit
    routed.append(jnp.where(hit, g, zero))
  length, n = x.shape[axis], y.shape[axis]
  if (window, stride) == (3, 2):  # input 2b <- offset 0 of output b and offset 2 of b-1; input 2b+1 <- offset 1 of b
    even = _pad_axis(routed[0], axis, 0, 1) + _pad_axis(routed[2], axis, 1, 0)
    odd = _pad_axis(routed[1], axis, 0, 1)
    shape = list(y.shape)
    shape[axis] = 2 * (n + 1)
    dx = jax.lax.slice_in_dim(jnp.stack([even, odd], axis=axis + 1).reshape(shape), 0, 2 * n + 1, axis=axis)
    return _pad_axis(dx, axis, 0, length - (2 * n + 1))
  dx = jnp.zeros(x.shape, g.dtype)
  for i, gi in enumerate(routed):  # any other window and stride: interior-padded copies
    widths = [(0, 0, 0)] * x.ndim
    widths[axis] = (i, length - i - stride * (n - 1) - 1, stride - 1)
    dx = dx + jax.lax.pad(gi, zero, widths)
  return dx


def _pad_axis(a: Array, axis: int, before: int, after: int) -> Array:
  widths = [(0, 0)] * a.ndim
  widths[axis] = (before, after)
  return jnp.pad(a, widths)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def overlapping_max_pool(x: Array, window: int = 3, stride: int = 2) -> Array:
  """Sec. 3.4: max-pooling over NHWC with window 3, stride 2, no padding.

  Separable (a 1-D max over columns, then over rows: 4 maximums of strided slices instead of 8) and not
  ``lax.reduce_window``, with the gradient written by hand: each output's gradient goes to the first maximum of its
  window in row-major order (what ``select_and_scatter`` and PyTorch do; JAX's own gradient of ``maximum`` would
  split ties), scattered with unstrided pads and an interleave. No ``select_and_scatter``, which XLA's deterministic
  GPU mode refuses.
  """
  return _max_1d(_max_1d(x, 2, window, stride), 1, window, stride)


def _max_pool_fwd(x, window, stride):
  y = overlapping_max_pool(x, window, stride)
  return y, (x, y)


def _max_pool_bwd(window, stride, residuals, g):
  x, y = residuals
  columns = _max_1d(x, 2, window, stride)  # recomputed: cheaper than keeping it
  d_columns = _max_1d_grad(columns, y, g, 1, window, stride)
  return (_max_1d_grad(x, columns, d_columns, 2, window, stride),)


overlapping_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """torchvision's ``AdaptiveAvgPool2d((size, size))`` over NHWC (identity when the input is already size x size)."""
  _, h, w, _ = x.shape
  if (h, w) == (size, size):
    return x

  def cells(length: int) -> list[tuple[int, int]]:
    return [((i * length) // size, -(-((i + 1) * length) // size)) for i in range(size)]

  rows = [jnp.stack([x[:, r0:r1, c0:c1, :].mean(axis=(1, 2)) for c0, c1 in cells(w)], axis=1) for r0, r1 in cells(h)]
  return jnp.stack(rows, axis=1)


def grouped_conv(x: Array, kernel: Array, *, groups: int, stride: int, padding: int, impl: str = "split") -> Array:
  """A convolution whose input and output channels are cut into ``groups`` independent columns.

  ``kernel`` has shape (kh, kw, in_channels // groups, out_channels), as ``feature_group_count`` expects: output
  channels [g*out/G, (g+1)*out/G) see only input channels [g*in/G, (g+1)*in/G).
  ``impl='grouped'`` uses XLA's ``feature_group_count``; ``impl='split'`` runs one convolution per group and
  concatenates, which computes the same function and is about 2x faster on CPU (see benchmarks/RESULTS.md).
  """
  conv = lambda inp, ker, g: jax.lax.conv_general_dilated(
    inp,
    ker,
    window_strides=(stride, stride),
    padding=[(padding, padding), (padding, padding)],
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=g,
  )
  if impl == "patches" and groups == 1:
    return patches_conv(x, kernel, stride=stride, padding=padding)
  if groups == 1 or impl == "grouped":
    return conv(x, kernel, groups)
  if impl != "split":
    raise ValueError(f"conv_impl must be 'split' or 'grouped', got {impl!r}")
  xs = jnp.split(x, groups, axis=-1)
  ks = jnp.split(kernel, groups, axis=-1)
  return jnp.concatenate([conv(xi, ki, 1) for xi, ki in zip(xs, ks, strict=True)], axis=-1)


def patches_conv(x: Array, kernel: Array, *, stride: int, padding: int) -> Array:
  """A strided convolution as one matrix product: the (kh*kw*C)-long patch under each output position (strided
  slices, concatenated on channels) times the kernel reshaped to (kh*kw*C, out). The same function as the conv; for
  conv1 (3 input channels, 11x11, stride 4) XLA's CPU convolution reaches ~27 GFLOP/s and this ~3x that, forward +
  kernel gradient (no input gradient is needed for the first layer)."""
  n, h, w, c = x.shape
  kh, kw, kc, out_channels = kernel.shape
  if kc != c:
    raise ValueError("patches_conv computes ungrouped convolutions only")
  x = jnp.pad(x, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
  out_h, out_w = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
  patches = jnp.concatenate(
    [
      x[:, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride, :]
      for i in range(kh)
      for j in range(kw)
    ],
    axis=-1,
  )
  y = patches.reshape(n * out_h * out_w, kh * kw * c) @ kernel.reshape(kh * kw * c, out_channels)
  return y.reshape(n, out_h, out_w, out_channels)


def resolve_conv_impls(conv_impl: str, conv1_impl: str, platform: str | None = None) -> tuple[str, str]:
  """What 'auto' means for ``conv_impl`` and ``conv1_impl`` on ``platform`` (default: this backend; ``aot.py``
  names the target's). Training and the benchmark agree.

  Grouped layers: two convs per layer ('split': 2.2x faster on CPU than one ``feature_group_count`` conv). Under the
  model split (``mesh.model=2``) every device holds one group and runs one ungrouped conv, so the choice matters only
  without it. conv1: 'patches' (one matrix product) on CPU, where XLA's convolution is slow for 3 input channels;
  'conv' on GPU/TPU. Every choice computes the same function.
  """
  if conv_impl == "auto":
    conv_impl = "split"
  if conv1_impl == "auto":
    conv1_impl = "patches" if (platform or jax.default_backend()) == "cpu" else "conv"
  return conv_impl, conv1_impl


# Batch normalisation (AlexNet-BN). NVCaffe's BatchNorm layer defaults (caffe.proto BatchNormParameter):
# moving_average_fraction 0.999, eps 1e-5; its running averages are normalised by the sum of the weights so far
# (blobs_[2]), so the first update already gives that batch's statistics (no bias towards the initial values).
BN_MOMENTUM = 0.999
BN_EPSILON = 1e-5


def batch_norm_statistics(x: Array, groups: int = 1, data_axis: str | None = None) -> tuple[Array, Array, Array, Array]:
  """Per-channel batch statistics of ``x`` [N, ..., C] over every axis but the last, in float32.

  ``groups``: the batch is cut into that many statistics groups of consecutive examples (a data-sharded batch puts
  group g on devices g*G .. (g+1)*G-1 of the 'data' axis: per-GPU batch norm when G = 1); 1 = the whole batch.
  Without ``data_axis`` ``x`` is the whole (global) batch, as under ``jit`` (a mean over a data-sharded batch axis is
  global). With ``data_axis`` (inside ``shard_map``) ``x`` is this device's slice of the batch, and the sums are
  gathered over that axis: the same numbers.

  Returns (mean, var) to normalise each example of ``x`` with, broadcastable to ``x`` (per group; biased variance,
  as in training), and (mean, var) [C] averaged over the groups, for the running averages.
  """
  a = x.astype(jnp.float32)
  channels = a.shape[-1]
  if data_axis is None:
    if a.shape[0] % groups:
      raise ValueError(f"a batch of {a.shape[0]} does not split into {groups} batch-norm groups")
    g = a.reshape(groups, a.shape[0] // groups, *a.shape[1:])
    axes = tuple(range(1, g.ndim - 1))
    mean = g.mean(axes, keepdims=True)
    var = jnp.square(g - mean).mean(axes, keepdims=True)
    shape = (groups, 1) + (1,) * (a.ndim - 2) + (channels,)
    per_example = lambda v: jnp.repeat(v.reshape(shape), a.shape[0] // groups, axis=1).reshape(
      a.shape[:1] + (1,) * (a.ndim - 2) + (channels,)
    )
    return (
      per_example(mean),
      per_example(var),
      mean.reshape(groups, channels).mean(0),
      var.reshape(groups, channels).mean(0),
    )
  devices = jax.lax.axis_size(data_axis)
  if devices % groups:
    raise ValueError(f"{devices} devices on the '{data_axis}' axis do not split into {groups} batch-norm groups")
  count = (a.size // channels) * (devices // groups)
  reduce = tuple(range(a.ndim - 1))
  mine = jax.lax.axis_index(data_axis) // (devices // groups)

  def group_sums(local: Array) -> tuple[Array, Array]:  # (this device's group's sum [C], every group's [groups, C])
    # each device adds its sums into its group's row: one psum, whose result is the same on every device
    every = jax.lax.psum(jnp.zeros((groups, channels), jnp.float32).at[mine].set(local), data_axis)
    return every[mine], every

  total, totals = group_sums(a.sum(reduce))
  mean = total / count
  squares, all_squares = group_sums(jnp.square(a - mean).sum(reduce))
  return mean, squares / count, (totals / count).mean(0), (all_squares / count).mean(0)


def batch_norm(x: Array, mean: Array, var: Array, scale: Array, offset: Array, epsilon: float = BN_EPSILON) -> Array:
  """(x - mean) / sqrt(var + epsilon) * scale + offset, per channel (the last axis), in float32; ``x``'s dtype out
  (Ioffe & Szegedy 2015, Alg. 1)."""
  a = x.astype(jnp.float32)
  y = (a - mean) * jax.lax.rsqrt(var + epsilon) * scale + offset
  return y.astype(x.dtype)


def running_average(
  mean: Array, var: Array, weight: Array, batch_mean: Array, batch_var: Array, count: int, momentum: float
) -> tuple[Array, Array, Array]:
  """NVCaffe's BatchNorm running statistics after one training batch: with s the sum of the weights so far,
  s' = momentum * s + 1, mean' = (momentum * s * mean + batch_mean) / s', likewise the variance with the batch's
  unbiased variance (batch_var * count / (count - 1), ``count`` values per channel per statistics group).
  Returns (mean', var', s'); s = 0 (initial) gives the batch's own statistics."""
  new_weight = momentum * weight + 1.0
  correction = count / max(count - 1, 1)
  new_mean = (momentum * weight * mean + batch_mean) / new_weight
  new_var = (momentum * weight * var + batch_var * correction) / new_weight
  return new_mean, new_var, new_weight


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
  """Inverted dropout: keep with probability 1-rate and scale by 1/(1-rate); identity when ``rng`` is None.

  The paper multiplies by 0.5 at test time instead; in expectation the two are the same network.
  """
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


# ---------------------------------------------------------------------------------------------------------------
# Initialisers.
# ---------------------------------------------------------------------------------------------------------------
def paper_normal(key: Array, shape: Sequence[int], fan_in: int, std: float = 0.01) -> Array:
  """Sec. 5: every weight ~ N(0, 0.01^2) (``std`` for the published configurations that differ per layer)."""
  del fan_in
  return std * jax.random.normal(key, shape, jnp.float32)


def torch_uniform(key: Array, shape: Sequence[int], fan_in: int) -> Array:
  """PyTorch's default for conv and linear layers (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), +)."""
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


@dataclasses.dataclass(frozen=True)
class InitScheme:
  """How a scheme draws each layer: N(0, std^2) weights (``stds`` per layer, else ``std``), or PyTorch's default
  (``torch``); the biases the architecture starts at one get ``bias_one``, the others 0 (or PyTorch's default)."""

  std: float = 0.01
  stds: tuple[tuple[str, float], ...] = ()
  bias_one: float = 1.0
  torch: bool = False

  def params(self, rngs: nnx.Rngs, layer: str, shape: Sequence[int], fan_in: int, bias_is_one: bool):
    """(kernel, bias) of ``layer``; the bias has ``shape[-1]`` entries."""
    one = jnp.full(shape[-1:], self.bias_one, jnp.float32)
    if self.torch:  # the architecture's biases of one stay one (the paper network with PyTorch's init: the demo)
      kernel, bias = torch_uniform(rngs.params(), shape, fan_in), torch_uniform(rngs.params(), shape[-1:], fan_in)
      return kernel, one if bias_is_one else bias
    kernel = paper_normal(rngs.params(), shape, fan_in, dict(self.stds).get(layer, self.std))
    return kernel, one if bias_is_one else jnp.zeros(shape[-1:], jnp.float32)


# The paper's text (Sec. 5); the authors' own cuda-convnet2 ImageNet layer files (layers-imagenet-2gpu-model.cfg:
# initW 0.01 for conv1/2 and the FC layers, 0.03 for conv3-5, initB 1 where the paper says 1); Caffe's bvlc_alexnet
# (N(0, 0.005) for fc6/fc7, biases of 0.1 where the paper has 1); PyTorch's default (the 'owt' variant's).
INITS: dict[str, InitScheme] = {
  "paper": InitScheme(),
  "cuda_convnet2": InitScheme(stds=(("conv3", 0.03), ("conv4", 0.03), ("conv5", 0.03))),
  "caffe": InitScheme(stds=(("fc6", 0.005), ("fc7", 0.005)), bias_one=0.1),
  "torch": InitScheme(torch=True),
}


# ---------------------------------------------------------------------------------------------------------------
# Layers and the network.
# ---------------------------------------------------------------------------------------------------------------
class Conv(nnx.Module):
  """A (possibly grouped) convolution with float32 parameters, computed in ``dtype``.

  ``batch_norm``: AlexNet-BN's layer: no bias; the convolution's output is batch-normalised with a learned scale
  (``scale``, starting at 1) and offset (``bias``, starting at 0: it takes the bias's place and name), and the running
  statistics ``mean``, ``var`` and ``average_weight`` (NVCaffe's sum of weights, ``running_average``) are
  ``nnx.BatchStat`` variables, updated by ``AlexNet.__call__`` in training.
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int,
    padding: int,
    groups: int,
    init: InitScheme,
    layer: str,
    bias_is_one: bool,
    impl: str,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
    batch_norm: bool = False,
  ):
    if in_channels % groups or out_channels % groups:
      raise ValueError(f"channels {in_channels}->{out_channels} do not divide into {groups} groups")
    fan_in = kernel_size * kernel_size * in_channels // groups
    shape = (kernel_size, kernel_size, in_channels // groups, out_channels)
    kernel, bias = init.params(rngs, layer, shape, fan_in, bias_is_one)
    self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)
    self.batch_norm = batch_norm
    if batch_norm:
      self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32))  # the batch norm's offset
      self.scale = nnx.Param(jnp.ones((out_channels,), jnp.float32))
      self.mean = nnx.BatchStat(jnp.zeros((out_channels,), jnp.float32))
      self.var = nnx.BatchStat(jnp.ones((out_channels,), jnp.float32))
      self.average_weight = nnx.BatchStat(jnp.zeros((), jnp.float32))
    self.stride, self.padding, self.groups, self.impl, self.dtype = stride, padding, groups, impl, dtype

  def weights(self) -> dict[str, Array]:
    """The arrays the layer computes with: kernel and bias, and with batch norm scale and the running mean, var."""
    out = {"kernel": self.kernel[...], "bias": self.bias[...]}
    if self.batch_norm:
      out.update(scale=self.scale[...], mean=self.mean[...], var=self.var[...])
    return out

  def __call__(self, x: Array) -> Array:
    if self.batch_norm:
      raise ValueError("a batch-normalised Conv runs inside AlexNet (its statistics depend on the mode and the batch)")
    return self.compute(x, self.kernel[...], self.bias[...], self.groups)

  def convolve(self, x: Array, kernel: Array, groups: int) -> Array:
    """The convolution alone, in ``dtype``."""
    return grouped_conv(
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      groups=groups,
      stride=self.stride,
      padding=self.padding,
      impl=self.impl,
    )

  def compute(self, x: Array, kernel: Array, bias: Array, groups: int) -> Array:
    """This layer's arithmetic on given weights: what ``__call__`` does, and what each device does with its own
    slice of the kernel inside the model split (``groups=1`` there: a device holds one group)."""
    return self.convolve(x, kernel, groups) + bias.astype(self.dtype)


class Dense(nnx.Module):
  """A fully connected layer with float32 parameters, computed in ``dtype``."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    init: InitScheme,
    layer: str,
    bias_is_one: bool,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
  ):
    kernel, bias = init.params(rngs, layer, (in_features, out_features), in_features, bias_is_one)
    self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    return x.astype(self.dtype) @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
  return (size + 2 * padding - kernel) // stride + 1


def _scaled(channels: int, width: float) -> int:
  """Channels times ``width``, kept even so that both groups (and both model-axis halves) get equal shares."""
  return channels if width == 1.0 else max(2, 2 * round(channels * width / 2))


class AlexNet(nnx.Module):
  """AlexNet. ``width`` < 1 scales every conv and hidden FC layer (for CPU tests and demos); 1 is the paper.

  Batch norm (``alexnet_bn``): ``bn_groups`` statistics groups over the training batch (1: the whole global batch;
  see ``batch_norm_statistics``), running averages with ``bn_momentum`` and ``bn_epsilon`` (NVCaffe's defaults).
  """

  def __init__(
    self,
    name: str = "paper",
    *,
    num_classes: int = 1000,
    image_size: int | None = None,
    width: float = 1.0,
    dropout_rate: float = 0.5,
    lrn_alpha_over_n: bool = False,
    lrn_per_column: bool = False,
    conv_impl: str = "split",
    conv1_impl: str = "conv",
    init: str | None = None,
    dtype: str | jnp.dtype = "float32",
    mesh: jax.sharding.Mesh | None = None,
    bn_groups: int = 1,
    bn_momentum: float = BN_MOMENTUM,
    bn_epsilon: float = BN_EPSILON,
    rngs: nnx.Rngs,
  ):
    if name not in ARCHITECTURES:
      raise ValueError(f"model.name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    arch = ARCHITECTURES[name]
    self.arch = arch
    self.image_size = image_size or arch.image_size
    self.dropout_rate = dropout_rate
    self.lrn_alpha_over_n = lrn_alpha_over_n
    # cuda-convnet normalised each GPU's maps apart (its response-norm layers sit in each column); the paper's text
    # and one-device frameworks normalise across all of a layer's channels.
    self.lrn_columns = max(arch.conv_groups) if lrn_per_column else 1
    # The paper's two columns (Sec. 3.2): with a 'model' mesh axis, each device computes its own slice of every
    # conv layer (``_columns``). The mesh is static: it decides how the function is computed, not what it is.
    self.mesh = mesh if mesh is not None and dict(mesh.shape).get("model", 1) > 1 else None
    dtype = jnp.dtype(dtype)
    # alexnet_bn: the LARS authors' NVCaffe init (Caffe's bvlc_alexnet stds, zero biases: its arch has no bias of 1)
    init = init or {"paper": "paper", "alexnet_bn": "caffe"}.get(name, "torch")
    if bn_groups < 1:
      raise ValueError(f"bn_groups must be >= 1, got {bn_groups}")
    self.bn_groups, self.bn_momentum, self.bn_epsilon = bn_groups, bn_momentum, bn_epsilon
    if conv1_impl not in ("conv", "patches"):
      raise ValueError(f"model.conv1_impl must be 'conv' or 'patches', got {conv1_impl!r}")
    if init not in INITS:
      raise ValueError(f"model.init must be one of {sorted(INITS)}, got {init!r}")
    scheme = INITS[init]

    size, in_ch = self.image_size, 3
    convs = []
    for i in range(5):
      layer = f"conv{i + 1}"
      out_ch = _scaled(arch.conv_channels[i], width)
      convs.append(
        Conv(
          in_ch,
          out_ch,
          arch.conv_kernels[i],
          stride=arch.conv_strides[i],
          padding=arch.conv_paddings[i],
          groups=arch.conv_groups[i],
          init=scheme,
          layer=layer,
          bias_is_one=layer in arch.bias_one,
          impl=conv1_impl if i == 0 else conv_impl,
          dtype=dtype,
          rngs=rngs,
          batch_norm=arch.batch_norm,
        )
      )
      size = _conv_out(size, arch.conv_kernels[i], arch.conv_strides[i], arch.conv_paddings[i])
      if arch.pool_after[i]:
        size = (size - 3) // 2 + 1
      if size < 1:
        raise ValueError(f"image_size {self.image_size} is too small for {name}: nothing is left after {layer}")
      in_ch = out_ch
    self.conv1, self.conv2, self.conv3, self.conv4, self.conv5 = convs

    spatial = arch.pooled_size or size
    in_features = spatial * spatial * in_ch
    fcs = []
    for j, features in enumerate([*[_scaled(f, width) for f in arch.fc_features], num_classes]):
      layer = f"fc{j + 6}"
      fcs.append(
        Dense(
          in_features,
          features,
          init=scheme,
          layer=layer,
          bias_is_one=layer in arch.bias_one,
          dtype=dtype,
          rngs=rngs,
        )
      )
      in_features = features
    self.fc6, self.fc7, self.fc8 = fcs

  def __call__(
    self,
    x: Array,
    *,
    dropout_rng: Array | None = None,
    train: bool | None = None,
    return_activations: bool = False,
  ) -> Array | tuple[Array, dict[str, Array]]:
    """Logits (float32) for NHWC images; dropout is applied only when ``dropout_rng`` is given.

    ``train`` (default: whether ``dropout_rng`` is given): batch norm normalises with the batch's statistics and
    updates the running averages (this module's ``nnx.BatchStat`` variables); otherwise it uses the running averages.
    """
    arch = self.arch
    train = dropout_rng is not None if train is None else train
    weights = [c.weights() for c in self._convs()]
    if self.mesh is None:
      x, acts, stats = self._conv_tower(x, weights, train=train)
    else:
      x, acts, stats = self._columns(x, weights, train)
    for conv, name in zip(self._convs(), LAYER_NAMES, strict=False):
      if name in stats:  # training with batch norm: the running averages move
        batch_mean, batch_var = jax.lax.stop_gradient(stats[name])
        per_group = x.shape[0] // self.bn_groups * math.prod(acts[name].shape[1:3])
        mean, var, weight = running_average(
          conv.mean[...], conv.var[...], conv.average_weight[...], batch_mean, batch_var, per_group, self.bn_momentum
        )
        conv.mean[...], conv.var[...], conv.average_weight[...] = mean, var, weight
    if arch.pooled_size:
      x = adaptive_avg_pool(x, arch.pooled_size)
    x = x.reshape(x.shape[0], -1)
    rngs = jax.random.split(dropout_rng, 2) if dropout_rng is not None else (None, None)
    for fc, rng, name in ((self.fc6, rngs[0], "fc6"), (self.fc7, rngs[1], "fc7")):
      x = jax.nn.relu(fc(x))
      acts[name] = x  # fc7 before dropout is the paper's 4096-d feature (Fig. 4)
      x = dropout(x, self.dropout_rate, rng)
    logits = self.fc8(x).astype(jnp.float32)
    acts["fc8"] = logits
    return (logits, acts) if return_activations else logits

  def _convs(self) -> tuple[Conv, ...]:
    return (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5)

  def _conv_tower(
    self, x: Array, weights: list[dict[str, Array]], axis_name: str | None = None, *, train: bool = False
  ) -> tuple[Array, dict[str, Array], dict[str, tuple[Array, Array]]]:
    """conv1 .. pool5 on the given weights (``Conv.weights``). With ``axis_name`` this is one device's part of the
    model split (inside ``shard_map`` over the 'data' and ``axis_name`` axes): ``weights`` and the activations hold
    this device's slice of the output channels and of the batch. Returns the output, the activations and, in
    training with batch norm, each layer's batch (mean, var) [C] averaged over the statistics groups."""
    acts: dict[str, Array] = {}
    stats: dict[str, tuple[Array, Array]] = {}
    arch = self.arch
    for i, (conv, w) in enumerate(zip(self._convs(), weights, strict=True)):
      groups = conv.groups
      if axis_name is not None and i > 0:
        x, groups = _column_input(x, groups, axis_name)
      if conv.batch_norm:
        y = conv.convolve(x, w["kernel"], groups)
        if train:
          mean, var, stats[f"conv{i + 1}"] = self._batch_statistics(y, axis_name)
        else:
          mean, var = w["mean"], w["var"]
        x = jax.nn.relu(batch_norm(y, mean, var, w["scale"], w["bias"], self.bn_epsilon))
      else:
        x = jax.nn.relu(conv.compute(x, w["kernel"], w["bias"], groups))
      if arch.lrn_after[i]:
        x = self._lrn(x, axis_name)
      acts[f"conv{i + 1}"] = x
      if arch.pool_after[i]:
        x = overlapping_max_pool(x)
        acts[f"pool{i + 1}"] = x
    return x, acts, stats

  def _batch_statistics(self, y: Array, axis_name: str | None) -> tuple[Array, Array, tuple[Array, Array]]:
    """(mean, var) to normalise ``y`` with, and (mean, var) [C] for the running averages (``batch_norm_statistics``;
    inside the model split the batch is this device's slice of the 'data' axis)."""
    data_axis = "data" if axis_name is not None else None
    mean, var, batch_mean, batch_var = batch_norm_statistics(y, self.bn_groups, data_axis)
    return mean, var, (batch_mean, batch_var)

  def _lrn(self, x: Array, axis_name: str | None) -> Array:
    """Sec. 3.3's normalisation inside the conv tower: across all channels (through the split's halo under
    ``axis_name``), or per column, where each device of a split that many wide holds exactly one column."""
    if self.lrn_columns == 1:
      return local_response_norm(x, alpha_over_n=self.lrn_alpha_over_n, axis_name=axis_name)
    if axis_name is None:
      return local_response_norm(x, alpha_over_n=self.lrn_alpha_over_n, groups=self.lrn_columns)
    return local_response_norm(x, alpha_over_n=self.lrn_alpha_over_n)  # this device's channels are its column

  def _columns(
    self, x: Array, weights: list[dict[str, Array]], train: bool = False
  ) -> tuple[Array, dict[str, Array], dict[str, tuple[Array, Array]]]:
    """The conv layers split over the mesh's 'model' axis as the paper split them over two GPUs (Sec. 3.2, Fig. 2):
    every device computes its own slice of each layer's output channels (``shard_map``), so with 2 devices and the
    paper's groups, device g computes exactly group g of conv2, conv4 and conv5 from its own activations. Activations
    cross devices only into conv3 (an all-gather of conv2's channels), the LRN's halo of n//2 channels at the split,
    and after pool5, where the fully connected layers (split by ``parallel.py``'s shardings) take all channels."""
    model = dict(self.mesh.shape)["model"]
    for conv, w in zip(self._convs(), weights, strict=True):
      out = w["kernel"].shape[-1]
      if out % model or (conv.groups > 1 and model % conv.groups and conv.groups != model):
        raise ValueError(
          f"mesh.model={model} cannot split a conv layer of {out} channels in {conv.groups} groups: use mesh.model=2 "
          "(the paper's split) or 1"
        )
    if self.lrn_columns > 1 and model != self.lrn_columns:
      raise ValueError(
        f"model.lrn_per_column normalises each of the {self.lrn_columns} columns apart: it needs mesh.model=1 or "
        f"{self.lrn_columns}, got {model}"
      )
    # every array of a conv layer is split on its last axis, the output channels (kernel HWIO; bias, scale, stats [C])
    weight_specs = [{k: P(*(None,) * (v.ndim - 1), "model") for k, v in w.items()} for w in weights]
    channels = P("data", None, None, "model")
    names = [f"conv{i + 1}" for i in range(5)] + [f"pool{i + 1}" for i in range(5) if self.arch.pool_after[i]]
    stat_names = [f"conv{i + 1}" for i, c in enumerate(self._convs()) if c.batch_norm] if train else []
    tower = jax.shard_map(
      functools.partial(self._conv_tower, axis_name="model", train=train),
      mesh=self.mesh,
      in_specs=(P("data"), weight_specs),
      out_specs=(channels, {name: channels for name in names}, {n: (P("model"), P("model")) for n in stat_names}),
    )
    return tower(x, weights)


def _column_input(x: Array, groups: int, axis_name: str) -> tuple[Array, int]:
  """One device's input to a conv layer inside the model split, and the groups left to compute on it.

  The device holds a contiguous slice of the previous layer's channels. A layer with one group per device reads
  only that slice (the paper: conv2, conv4 and conv5 see only their own GPU's maps); any other layer needs every
  channel (conv3: the paper's GPUs exchange their maps there), then the slice of the channels of the device's group.
  """
  devices = jax.lax.axis_size(axis_name)
  if groups == devices:
    return x, 1
  x = jax.lax.all_gather(x, axis_name, axis=x.ndim - 1, tiled=True)
  if groups == 1:
    return x, 1
  # several devices per group: the group's input channels, chosen by this device's place on the axis
  width = x.shape[-1] // groups
  group = jax.lax.axis_index(axis_name) // (devices // groups)
  return jax.lax.dynamic_slice_in_dim(x, group * width, width, axis=x.ndim - 1), 1


def count_params(tree) -> int:
  """Number of scalars in a pytree of arrays or shape structs."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
