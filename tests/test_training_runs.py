"""Whole training runs on a tiny synthetic set: resume after SIGKILL, NaN stop, ARM stage,
outputs of a run."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from refinedet_tf.training import options as options_lib, run as run_lib
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


def test_killed_run_resumes_with_the_loss_of_an_uninterrupted_run(data, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    whole = tmp_path / "whole"
    done = subprocess.run(_train_command(data, whole, 8), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _steps(whole)
    assert sorted(reference) == list(range(1, 9))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(data, killed, 8), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    marker = killed / "checkpoints" / "checkpoint"
    deadline = time.time() + 500
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never wrote a checkpoint"
    latest = tf.train.latest_checkpoint(str(killed / "checkpoints"))
    resumed_from = int(latest.rsplit("-", 1)[1])
    assert resumed_from in (3, 6)

    again = subprocess.run(_train_command(data, killed, 8), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {resumed_from}" in again.stdout
    after = _steps(killed)
    nxt = resumed_from + 1
    for k in ("total", "arm_loc", "arm_conf", "odm_loc", "odm_conf"):
        np.testing.assert_allclose(after[nxt][k], reference[nxt][k], rtol=1e-5, err_msg=f"{k} at step {nxt}")
    np.testing.assert_allclose(after[8]["total"], reference[8]["total"], rtol=1e-4)
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


def test_run_writes_config_metrics_logs_and_refuses_an_incompatible_resume(data, tmp_path):
    model_dir = tmp_path / "run"
    summary = run_lib.train(tiny_options(data, model_dir, steps=2, val_data=data, eval_every=0))
    for name in ("config.json", "train_options.json", "metrics.json", "final.weights.h5", "best.weights.h5",
                 "labelmap.txt", "steps.jsonl"):
        assert (model_dir / name).exists(), name
    assert summary["evaluations"] and summary["evaluations"][-1]["step"] == 2
    assert 0.0 <= summary["evaluations"][-1]["voc07"] <= 1.0
    assert os.listdir(model_dir / "logs" / "train") and os.listdir(model_dir / "logs" / "val")
    with pytest.raises(ValueError, match="incompatible model .*image_size: saved 64 vs now 128"):
        run_lib.train(tiny_options(data, model_dir, steps=4, config_overrides={"image_size": 128}))
    # The same config resumes (and, being finished, does nothing more).
    again = run_lib.train(tiny_options(data, model_dir, steps=2))
    assert again["steps"] == 2


def test_arm_warmup_stage_then_joint_training(data, tmp_path):
    config = options_lib.config_for_data(tiny_options(data, tmp_path), ["background"] * 7)
    snapshots = {}

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            odm = [v for v in self.model.weights if v.path.startswith(("tcb_", "odm_"))]
            snapshots[step] = [v.numpy().copy() for v in odm]

    run_lib.train(tiny_options(data, tmp_path / "staged", steps=4, arm_warmup_steps=2), extra_callbacks=[Snapshot()])
    # Steps 1-2 (ARM only) leave TCB/ODM untouched; joint steps 3-4 move them.
    assert all(np.array_equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))
    assert any(not np.array_equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))
    assert config.image_size == 64
