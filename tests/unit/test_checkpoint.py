"""Restoring tells damage from everything else: only proven damage may cost a checkpoint (issue 20, item 1).

A resume with a changed model shape used to read every good step as "damaged", move all of them to
checkpoints_corrupt/ and start again from step 0 with exit 0. Here each kind of restore failure is caused for real
(a changed config, changed shapes, a key the code no longer has) or injected at orbax's reader (permission, memory,
an unavailable service, an unknown error, a read error once or twice), and the checkpoints are checked afterwards.
"""

import logging
import shutil

import jax
import orbax.checkpoint as ocp
import pytest

from alexnet_jax import checkpoint, evaluate, parallel, train
from tests.support import tree_digest
from tests.support.tiny import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One tiny run with checkpoints at steps 2 and 4, copied afresh for each test."""
  workdir = tmp_path_factory.mktemp("trained")
  train.train_and_evaluate(tiny_config(num_train_steps=4), workdir)
  return workdir


@pytest.fixture
def run(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


def target(config):
  plan = train.plan_state(config, parallel.create_mesh(1))
  return checkpoint.abstract_with_shardings(plan.abstract, plan.shardings)


def test_a_changed_config_is_refused_before_any_array_is_read_and_nothing_moves(run):
  before = tree_digest(run / "checkpoints")
  wider = tiny_config(num_train_steps=6, **{"model.width": 0.25})
  with pytest.raises(train.ConfigChangedError, match=r"model\.width: 0\.125 -> 0\.25"):
    train.train_and_evaluate(wider, run)
  assert tree_digest(run / "checkpoints") == before and not (run / "checkpoints_corrupt").exists()
  # Allowed, the config passes, but the arrays cannot take the new shapes: refused with the shapes, nothing moved.
  with pytest.raises(checkpoint.CheckpointMismatchError) as e:
    train.train_and_evaluate(wider, run, allow_config_change=True)
  assert "params/conv1/kernel: saved (11, 11, 3, 12) float32, now (11, 11, 3, 24) float32" in str(e.value)
  assert tree_digest(run / "checkpoints") == before and not (run / "checkpoints_corrupt").exists()
  assert train.train_and_evaluate(tiny_config(num_train_steps=6), run)["step"] == 6  # the run goes on as it was


@pytest.mark.parametrize(
  "override, expected",
  [
    ({"model.num_classes": 12}, "params/fc8/kernel: saved (512, 10) float32, now (512, 12) float32"),
    ({"model.name": "owt"}, "params/conv2/kernel: saved (5, 5, 6, 32) float32"),  # one group, not two
  ],
)
def test_other_shapes_and_arrays_are_a_mismatch_not_damage(run, override, expected):
  before = tree_digest(run / "checkpoints")
  with pytest.raises(checkpoint.CheckpointMismatchError, match="nothing was moved") as e:
    train.train_and_evaluate(tiny_config(num_train_steps=6, **override), run, allow_config_change=True)
  assert expected in str(e.value)
  assert tree_digest(run / "checkpoints") == before and not (run / "checkpoints_corrupt").exists()


def test_mismatches_lists_every_kind_of_difference():
  f32 = jax.ShapeDtypeStruct((3,), "float32")
  saved = {"params": {"a": f32, "gone": f32}, "step": jax.ShapeDtypeStruct((), "int32")}
  wanted = {"params": {"a": jax.ShapeDtypeStruct((3,), "bfloat16"), "new": f32}, "step": saved["step"]}
  assert checkpoint.mismatches(saved, wanted) == [
    "params/a: saved (3,) float32, now (3,) bfloat16",
    "params/gone is saved but this code has no such array",
    "params/new is not in the checkpoint",
  ]
  assert checkpoint.mismatches(saved, saved) == []


def fail_reads(monkeypatch, error, *, times, steps=(4,)):
  """orbax's reads of the arrays of ``steps`` raise ``error`` the first ``times`` times; returns the call count."""
  calls = {"n": 0}
  real = ocp.CheckpointManager.restore

  def restore(self, step, *a, args=None, **k):
    if step in steps and args is not None and "state" in args and calls["n"] < times:
      calls["n"] += 1
      raise error
    return real(self, step, *a, args=args, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
  return calls


NOT_DAMAGE = [
  (PermissionError(13, "Permission denied", "d/manifest.ocdbt"), False),
  (ValueError("PERMISSION_DENIED: gs://bucket/run/checkpoints/4: 403 Forbidden"), False),
  (MemoryError(), False),
  (ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.00GiB"), False),
  (ValueError("UNAVAILABLE: Connection reset by peer [source locations='tensorstore/kvstore/gcs_http']"), True),
  (TimeoutError("timed out"), True),
  (RuntimeError("an error nobody has classified"), False),
]


@pytest.mark.parametrize(
  "error, transient", NOT_DAMAGE, ids=lambda x: type(x).__name__ if isinstance(x, Exception) else str(x)
)
def test_a_failure_that_is_not_damage_stops_and_moves_nothing(run, monkeypatch, error, transient):
  before = tree_digest(run / "checkpoints")
  fail_reads(monkeypatch, error, times=10**9)
  with pytest.raises(checkpoint.CheckpointReadError, match="not evidence of damage") as e:
    train.train_and_evaluate(tiny_config(num_train_steps=6), run)
  assert e.value.transient is transient
  assert tree_digest(run / "checkpoints") == before and not (run / "checkpoints_corrupt").exists()
  with pytest.raises(checkpoint.CheckpointReadError):  # evaluate too
    evaluate.evaluate_workdirs([str(run)], crops=1)
  assert tree_digest(run / "checkpoints") == before and not (run / "checkpoints_corrupt").exists()


def test_a_read_error_once_is_retried_and_nothing_moves(run, monkeypatch, caplog):
  calls = fail_reads(monkeypatch, ValueError('DATA_LOSS: Error reading "d/1234": checksum mismatch'), times=1)
  with caplog.at_level(logging.WARNING):
    step, _, _ = checkpoint.Checkpointer(str(run / "checkpoints"), max_to_keep=9).restore_latest(target(tiny_config()))
  assert calls["n"] == 1 and step == 4 and "trying once more" in caplog.text
  assert not (run / "checkpoints_corrupt").exists()


def test_a_read_error_that_repeats_is_damage_the_step_moves_aside(run, monkeypatch):
  fail_reads(monkeypatch, ValueError('DATA_LOSS: Error reading "d/1234": checksum mismatch'), times=2)
  ckpt = checkpoint.Checkpointer(str(run / "checkpoints"), max_to_keep=9)
  step, _, _ = ckpt.restore_latest(target(tiny_config()))
  assert step == 2 and [p.name.split(".")[0] for p in (run / "checkpoints_corrupt").iterdir()] == ["4"]
  ckpt.close()


def test_an_asked_for_damaged_step_is_reported_not_moved(run, monkeypatch):
  fail_reads(monkeypatch, ValueError('DATA_LOSS: Error reading "d/1234"'), times=10**9)
  with pytest.raises(checkpoint.CheckpointReadError, match=r"at step 4 .* is damaged"):
    train.load_checkpoint(tiny_config(), run, step=4)
  assert not (run / "checkpoints_corrupt").exists()


def _data_files(step_dir):
  return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def _truncate_data(step_dir, size):
  for p in _data_files(step_dir):
    p.write_bytes(p.read_bytes()[:size])


# Damage done to the files orbax really wrote, each a kind a disk, a copy or a sync tool leaves behind.
REAL_DAMAGE = {
  "array data truncated": lambda d: _truncate_data(d, 100),
  "array data emptied": lambda d: _truncate_data(d, 0),
  "array data files missing": lambda d: [p.unlink() for p in _data_files(d)],
  "state metadata garbage": lambda d: (d / "state" / "_METADATA").write_bytes(b"\x00garbage"),
  "state manifest truncated": lambda d: (d / "state" / "manifest.ocdbt").write_bytes(
    (d / "state" / "manifest.ocdbt").read_bytes()[:10]
  ),
  "config garbage": lambda d: next(p for p in (d / "config").rglob("*") if p.is_file()).write_bytes(b"{bad"),
}


@pytest.mark.parametrize("damage", sorted(REAL_DAMAGE))
def test_real_damage_moves_the_step_aside_and_the_previous_step_is_used(run, damage):
  """The reader's error for damaged bytes is often wrapped (orbax raises a bare Exception whose cause is
  tensorstore's OUT_OF_RANGE/NOT_FOUND): the judgement must look behind it, or a damaged step blocks every rerun."""
  REAL_DAMAGE[damage](run / "checkpoints" / "4")
  ckpt = checkpoint.Checkpointer(str(run / "checkpoints"), max_to_keep=9)
  try:
    step, _, _ = ckpt.restore_latest(target(tiny_config()))
  finally:
    ckpt.close()
  assert step == 2
  assert [p.name.split(".")[0] for p in (run / "checkpoints_corrupt").iterdir()] == ["4"]


def test_every_step_damaged_is_said_before_starting_again(run, caplog):
  for step in (2, 4):
    REAL_DAMAGE["array data truncated"](run / "checkpoints" / str(step))
  ckpt = checkpoint.Checkpointer(str(run / "checkpoints"), max_to_keep=9)
  with caplog.at_level(logging.WARNING):
    assert ckpt.restore_latest(target(tiny_config())) is None
  ckpt.close()
  assert "Every checkpoint in" in caplog.text and "steps 2, 4" in caplog.text


def test_the_judgement_looks_behind_a_wrapping_error():
  try:
    try:
      raise ValueError('OUT_OF_RANGE: Error reading "opt_state.velocity.conv1.kernel/0.0.0.0"')
    except ValueError as inner:
      raise Exception("Encountered error while reading array index") from inner
  except Exception as wrapped:
    kind, why = checkpoint._judge(wrapped)
  assert kind == "damage" and "OUT_OF_RANGE" in str(why)
  try:
    try:
      raise PermissionError(13, "Permission denied")
    except PermissionError as inner:
      raise ValueError('NOT_FOUND: Error reading "x"') from inner
  except ValueError as wrapped:
    assert checkpoint._judge(wrapped)[0] == "other"  # a reason not to move anything wins


def test_evaluate_on_a_read_only_workdir_still_gives_its_numbers(run, monkeypatch, caplog):
  from alexnet_jax import storage

  def read_only(path, *a, **k):
    raise OSError(30, "Read-only file system", str(path))

  monkeypatch.setattr(storage, "makedirs", read_only)
  with caplog.at_level(logging.WARNING):
    out = evaluate.evaluate_workdirs([str(run)], crops=1)
  assert out["num_examples"] == 20 and 0 <= out["top1_error"] <= 1 and "path" not in out
  assert "Read-only file system" in caplog.text and "printed only" in caplog.text
