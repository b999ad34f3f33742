"""The seeded-weights recipe of golden/README.md: reference-layout weights anyone can regenerate."""

import json
import os

import numpy as np

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden")


def seeded_state_dict(base_seed=0, num_classes=21):
    """Weights in RefineDet.PyTorch's state-dict layout, generated from `base_seed`."""
    with open(os.path.join(GOLDEN, "state_dict_keys_vgg16.json"), encoding="utf-8") as f:
        keys = json.load(f)
    state = {}
    for i, (name, shape) in enumerate(keys):
        if name.startswith("odm_conf"):
            shape = [3 * num_classes] + shape[1:] if name.endswith("weight") else [3 * num_classes]
        rng = np.random.default_rng([base_seed, i])
        if "L2Norm" in name:
            w = np.full(shape, 10.0 if "4_3" in name else 8.0)
        elif name.endswith("bias"):
            w = rng.standard_normal(shape) * 0.01
        elif name.startswith("tcb1"):
            w = rng.standard_normal(shape) * np.sqrt(2 / shape[0])
        else:
            w = rng.standard_normal(shape) * np.sqrt(2 / (shape[1] * shape[2] * shape[3]))
        state[name] = w.astype(np.float32)
    return state


def seeded_input(base_seed=0, size=320):
    """The recipe's NCHW input, as NHWC for our model."""
    x = np.random.default_rng([base_seed, 1000000]).standard_normal([1, 3, size, size]).astype(np.float32)
    return x.transpose(0, 2, 3, 1)
