import os
import subprocess
import sys

import numpy as np
import pytest

import refinedet_tf
from reference_weights import seeded_input, seeded_state_dict
from refinedet_tf.checkpoints import load_model
from refinedet_tf.convert.pytorch import read_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_command_writes_a_keras_checkpoint_that_reproduces_the_import(tmp_path):
    state = seeded_state_dict(5, num_classes=6)
    np.savez(tmp_path / "refinedet.npz", **state)
    out = tmp_path / "converted" / "refinedet320"
    result = subprocess.run(
        [sys.executable, "-m", "refinedet_tf.convert.pytorch", "--checkpoint", str(tmp_path / "refinedet.npz"),
         "--preset", "vgg16_320", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_classes=6" in result.stdout
    weights = str(out) + ".weights.h5"
    assert os.path.exists(weights) and os.path.exists(str(out) + ".config.json")

    model, config = load_model(weights, preset="vgg16_320")
    assert config.num_classes == 6
    direct = refinedet_tf.build_refinedet(config)
    refinedet_tf.load_pytorch_state_dict(direct, state)
    x = seeded_input(5)
    np.testing.assert_array_equal(model(x)["odm_conf"], direct(x)["odm_conf"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(str(tmp_path / "missing.pth"))


def test_pth_files_are_read_with_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="the optional 'torch' extra reads .pth files")
    state = seeded_state_dict(0)
    torch.save({f"module.{k}": torch.from_numpy(v) for k, v in state.items()}, tmp_path / "x.pth")
    loaded = read_state_dict(str(tmp_path / "x.pth"))
    np.testing.assert_array_equal(loaded["module.vgg.0.weight"], state["vgg.0.weight"])
