"""The training loop: sharding invariance, bitwise resume, checkpoints, and errors a user can act on."""

import itertools
import logging
import os
import pathlib

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint, config_lib, parallel, steps, train
from alexnet_jax.data import sources
from tests.support import ROOT
from tests.support.tiny import tiny_config


def first_steps(config, devices, n=2):
  """Losses of n train steps on the given devices (data parallel over all of them), the states before and after
  each step (host copies) and the batches they trained on."""
  mesh = parallel.create_mesh(1, devices)
  source = sources.create_source(config)
  graphdef, init, tx, _, shardings = train.plan_state(config, mesh)
  state = jax.jit(init, out_shardings=shardings)()
  step = jax.jit(
    steps.make_train_step(graphdef, tx, train.make_lr_schedule(config, 10, 10), source.preprocess),
    in_shardings=(shardings, parallel.batch_sharding(mesh)),
    out_shardings=(shardings, parallel.replicated(mesh)),
  )
  losses, states, batches = [], [jax.device_get(state)], []
  for batch in itertools.islice(source.train_batches(0, config.batch_size), n):
    state, out = step(state, parallel.to_global(batch, parallel.batch_sharding(mesh)))
    losses.append(float(out["loss"].mean()))
    states.append(jax.device_get(state))
    batches.append(batch)
  return losses, states, batches


def paper_sgd_by_hand(config, states, batches):
  """The parameters after each step by Sec. 5's rule, in float64 from the state before it: with eps = 0.01,
  v <- 0.9 v - 0.0005 eps w - eps dL/dw; w <- w + v (v = 0 at first). The gradient is the softmax cross-entropy of
  the step's batch, through the step's dropout masks (the run's key folded with the step number)."""
  from flax import nnx

  graphdef = train.plan_state(config, parallel.create_mesh(1, jax.devices()[:1])).graphdef
  preprocess = sources.create_source(config).preprocess

  @jax.jit
  def grad(params, images, labels, rng):
    def loss(params):
      log_p = jax.nn.log_softmax(nnx.merge(graphdef, params)(images, dropout_rng=rng))
      return -log_p[np.arange(len(labels)), labels].mean()

    return jax.grad(loss)(params)

  velocity, expected = None, []
  for t, (state, batch) in enumerate(zip(states, batches, strict=True)):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), t)
    g = jax.device_get(grad(state["params"], preprocess(batch), batch["label"], rng))
    w = jax.tree.map(lambda x: np.asarray(x, np.float64), state["params"])
    v = jax.tree.map(lambda w, g: -0.0005 * 0.01 * w - 0.01 * np.asarray(g, np.float64), w, g)
    if velocity is not None:
      v = jax.tree.map(lambda v, old: 0.9 * old + v, v, velocity)
    velocity = v
    expected.append(jax.tree.map(lambda w, v: w + v, w, v))
  return expected


def test_eight_devices_give_the_same_loss_as_one():
  config = tiny_config()
  losses8, states8, _ = first_steps(config, jax.devices())
  losses1, states1, batches = first_steps(config, jax.devices()[:1])
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(states8[-1]["params"]), jax.tree.leaves(states1[-1]["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Each step applied the paper's update, weight decay and momentum (from the second step on) included: to float32
  # rounding of the layer's largest weights and of its gradient (the decay term alone, 5e-6 w, is ~20x that).
  expected = paper_sgd_by_hand(config, states1[:-1], batches)
  for t in range(2):
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(expected[t])]
    before, after = jax.tree.leaves(states1[t]["params"]), jax.tree.leaves(states1[t + 1]["params"])
    for path, w, w_new, want in zip(paths, before, after, jax.tree.leaves(expected[t]), strict=True):
      update, want_update = w_new.astype(np.float64) - w, want - w
      tol = 4 * np.spacing(np.abs(w_new).max()) + 1e-5 * np.abs(want_update).max()
      assert np.abs(update - want_update).max() <= tol, (t + 1, path, np.abs(update - want_update).max(), tol)


def assert_states_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(jax.device_get(a))
  leaves_b, tree_b = jax.tree.flatten(jax.device_get(b))
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def test_resume_is_bitwise_identical_to_an_unbroken_run(tmp_path):
  # Evaluations every 2 steps with patience 1 feed the plateau rule, so its state must survive the resume too.
  def config(n):
    return tiny_config(num_train_steps=n, eval_every_steps=2, checkpoint_every_steps=100, **{"schedule.patience": 1})

  straight = train.train_and_evaluate(config(6), tmp_path / "straight")
  first = train.train_and_evaluate(config(3), tmp_path / "resumed")
  assert first["step"] == 3 and first["start_step"] == 0
  resumed = train.train_and_evaluate(config(6), tmp_path / "resumed")
  assert straight["step"] == resumed["step"] == 6 and resumed["start_step"] == 3
  again = train.train_and_evaluate(config(6), tmp_path / "resumed")  # nothing left to train: said, not redone
  assert again == {"step": 6, "start_step": 6, "status": "completed"}
  step_a, state_a, _ = train.load_checkpoint(config(6), tmp_path / "straight")
  step_b, state_b, _ = train.load_checkpoint(config(6), tmp_path / "resumed")
  assert step_a == step_b == 6 and int(state_a["step"]) == 6
  assert_states_equal(state_a, state_b)
  assert straight["eval_top1_error"] == resumed["eval_top1_error"]
  lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
  assert any('"step": 4' in line and "train_loss" in line for line in lines)


def test_resume_with_a_changed_config_is_refused(tmp_path):
  train.train_and_evaluate(tiny_config(num_train_steps=2), tmp_path)
  changed = tiny_config(num_train_steps=3, **{"optimizer.learning_rate": 0.02, "model.dropout_rate": 0.3})
  with pytest.raises(train.ConfigChangedError) as e:
    train.train_and_evaluate(changed, tmp_path)
  assert "optimizer.learning_rate: 0.01 -> 0.02" in str(e.value) and "model.dropout_rate" in str(e.value)
  assert "--allow_config_change" in str(e.value)
  assert checkpoint.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=3).all_steps() == [2]  # untouched
  result = train.train_and_evaluate(changed, tmp_path, allow_config_change=True)
  assert result["step"] == 3


def test_checkpoint_from_eight_devices_restores_on_one(tmp_path):
  config = tiny_config(num_train_steps=2)
  train.train_and_evaluate(config, tmp_path)
  _, state8, _ = train.load_checkpoint(config, tmp_path)
  one = parallel.create_mesh(1, jax.devices()[:1])
  _, state1, _ = train.load_checkpoint(config, tmp_path, mesh=one)
  assert state1["params"]["conv1"]["kernel"].sharding.device_set == {jax.devices()[0]}
  assert len(state8["params"]["conv1"]["kernel"].sharding.device_set) == 8
  assert_states_equal(state8, state1)


def test_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(num_train_steps=5, checkpoint_every_steps=1, **{"optimizer.learning_rate": 1e30})
  with pytest.raises(train.NonFiniteError, match="last good checkpoint \\(step 1\\) is intact") as e:
    train.train_and_evaluate(config, tmp_path)
  assert "--config.optimizer.learning_rate=1e+29 --allow_config_change" in str(e.value)  # advice one can follow
  assert checkpoint.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=3).all_steps() == [1]
  _, state, _ = train.load_checkpoint(config, tmp_path)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state["params"])))


def test_a_failing_final_evaluation_keeps_the_final_checkpoint(tmp_path, monkeypatch):
  """A bad validation shard must not cost the steps trained: the state is saved before the error goes up, so a rerun
  (after re-preparing the data) does not train them again."""
  from alexnet_jax.data import synthetic

  def broken(self, global_batch):
    raise OSError("corrupted record at 76661")
    yield

  monkeypatch.setattr(synthetic.SyntheticSource, "eval_batches", broken)
  config = tiny_config(num_train_steps=3, checkpoint_every_steps=2)
  with pytest.raises(OSError, match="corrupted record"):
    train.train_and_evaluate(config, tmp_path)
  assert checkpoint.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=3).all_steps() == [2, 3]


def test_corrupt_checkpoint_falls_back_to_the_previous_step(tmp_path, caplog):
  train.train_and_evaluate(tiny_config(num_train_steps=4), tmp_path)
  ckpt_dir = tmp_path / "checkpoints"
  assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == [2, 4]
  for f in (ckpt_dir / "4" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(tiny_config(num_train_steps=6), tmp_path)
  assert "step 4" in caplog.text and "cannot be read" in caplog.text
  assert result["step"] == 6
  assert [p.name.split(".")[0] for p in (tmp_path / "checkpoints_corrupt").iterdir()] == ["4"]
  steps_now = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  assert steps_now == [2, 4, 6]  # step 4 was trained again from 2 and saved cleanly


def test_evaluation_counts_every_example_exactly_once():
  config = tiny_config()
  config.data.num_eval_examples = 21  # 21 = 16 + 5: padding on the second batch, 8 devices
  mesh = parallel.create_mesh(1)
  source = sources.create_source(config)
  graphdef, init, _, _, shardings = train.plan_state(config, mesh)
  params = steps.model_variables(jax.jit(init, out_shardings=shardings)())
  eval_step = train.jit_eval_step(graphdef, source.preprocess, mesh, steps.model_variables(shardings))
  result = train.evaluate(eval_step, params, source.eval_batches(16), parallel.batch_sharding(mesh))
  assert result["num_examples"] == 21
  # The same numbers computed plainly, one example at a time, with no padding.
  plain = steps.make_eval_step(graphdef, source.preprocess)
  per_example = []
  for batch in source.eval_batches(16):
    out = jax.device_get(plain(params, batch))
    per_example += [out["top5_error"][i] for i in range(len(out["mask"])) if out["mask"][i]]
  assert len(per_example) == 21
  assert result["top5_error"] == pytest.approx(float(np.mean(per_example)), abs=1e-6)


def test_saved_config_round_trips():
  from alexnet_jax import evaluate

  config = tiny_config(**{"schedule.step_epochs": (3.0, 7.0), "model.dtype": "bfloat16"})
  back = evaluate.config_from_json(config_lib.to_json(config))
  assert back.to_dict() == config.to_dict() and isinstance(back.schedule.step_epochs, tuple)
  with pytest.raises(ValueError, match="does not know"):
    evaluate.config_from_json({**config_lib.to_json(config), "nonsense": 1})


# ---- Bad input gets a clear error ---------------------------------------------------------------------------------
def test_unknown_config_key_lists_the_valid_ones():
  config = tiny_config()
  config.model.widht = 0.5
  with pytest.raises(ValueError, match=r"model\.widht \(did you mean model\.width\?\).*Valid keys: .*batch_size"):
    config_lib.validate(config)


@pytest.mark.parametrize("key,value", [("model.name", "vgg"), ("model.dtype", "float64"), ("data.source", "x")])
def test_bad_config_values_name_the_choices(key, value):
  with pytest.raises(ValueError, match="is not one of"):
    config_lib.validate(tiny_config(**{key: value}))


@pytest.mark.parametrize(
  "key,value,match",
  [
    ("mesh.model", 4, r"lrn_per_column .* mesh\.model=1 or 2"),
    ("optimizer.bias_lr_multiplier", 0.0, "bias_lr_multiplier must be positive"),
    ("schedule.warmup_epochs", -1.0, "warmup_epochs must be >= 0"),
  ],
)
def test_the_authors_settings_refuse_what_they_cannot_do(key, value, match):
  config = tiny_config(**{"model.lrn_per_column": True, key: value})
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_paper_config_is_the_authors_code_and_its_text_variant_the_print():
  """configs/paper.py follows cuda-convnet2's layer files where they differ from the text (docs/DEVIATIONS.md);
  configs/paper.py:text is the base config, the recipe as printed; both say "at chance" by step 500."""
  paper = os.path.join(ROOT, "configs", "paper.py")
  authors, text = config_lib.load_config_file(paper), config_lib.load_config_file(paper + ":text")
  base, printed = config_lib.flatten(config_lib.base_config()), config_lib.flatten(text)
  assert {k for k in base if base[k] != printed[k]} == {"health.max_steps_at_chance"}  # the docstring's promise
  assert authors.health.max_steps_at_chance == printed["health.max_steps_at_chance"] == 500
  config_lib.validate(authors)
  assert sorted(config_lib.changed_keys(config_lib.to_json(text), config_lib.to_json(authors))) == [
    "model.init",
    "model.lrn_alpha_over_n",
    "model.lrn_per_column",
    "optimizer.bias_lr_multiplier",
    "optimizer.decay_biases",
  ]
  assert authors.model.init == "cuda_convnet2" and authors.optimizer.bias_lr_multiplier == 2.0
  with pytest.raises(ValueError, match="the variants are authors, text"):
    config_lib.load_config_file(paper + ":txt")


@pytest.mark.parametrize(
  "variant,batch,peak,epochs,model,scope",
  [  # the LARS paper's AlexNet-BN peak rates (8K 14, 16K 23, 32K 22; 100 epochs), Jia et al.'s 64K in 95 epochs
    ("8k", 8192, 14.0, 100.0, "alexnet_bn", "all"),
    ("16k", 16384, 23.0, 100.0, "alexnet_bn", "all"),
    ("32k", 32768, 22.0, 100.0, "alexnet_bn", "all"),
    ("64k", 65536, 22.0, 95.0, "alexnet_bn", "kernels"),
    ("paper_net", 8192, 14.0, 100.0, "paper", "all"),
  ],
)
def test_large_batch_variants_are_the_literatures_recipes(variant, batch, peak, epochs, model, scope):
  path = os.path.join(ROOT, "configs", "large_batch.py")
  config = config_lib.load_config_file(f"{path}:{variant}")
  config_lib.validate(config)
  assert (config.batch_size, config.optimizer.learning_rate, config.num_epochs) == (batch, peak, epochs)
  assert (config.model.name, config.optimizer.lars_scope, config.optimizer.name) == (model, scope, "lars")
  assert (config.optimizer.lars_eta, config.optimizer.momentum, config.optimizer.weight_decay) == (0.001, 0.9, 5e-4)
  assert (config.schedule.name, config.schedule.power, config.model.dtype) == ("poly", 2.0, "bfloat16")
  assert config.optimizer.decay_biases == (scope == "all")
  # the docstring's table says the same
  assert f"| `{variant}` | {batch:,} | {peak:g} |" in pathlib.Path(path).read_text()
  if variant == "8k":
    assert config_lib.flatten(config_lib.load_config_file(path)) == config_lib.flatten(config)  # the default
  with pytest.raises(ValueError, match="the variants are 8k, 16k, 32k, 64k, paper_net"):
    config_lib.load_config_file(path + ":128k")


def test_batch_that_does_not_divide_the_devices(tmp_path):
  with pytest.raises(
    ValueError, match=r"batch_size=12 is not a multiple of the 8 data-parallel devices.*e\.g\. 8 or 16"
  ):
    train.train_and_evaluate(tiny_config(batch_size=12), tmp_path)
  with pytest.raises(ValueError, match=r"batch_size=7 .* use a multiple of 8, e\.g\. 8\.$"):  # not "e.g. 8 or 8"
    train.train_and_evaluate(tiny_config(batch_size=7), tmp_path)


def test_model_axis_that_does_not_divide_the_devices(tmp_path):
  with pytest.raises(ValueError, match=r"mesh\.model=3 does not divide the 8 devices"):
    train.train_and_evaluate(tiny_config(**{"mesh.model": 3}), tmp_path)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="is not writable"):
    train.train_and_evaluate(tiny_config(), blocker / "run")


def test_workdir_outputs(tmp_path):
  train.train_and_evaluate(tiny_config(num_train_steps=2), tmp_path)
  import json

  manifest = json.loads((tmp_path / "run.json").read_text())
  assert manifest["num_devices"] == 8 and manifest["process_count"] == 1
  assert manifest["config"]["model"]["width"] == 0.125 and manifest["num_params"] > 0
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train_loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2]
  assert {"train_top1_error", "train_top5_error", "learning_rate", "images_per_sec"} <= set(train_rows[0])
  eval_rows = [r for r in rows if "eval_top1_error" in r]
  assert eval_rows[-1]["step"] == 2 and eval_rows[-1]["eval_num_examples"] == 20
  assert any(pathlib.Path(tmp_path, "tensorboard").iterdir())
  assert os.path.isdir(tmp_path / "checkpoints" / "2")


def test_evaluate_cli_function_single_and_ensemble(tmp_path):
  """evaluate_workdirs: the eval JSON; a run ensembled with itself is itself; two runs average their softmax."""
  import json

  from flax import nnx

  from alexnet_jax import evaluate

  for name, seed in (("a", 0), ("b", 1)):
    train.train_and_evaluate(tiny_config(num_train_steps=2, seed=seed), tmp_path / name)
  single = evaluate.evaluate_workdirs([str(tmp_path / "a")], crops=1)
  saved = json.loads((tmp_path / "a" / "eval" / "step2_1crop.json").read_text())
  assert {k: saved[k] for k in ("step", "crops", "num_examples")} == {"step": 2, "crops": 1, "num_examples": 20}
  assert saved["top1_error"] == single["top1_error"]
  same = evaluate.evaluate_workdirs([str(tmp_path / "a"), str(tmp_path / "a")], crops=1)
  assert (same["top1_error"], same["top5_error"]) == (single["top1_error"], single["top5_error"])
  assert same["loss"] == pytest.approx(single["loss"], rel=1e-6)
  both = evaluate.evaluate_workdirs([str(tmp_path / "a"), str(tmp_path / "b")], crops=1)
  assert (tmp_path / "a" / "eval" / "ensemble2_1crop.json").exists()
  # The same number by hand: average the two models' softmax over the 20 examples.
  config = tiny_config(num_train_steps=2)
  source = sources.create_source(config)
  probs, labels = [], None
  for name, seed in (("a", 0), ("b", 1)):
    _, state, graphdef = train.load_checkpoint(tiny_config(num_train_steps=2, seed=seed), tmp_path / name)
    model = nnx.merge(graphdef, jax.device_get(state["params"]))
    batches = list(source.eval_batches(16))
    p = np.concatenate([np.asarray(jax.nn.softmax(model(source.preprocess(b)))) for b in batches])
    mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
    probs.append(p[mask])
    labels = np.concatenate([b["label"] for b in batches])[mask]
  mean = (probs[0] + probs[1]) / 2
  expected_loss = float(np.mean(-np.log(mean[np.arange(20), labels])))
  assert both["loss"] == pytest.approx(expected_loss, rel=1e-4)
  assert both["top1_error"] == pytest.approx(float(np.mean(mean.argmax(1) != labels)))


def test_the_learning_rate_after_a_plateau_drop_is_divided_by_the_factor(tmp_path):
  """Sec. 5's rule end to end: an evaluation every 2 steps that never improves enough (min_delta 2 > any error) with
  patience 1 drops the rate after step 4's evaluation; metrics.jsonl's learning_rate is 0.01 for steps 1-4, then
  0.01 * 0.1 for the steps trained after the drop (5, 6)."""
  import json

  overrides = {"schedule.name": "paper", "schedule.patience": 1, "schedule.factor": 0.1, "schedule.min_delta": 2.0}
  config = tiny_config(num_train_steps=6, eval_every_steps=2, checkpoint_every_steps=6, **overrides)
  config.optimizer.learning_rate = 0.01
  config.schedule.warmup_epochs = 0.0
  train.train_and_evaluate(config, tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  rates = {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}
  assert sorted(rates) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([rates[s] for s in range(1, 7)], [0.01] * 4 + [0.001] * 2, rtol=1e-6)


def test_metrics_rows_reach_the_disk_at_once(tmp_path):
  """metrics.jsonl is flushed at every write: a crash cannot lose rows whose checkpoints exist."""
  from alexnet_jax import metrics

  writer = metrics.JsonlWriter(str(tmp_path / "metrics.jsonl"))
  writer.write_scalars(3, {"train_loss": 1.5})
  assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 3, "train_loss": 1.5}\n'  # before close
  writer.close()


def test_evaluate_never_creates_a_mistyped_workdir(tmp_path):
  from alexnet_jax import evaluate

  with pytest.raises(ValueError, match="holds no checkpoints/ folder"):
    evaluate.evaluate_workdirs([str(tmp_path / "typo")], crops=1)
  assert not (tmp_path / "typo").exists()


def test_fingerprints_are_layout_independent_and_see_one_flipped_bit():
  x = np.random.default_rng(0).normal(size=(64, 24)).astype(np.float32)
  mesh = parallel.create_mesh(2)  # 4 x 2: rows over 'data'... any layout gives the same number
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "model")))
  assert checkpoint.fingerprints({"x": sharded}) == checkpoint.fingerprints({"x": jax.device_put(x, jax.devices()[0])})
  flipped = x.view(np.uint32).copy()
  flipped[37, 5] ^= 1 << 31  # one bit, the sign of one weight
  assert checkpoint.fingerprints({"x": flipped.view(np.float32)}) != checkpoint.fingerprints({"x": x})
  swapped = x.copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # the same values in other places
  assert checkpoint.fingerprints({"x": swapped}) != checkpoint.fingerprints({"x": x})


def overwrite_inside_state_data(step_dir):
  """64 bytes in the middle of the largest array data file of a checkpoint, changed (as bit rot or a bad copy
  would): damage that the reader does not trip on."""
  data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  target = max(data_files, key=lambda p: p.stat().st_size)
  data = bytearray(target.read_bytes())
  middle = len(data) // 2
  data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
  target.write_bytes(bytes(data))


def test_a_checkpoint_with_changed_bytes_is_never_restored(tmp_path, caplog):
  from alexnet_jax import evaluate

  train.train_and_evaluate(tiny_config(num_train_steps=4), tmp_path)
  overwrite_inside_state_data(tmp_path / "checkpoints" / "4")
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(tiny_config(num_train_steps=6), tmp_path)  # resumes from 2, not from 4
  assert "Checkpoint at step 4" in caplog.text and "differ from what was saved" in caplog.text
  assert result["step"] == 6 and [p.name.split(".")[0] for p in (tmp_path / "checkpoints_corrupt").iterdir()] == ["4"]
  caplog.clear()
  overwrite_inside_state_data(tmp_path / "checkpoints" / "6")
  with caplog.at_level(logging.WARNING):
    out = evaluate.evaluate_workdirs([str(tmp_path)], crops=1)
  assert out["step"] == 4 and "Checkpoint at step 6" in caplog.text and "differ from what was saved" in caplog.text


# ---- float16's dynamic loss scale and gradient accumulation in the trainer ----------------------------------------
def test_float16_overflows_lower_the_scale_without_stopping_and_checkpoints_carry_it(tmp_path, monkeypatch):
  """A loss scale of 2^100 overflows every step: the run goes on (each update skipped, the scale halved, logged as
  loss_scale and train_overflow), and its checkpoints hold the scale. float32 states have no loss_scale at all."""
  import json

  from alexnet_jax import loss_scale

  assert "loss_scale" not in train.plan_state(tiny_config(), parallel.create_mesh(1)).abstract
  monkeypatch.setattr(loss_scale, "for_dtype", lambda dtype: loss_scale.DynamicLossScale(initial=2.0**100))
  config = tiny_config(num_train_steps=3, checkpoint_every_steps=3, **{"model.dtype": "float16"})
  assert train.train_and_evaluate(config, tmp_path)["step"] == 3
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train_loss" in r]
  assert [(r["step"], r["loss_scale"], r["train_overflow"]) for r in train_rows] == [
    (1, 2.0**100, 1.0),
    (2, 2.0**99, 1.0),
    (3, 2.0**98, 1.0),
  ]
  _, state, _ = train.load_checkpoint(config, tmp_path)
  assert float(state["loss_scale"]["scale"]) == 2.0**97 and int(state["step"]) == 3
  fresh = jax.device_get(jax.jit(train.plan_state(config, parallel.create_mesh(1)).init)())
  assert_states_equal(state["params"], fresh["params"])  # every update was skipped


def test_float16_divergence_still_stops(tmp_path):
  """A rate of 1e30 blows the float32 master weights up: float16's forward pass overflows, the loss is not finite,
  and that is a divergence (not a loss-scale overflow): the run stops as in float32."""
  config = tiny_config(num_train_steps=5, checkpoint_every_steps=1, **{"optimizer.learning_rate": 1e30})
  config.model.dtype = "float16"
  with pytest.raises(train.NonFiniteError, match="float16: a non-finite loss") as e:
    train.train_and_evaluate(config, tmp_path)
  assert "last good checkpoint (step 1) is intact" in str(e.value)


def test_micro_batches_that_do_not_split_over_the_devices_are_refused(tmp_path):
  config = tiny_config(**{"optimizer.accumulation_steps": 4})  # 16 = 4 micro-batches of 4, over 8 devices
  with pytest.raises(ValueError, match=r"accumulation_steps=4 micro-batches over the 8 data-parallel devices.*4 x 8"):
    train.train_and_evaluate(config, tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# alexnet_bn with LARS: the large-batch recipe's pieces.
# ---------------------------------------------------------------------------------------------------------------
def bn_lars_config(**overrides):
  return tiny_config(
    **{
      "model.name": "alexnet_bn",
      "model.dropout_rate": 0.0,
      "optimizer.name": "lars",
      "optimizer.learning_rate": 10.0,
      "schedule.name": "poly",
      **overrides,
    }
  )


def test_alexnet_bn_with_lars_on_eight_devices_equals_one_device():
  """The whole train step (global batch statistics, LARS's per-array norms) on 8 data-parallel devices and on one:
  the same losses, parameters and running statistics after two steps."""
  config = bn_lars_config()
  losses8, states8, _ = first_steps(config, jax.devices())
  losses1, states1, _ = first_steps(config, jax.devices()[:1])
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  assert float(states1[-1]["batch_stats"]["conv1"]["average_weight"]) == pytest.approx(1.999)
  for part in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(states8[-1][part]), jax.tree.leaves(states1[-1][part]), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_alexnet_bn_under_accumulation_updates_running_statistics_per_micro_batch_and_8_devices_equal_1():
  """Batch norm with 2 micro-batches: each micro-batch normalised with its own statistics and the running averages
  updated once per micro-batch (after one step: weight 1 + 0.999, as two plain steps give), the same on 8 devices
  as on 1 (each micro-batch is spread over the devices, its statistics over all of it)."""
  config = bn_lars_config(**{"optimizer.accumulation_steps": 2})

  def one_step(devices):
    mesh = parallel.create_mesh(1, devices)
    source = sources.create_source(config)
    plan = train.plan_state(config, mesh)
    state = jax.jit(plan.init, out_shardings=plan.shardings)()
    step = jax.jit(
      steps.make_train_step(
        plan.graphdef, plan.tx, train.make_lr_schedule(config, 10, 10), source.preprocess, accumulation_steps=2
      ),
      in_shardings=(plan.shardings, parallel.batch_sharding(mesh)),
    )
    batch = next(source.train_batches(0, config.batch_size))
    state, out = step(state, parallel.to_global(batch, parallel.batch_sharding(mesh)))
    return jax.device_get(state), jax.device_get(out["loss"])

  state8, loss8 = one_step(jax.devices())
  state1, loss1 = one_step(jax.devices()[:1])
  assert float(state1["batch_stats"]["conv1"]["average_weight"]) == pytest.approx(1.999)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  for part in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(state8[part]), jax.tree.leaves(state1[part]), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_few_alexnet_bn_lars_steps_lower_the_loss():
  """Eight LARS steps (lr 10, eta 0.001) of the tiny AlexNet-BN on one synthetic batch: the loss leaves chance
  (measured: 2.303 -> 2.19)."""
  config = bn_lars_config(**{"schedule.name": "constant"})
  mesh = parallel.create_mesh(1, jax.devices()[:1])
  source = sources.create_source(config)
  plan = train.plan_state(config, mesh)
  state = jax.jit(plan.init)()
  step = jax.jit(
    steps.make_train_step(plan.graphdef, plan.tx, train.make_lr_schedule(config, 10, 10), source.preprocess)
  )
  batch = next(source.train_batches(0, config.batch_size))
  losses = []
  for _ in range(8):
    state, out = step(state, batch)
    losses.append(float(out["loss"].mean()))
  assert losses[0] == pytest.approx(np.log(10), abs=0.01)
  assert losses[-1] < losses[0] - 0.05, losses


def test_alexnet_bn_checkpoint_carries_its_running_statistics_to_evaluation(tmp_path):
  """Train 2 steps, restore: the running statistics are in the checkpoint (2 updates: weight 1 + 0.999), and
  evaluate_workdirs and the Predictor evaluate with them (the same loss as the eval step on the restored state)."""
  from alexnet_jax import evaluate
  from alexnet_jax.inference import Predictor

  config = bn_lars_config(num_train_steps=2)
  result = train.train_and_evaluate(config, tmp_path)
  _, state, graphdef = train.load_checkpoint(config, tmp_path)
  stats = jax.device_get(state["batch_stats"])
  assert set(stats) == {f"conv{i}" for i in range(1, 6)}
  assert float(stats["conv3"]["average_weight"]) == pytest.approx(1.999)
  assert not np.allclose(stats["conv3"]["mean"], 0.0) and not np.allclose(stats["conv3"]["var"], 1.0)
  evaluated = evaluate.evaluate_workdirs([str(tmp_path)], crops=1)
  assert evaluated["loss"] == pytest.approx(result["eval_loss"], rel=1e-5)
  predictor = Predictor.from_workdir(str(tmp_path))
  for a, b in zip(jax.tree.leaves(predictor.batch_stats), jax.tree.leaves(stats), strict=True):
    np.testing.assert_array_equal(a, b)
  source = sources.create_source(config)
  batch = next(source.eval_batches(16))
  plain = steps.make_eval_step(graphdef, source.preprocess)
  without = steps.make_eval_step(graphdef, source.preprocess)(
    {"params": state["params"], "batch_stats": jax.tree.map(np.zeros_like, stats)}, batch
  )
  assert np.abs(np.asarray(plain(steps.model_variables(state), batch)["loss"]) - np.asarray(without["loss"])).max() > 0
