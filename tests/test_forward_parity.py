"""Forward parity with RefineDet.PyTorch through the importer (golden/README.md recipe)."""

import keras
import numpy as np
import pytest

import refinedet_tf
from detection_parity import assert_detections_agree
from golden import load, reference_config, swap_xy
from reference_forward import reference_forward
from reference_weights import seeded_input, seeded_state_dict

FEATURES = [  # our layer, golden array
    ("conv4_3_l2norm", "feat/source0_conv4_3_l2norm"),
    ("conv5_3_l2norm", "feat/source1_conv5_3_l2norm"),
    ("fc7", "feat/source2_fc7"),
    ("conv6_2", "feat/source3_extras1_prerelu"),  # the layer before its ReLU
    ("tcb_0_conv3", "feat/tcb_out0"), ("tcb_1_conv3", "feat/tcb_out1"),
    ("tcb_2_conv3", "feat/tcb_out2"), ("tcb_3_conv3", "feat/tcb_out3"),
]
HEADS = ("arm_loc", "arm_conf", "odm_loc", "odm_conf")


def assert_close_to_scale(actual, expected, name):
    """Within 1e-4 relative to the array's scale (max |value|)."""
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * scale, err_msg=name)


@pytest.fixture(scope="module")
def model_320():
    config = reference_config()
    model = refinedet_tf.build_refinedet(config)
    return config, model


def test_seeded_forward_equals_reference(model_320):
    config, model = model_320
    g = load("forward_seeded_320")
    assert model.count_params() == int(g["num_params"]) == 34_440_884
    refinedet_tf.load_pytorch_state_dict(model, seeded_state_dict(0))
    images = seeded_input(0)
    np.testing.assert_array_equal(images, g["input"].transpose(0, 2, 3, 1))
    probe = keras.Model(model.input, [model.get_layer(n).output for n, _ in FEATURES] + [model.output])
    *features, outputs = probe(images)
    for (ours, ref), value in zip(FEATURES, features):
        assert_close_to_scale(value.numpy(), g[ref].transpose(0, 2, 3, 1), ours)
    for name in HEADS:
        ref = swap_xy(g[name]) if name.endswith("loc") else g[name]
        assert_close_to_scale(outputs[name].numpy(), ref, name)
    outputs = {k: v.numpy() for k, v in outputs.items()}
    detections = refinedet_tf.detect(outputs, refinedet_tf.generate_anchors(config), config)
    detections = {k: v.numpy()[0] for k, v in detections.items()}
    # The heads agree to float rounding (~5e-6 of scale here; another CPU sums the convolutions
    # in another order), so the detections are compared as detection_parity.py defines: the
    # same (anchor, class) set, scores and boxes within the bound that the measured head
    # difference implies, and differences only where a threshold decision sits within it.
    # A wrong variance, anchor order or coordinate order fails (tests/test_detection_parity.py).
    reference_heads = {name: (swap_xy(g[name]) if name.endswith("loc") else g[name])[0] for name in HEADS}
    assert_detections_agree(detections, {k: v[0] for k, v in outputs.items()}, g["detections"],
                            reference_heads, refinedet_tf.generate_anchors(config), config, max_excused=10)


def test_independent_forward_reproduces_the_golden_arrays():
    """Validates the second implementation itself before trusting it on other seeds."""
    g = load("forward_seeded_320")
    heads, sources, _ = reference_forward(seeded_state_dict(0), seeded_input(0), 21)
    for name in HEADS:
        assert_close_to_scale(heads[name], g[name], name)
    assert_close_to_scale(sources[2], g["feat/source2_fc7"].transpose(0, 2, 3, 1), "fc7")


@pytest.mark.parametrize("seed, size, num_classes", [(1, 320, 21), (3, 512, 5)])
def test_import_is_general_across_seeds_and_sizes(seed, size, num_classes):
    config = refinedet_tf.get_preset(f"vgg16_{size}", num_classes=num_classes)
    model = refinedet_tf.build_refinedet(config)
    state = seeded_state_dict(seed, num_classes=num_classes)
    refinedet_tf.load_pytorch_state_dict(model, state)
    images = seeded_input(seed, size)
    ours = model(images)
    theirs, _, _ = reference_forward(state, images, num_classes)
    for name in HEADS:
        ref = swap_xy(theirs[name]) if name.endswith("loc") else theirs[name]
        assert_close_to_scale(ours[name].numpy(), ref, name)


def test_importer_names_every_problem(model_320):
    _, model = model_320
    state = seeded_state_dict(0)
    state.pop("tcb1.2.bias")
    state["extra.weight"] = np.zeros(3, np.float32)
    state["arm_loc.0.weight"] = state["arm_loc.0.weight"][:6]
    with pytest.raises(ValueError) as error:
        refinedet_tf.load_pytorch_state_dict(model, state)
    message = str(error.value)
    assert "lacks ['tcb1.2.bias']" in message
    assert "keys not used: ['extra.weight'" in message
    assert "arm_loc_0 <- arm_loc.0: expected shapes" in message


def test_data_parallel_prefix_is_accepted(model_320):
    _, model = model_320
    state = {f"module.{k}": v for k, v in seeded_state_dict(2).items()}
    refinedet_tf.load_pytorch_state_dict(model, state)
    np.testing.assert_array_equal(model.get_layer("conv4_3_l2norm").get_weights()[0], np.full(512, 10.0))
