"""Every published constant the project carries, checked against its source's layout, through the code that uses it.

Sources (the oracles, cited where they are used):
- fb.resnet.torch, datasets/imagenet.lua (``pca``) and datasets/transforms.lua (``Lighting``): ImageNet's RGB
  covariance eigenpairs on [0, 1] pixels; the 3x3 ``eigvec`` has rows R, G, B and one eigenvector per COLUMN, since
  Lighting computes ``rgb[i] = sum_j eigvec[i][j] * alpha[j] * eigval[j]``.
- The VGG networks' Caffe mean (B, G, R = 103.939, 116.779, 123.68), which TF-slim's preprocessing/vgg_preprocessing.py
  carries as ``_R_MEAN = 123.68, _G_MEAN = 116.78, _B_MEAN = 103.94``.
- torchvision, transforms/_presets.py ``ImageClassification`` (and ``AlexNet_Weights.IMAGENET1K_V1.transforms()``):
  ``mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)``, R, G, B, for pixels in [0, 1].
- ILSVRC2012's class order as Caffe, torchvision's ImageFolder and TFDS use it (the synsets sorted, n01440764 tench
  first, n15075141 toilet tissue last), and its validation ground truth (devkit ``ILSVRC2012_validation_ground_truth
  .txt``: images 1, 2, 3 are n01751748 sea snake, n09193705 alp, n02105855 Shetland sheepdog).
"""

import numpy as np
import pytest
from PIL import Image

from alexnet_jax.data import augment, prepare
from alexnet_jax.data.prepared import prepared_source
from alexnet_jax.data.tfds_dataset import tfds_source

# fb.resnet.torch's table as datasets/imagenet.lua prints it (rows R, G, B; columns the eigenvectors).
FB_EIGVAL = (0.2175, 0.0188, 0.0045)
FB_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def fb_lighting(alpha: np.ndarray) -> np.ndarray:
  """fb.resnet.torch's transforms.lua Lighting, transcribed: rgb = eigvec:clone():cmul(alpha:view(1, 3):expand(3, 3))
  :cmul(eigval:view(1, 3):expand(3, 3)):sum(2), in [0, 1] pixel units."""
  eigvec, eigval = np.asarray(FB_EIGVEC), np.asarray(FB_EIGVAL)
  return np.stack([(eigvec * (a[None, :] * eigval[None, :])).sum(axis=1) for a in alpha])


def lighting_shift(src, alpha: np.ndarray) -> np.ndarray:
  """The shift (0-255 pixel units) that ``src`` adds to every pixel of an image drawn with these alphas."""
  return np.asarray(src._lighting_shift(np.asarray(alpha, np.float32)), np.float64)


@pytest.fixture(scope="module")
def flat_colour_set(tmp_path_factory):
  """A prepared set of flat-colour images whose colours are drawn from a known, strongly anisotropic covariance;
  returns (prepared folder, the RGB covariance of its training pixels on [0, 1], computed here by numpy)."""
  rng = np.random.default_rng(0)
  # Not symmetric under any transposition of its eigenvectors: a large R-B direction, a small G one.
  basis = np.linalg.qr(np.array([[1.0, 0.2, -0.9], [0.1, 1.0, 0.3], [0.8, -0.4, 1.0]]))[0]
  cov = basis @ np.diag([40.0**2, 15.0**2, 4.0**2]) @ basis.T
  root = tmp_path_factory.mktemp("flat_src")
  colours = {"train": [], "val": []}
  for split, n in (("train", 40), ("val", 2)):
    for cls in ("a", "b"):
      (root / split / cls).mkdir(parents=True)
      for i in range(n):
        c = np.clip(np.round(rng.multivariate_normal([128, 128, 128], cov)), 0, 255).astype(np.uint8)
        colours[split].append(c)
        Image.fromarray(np.broadcast_to(c, (16, 16, 3)).copy()).save(root / split / cls / f"{i}.png")
  out = tmp_path_factory.mktemp("flat_prepared")
  prepare.prepare(str(root), str(out), image_size=16, examples_per_shard=64, num_workers=1)
  pixels = np.asarray(colours["train"], np.float64) / 255.0  # every pixel of an image has its colour
  return out, np.cov(pixels, rowvar=False, bias=True)


# ---- fancy-PCA lighting --------------------------------------------------------------------------------------------
def test_tfds_source_lighting_is_fb_resnet_torchs_brightness_first_pca(flat_colour_set):
  """The TFDS source, as built, holds ImageNet's eigenpairs in fb.resnet.torch's layout: orthonormal eigenvectors
  as columns, the largest one brightness (all one sign), an implied covariance with every channel pair positively
  correlated (R-G about +0.070), and the same shift as fb.resnet.torch's own Lighting for any alpha."""

  src = tfds_source("", str(flat_colour_set[0]), image_size=14, seed=0, shuffle_buffer=8)
  p, lam = src.eigenvectors.astype(np.float64), src.eigenvalues.astype(np.float64)
  np.testing.assert_allclose(p @ p.T, np.eye(3), atol=2e-4)  # 4 published digits
  assert lam[0] > lam[1] > lam[2] > 0
  top = p[:, 0]
  assert np.all(np.sign(top) == np.sign(top[0])) and np.allclose(np.abs(top), 3**-0.5, atol=0.02), top
  covariance = p @ np.diag(lam) @ p.T
  assert np.all(covariance > 0), covariance  # natural images: R, G and B rise and fall together
  assert abs(covariance[0, 1] - 0.0702) < 1e-3 and abs(covariance[0, 2] - 0.0634) < 1e-3, covariance
  alpha = np.random.default_rng(1).normal(0, 0.1, (16, 3))
  np.testing.assert_allclose(lighting_shift(src, alpha), 255.0 * fb_lighting(alpha), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(lighting_shift(src, np.eye(3)[:1]), 255 * 0.2175 * -np.array([[0.5675, 0.5808, 0.5836]]))


def test_prepared_source_lighting_follows_the_datas_own_covariance(flat_colour_set):
  """The eigen-decomposition prepare computes from the data is used in the right layout: on images of a known
  covariance S, alpha = e_k shifts along S's k-th eigenvector by its eigenvalue (numpy's eigh of S, not the code's),
  and the shifts of alpha ~ N(0, s^2) have covariance (255 s)^2 S^2."""
  folder, cov = flat_colour_set
  src = prepared_source(str(folder), image_size=14, seed=0, shuffle_buffer=8)
  vals, vecs = np.linalg.eigh(cov)
  vals, vecs = vals[::-1], vecs[:, ::-1]  # largest first, as the paper's alpha_1 is the first principal component
  np.testing.assert_allclose(src.eigenvalues, vals, rtol=1e-4)
  for k in range(3):
    shift = lighting_shift(src, np.eye(3)[k : k + 1])[0]
    sign = np.sign(shift @ vecs[:, k])  # an eigenvector's sign is arbitrary
    np.testing.assert_allclose(shift, sign * 255.0 * vals[k] * vecs[:, k], rtol=1e-3, atol=1e-3)
  m = lighting_shift(src, np.eye(3))  # row k: the shift of alpha = e_k; sum_k row_k row_k^T = 255^2 S^2
  np.testing.assert_allclose(m.T @ m, 255.0**2 * cov @ cov, rtol=1e-3)


# ---- channel means and deviations -----------------------------------------------------------------------------------
def test_tfds_source_mean_is_the_vgg_caffe_mean_in_rgb_order(flat_colour_set):

  src = tfds_source("", str(flat_colour_set[0]), image_size=14, seed=0, shuffle_buffer=8)
  caffe_bgr = (103.939, 116.779, 123.68)  # the VGG ILSVRC-2014 models' published mean, B, G, R
  np.testing.assert_allclose(src.mean_image, np.broadcast_to(caffe_bgr[::-1], src.mean_image.shape), atol=0.01)


def test_torchvision_normalisation_is_torchvisions_in_rgb_order():
  """(x / 255 - mean) / std per channel, R, G, B, with torchvision's published mean and std: a pixel at 255 * mean
  normalises to 0 and one a deviation above to 1, channel by channel."""
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # transforms/_presets.py
  np.testing.assert_allclose(augment.torchvision_normalize(255.0 * mean[None]), 0.0, atol=1e-6)
  np.testing.assert_allclose(augment.torchvision_normalize(255.0 * (mean + std * np.eye(3))), np.eye(3), atol=1e-5)
  try:
    from torchvision.models import AlexNet_Weights
  except ImportError:
    return  # torchvision is not a dependency; where it is installed, compare with the weights' own transforms
  transforms = AlexNet_Weights.IMAGENET1K_V1.transforms()
  np.testing.assert_allclose(augment.TORCHVISION_MEAN, transforms.mean)
  np.testing.assert_allclose(augment.TORCHVISION_STD, transforms.std)
  from alexnet_jax import weights

  assert AlexNet_Weights.IMAGENET1K_V1.url == weights.TORCHVISION_URL


# ---- ImageNet's class order and validation labels -------------------------------------------------------------------
def test_imagenet_class_order_and_validation_labels_are_ilsvrc2012s():
  """The files prepare reads the official tars with (shipped by tensorflow-datasets): 1,000 synsets in ILSVRC2012's
  standard order (sorted: the index torchvision's and Caffe's ImageNet models predict), and the 50,000 validation
  labels in image-number order."""
  with open(prepare._tfds_imagenet_file("labels.txt")) as f:
    classes = [line.strip() for line in f if line.strip()]
  assert len(classes) == len(set(classes)) == 1000 and classes == sorted(classes)
  assert (classes[0], classes[1], classes[-1]) == ("n01440764", "n01443537", "n15075141")
  assert classes.index("n01751748") == 65  # sea snake: torchvision's class 65
  with open(prepare._tfds_imagenet_file("validation_labels.txt")) as f:
    val = [line.strip() for line in f if line.strip()]
  assert len(val) == 50_000 and set(val) == set(classes)
  assert val[:3] == ["n01751748", "n09193705", "n02105855"]
