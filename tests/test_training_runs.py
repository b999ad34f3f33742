"""Whole training runs on a tiny synthetic set: resume after SIGKILL, NaN stop, and one staged run
(ARM warm-up, weight average, resume, validation) whose outputs several tests check."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.checkpoints import load_model
from refinedet_tf.training import run as run_lib
from refinedet_tf.training.ema import decay_at
from refinedet_tf.training.trainer import DetectorTrainer
from training_helpers import tiny_dataset, tiny_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps(model_dir):
    with open(os.path.join(model_dir, "steps.jsonl"), encoding="utf-8") as f:
        return {r["step"]: r for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


def _train_command(data, model_dir, steps):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--data", data, "--model_dir", str(model_dir),
            "--image_size", "64", "--batch_size", "4", "--steps", str(steps), "--lr", "0.01",
            "--checkpoint_every", "3", "--deterministic", "--seed", "5", "--eval_every", "0",
            "--warmup_steps", "0", "--lr_schedule", "multistep", "--lr_boundaries", "0.5"]


# train.py, killed by SIGKILL at the end of step KILL_AT (after that step's log line and the
# checkpoint of step 3): no handler, no cleanup, as `kill -9` or a lost machine. The kill comes
# from inside (a callback passed through run.train's extra_callbacks) so that it lands at the same
# step every time, and the killed run's own log of the steps up to it is the uninterrupted
# reference the resumed run must reproduce.
KILL_AT = 5
KILLING_TRAIN_PY = r"""
import os, signal, sys
import keras
sys.path.insert(0, sys.argv.pop(1))  # the repository root: train.py
import train as command
from absl import app
from refinedet_tf.training import run

class KillAt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)

train = run.train
run.train = lambda options, stream=None, extra_callbacks=(): train(options, stream, [*extra_callbacks, KillAt()])
app.run(command.main)
"""


def test_killed_run_resumes_with_the_loss_of_an_uninterrupted_run(data, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KILL_AT": str(KILL_AT)}
    killed = tmp_path / "killed"
    script = tmp_path / "killing_train.py"
    script.write_text(KILLING_TRAIN_PY)
    command = _train_command(data, killed, 8)
    proc = subprocess.run([sys.executable, str(script), ROOT, *command[2:]], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    reference = _steps(killed)  # the steps it ran, uninterrupted
    assert sorted(reference) == list(range(1, KILL_AT + 1))
    latest = tf.train.latest_checkpoint(str(killed / "checkpoints"))
    resumed_from = int(latest.rsplit("-", 1)[1])
    assert resumed_from == 3  # --checkpoint_every 3: step 4 and 5 are lost with the process

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {resumed_from}" in again.stdout
    with open(killed / "steps.jsonl", encoding="utf-8") as f:
        after = [json.loads(line) for line in f][KILL_AT:]  # the resumed run's lines
    assert [r["step"] for r in after] == list(range(resumed_from + 1, 9))
    # Steps 4 and 5 again: the same weights, optimizer state, learning rate and batches.
    for record in after[: KILL_AT - resumed_from]:
        for k in ("total", "arm_loc", "arm_conf", "odm_loc", "odm_conf", "lr"):
            np.testing.assert_allclose(record[k], reference[record["step"]][k], rtol=1e-5,
                                       err_msg=f"{k} at step {record['step']}")
    summary = json.loads((killed / "metrics.json").read_text())
    assert summary["steps"] == 8 and summary["finished"]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    original = DetectorTrainer.compute_losses

    def poisoned(self, images, targets, training):
        losses = original(self, images, targets, training)
        if training:
            bad = self.optimizer.iterations >= 4  # the 5th step's loss is NaN
            losses["total"] = tf.where(bad, tf.constant(np.nan, tf.float32), losses["total"])
        return losses

    monkeypatch.setattr(DetectorTrainer, "compute_losses", poisoned)
    model_dir = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match="non-finite loss at step 5"):
        run_lib.train(tiny_options(data, model_dir, steps=8, checkpoint_every=2))
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-4")
    assert not (model_dir / "final.weights.h5").exists()


# One run shared by the tests below (training runs are the suite's slowest part): 2 steps of
# ARM warm-up with the weight average, killed in effect (the process returns), then resumed to
# step 4 of joint training with validation data, which evaluates both weight sets at the end.
# It runs in this process: the average's arithmetic is checked from the checkpoints, so the run
# need not be bit-reproducible (the killed-run test above checks that, with --deterministic).
@pytest.fixture(scope="module")
def staged_run(data, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("staged") / "run"
    snapshots = {}

    class Snapshot(keras.callbacks.Callback):
        """TCB and ODM weights (BatchNorm statistics included) after every step."""

        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            snapshots[step] = [v.numpy().copy() for v in self.model.weights if v.path.startswith(("tcb_", "odm_"))]

    def train(steps, **kwargs):
        return run_lib.train(tiny_options(data, model_dir, steps=steps, ema_decay=0.9, checkpoint_every=1,
                                          keep_checkpoints=5, seed=5, arm_warmup_steps=2, **kwargs),
                             extra_callbacks=[Snapshot()])

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        first = train(2)
        resumed = train(4, val_data=data)
    return {"model_dir": model_dir, "first": first, "resumed": resumed, "stdout": out.getvalue(),
            "snapshots": snapshots}


def test_run_writes_config_metrics_logs_and_refuses_an_incompatible_resume(data, staged_run):
    model_dir, summary = staged_run["model_dir"], staged_run["resumed"]
    for name in ("config.json", "train_options.json", "metrics.json", "final.weights.h5", "best.weights.h5",
                 "labelmap.txt", "steps.jsonl"):
        assert (model_dir / name).exists(), name
    assert summary == json.loads((model_dir / "metrics.json").read_text())
    assert summary["evaluations"] and summary["evaluations"][-1]["step"] == 4
    assert 0.0 <= summary["evaluations"][-1]["voc07"] <= 1.0
    assert os.listdir(model_dir / "logs" / "train") and os.listdir(model_dir / "logs" / "val")
    assert not staged_run["first"]["evaluations"]  # no validation data in the first part
    with pytest.raises(ValueError, match="incompatible model .*image_size: saved 64 vs now 128"):
        run_lib.train(tiny_options(data, model_dir, steps=4, config_overrides={"image_size": 128}))


def test_arm_warmup_stage_then_joint_training(staged_run):
    out, snapshots = staged_run["stdout"], staged_run["snapshots"]
    assert "stage: ARM warm-up, 2 steps" in out and "stage: joint, 2 steps" in out
    assert "at step 2" in out
    # Steps 1-2 (ARM only) leave TCB/ODM untouched, BatchNorm statistics included; joint steps
    # 3-4 move them.
    assert all(np.array_equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))
    assert any(not np.array_equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))


def _checkpoint(model_dir, step):
    """-> (trained weights, averages, num_updates) of checkpoint `step`, in trainable order."""
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints" / f"ckpt-{step}"))
    model, _ = load_model(str(model_dir / "checkpoints" / f"ckpt-{step}"))
    trained = [v.numpy() for v in model.trainable_variables]
    averages = [reader.get_tensor(f"weight_average/averages/{i}/.ATTRIBUTES/VARIABLE_VALUE")
                for i in range(len(trained))]
    return trained, averages, int(reader.get_tensor("weight_average/num_updates/.ATTRIBUTES/VARIABLE_VALUE"))


def test_run_with_ema_resumes_its_average_and_saves_it(staged_run):
    model_dir, summary = staged_run["model_dir"], staged_run["resumed"]
    assert "with the averaged weights (trained weights:" in staged_run["stdout"]
    assert summary["ema_decay"] == 0.9
    assert {"voc07", "voc07_raw"} <= set(summary["evaluations"][-1])

    # The resumed run continued the average it found in checkpoint 2, update by update:
    # A4 = d3 * (d2 * A2 + (1 - d2) * W3) + (1 - d3) * W4 with d_t = min(0.9, (1 + t) / (10 + t)).
    _, a2, n2 = _checkpoint(model_dir, 2)
    w3, _, _ = _checkpoint(model_dir, 3)
    w4, a4, n4 = _checkpoint(model_dir, 4)
    assert (n2, n4) == (2, 4)
    d2, d3 = decay_at(0.9, 2), decay_at(0.9, 3)
    for i, (old, x3, x4, new) in enumerate(zip(a2, w3, w4, a4)):
        expected = d3 * (d2 * old + (1 - d2) * x3) + (1 - d3) * x4
        np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6, err_msg=f"average {i}")

    # final.weights.h5 holds that average (with BatchNorm statistics recomputed for it), not
    # the trained weights the checkpoint holds.
    final, _ = load_model(str(model_dir / "final.weights.h5"))
    for variable, value in zip(final.trainable_variables, a4):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-6, atol=1e-7, err_msg=variable.path)
    assert any(not np.allclose(a, b) for a, b in zip(w4, a4))
