import numpy as np
import pytest
import tensorflow as tf

import refinedet_tf
from refinedet_tf.architectures import RefineDet
from refinedet_tf.training.optimizer import WarmupSchedule, default_lr, make_optimizer, resolve_boundaries
from refinedet_tf.training.trainer import DetectorTrainer


def test_multistep_with_warmup_at_hand_picked_steps():
    s = WarmupSchedule(0.01, total_steps=120, warmup_steps=10, schedule="multistep",
                       boundaries=resolve_boundaries((0.667, 0.833), 120), warmup_start=0.1)
    assert resolve_boundaries((0.667, 0.833), 120) == (80, 100)
    expected = {0: 0.001, 5: 0.0055, 10: 0.01, 79: 0.01, 80: 0.001, 99: 0.001, 100: 0.0001, 119: 0.0001}
    for step, lr in expected.items():
        np.testing.assert_allclose(float(s(step)), lr, rtol=1e-5, err_msg=f"step {step}")


def test_cosine_and_step_boundaries():
    s = WarmupSchedule(0.02, total_steps=100, schedule="cosine")
    np.testing.assert_allclose([float(s(t)) for t in (0, 50, 100, 150)], [0.02, 0.01, 0.0, 0.0], atol=1e-7)
    assert resolve_boundaries((30, 60), 100) == (30, 60)
    assert default_lr(32) == 1e-3 and default_lr(8) == 2.5e-4
    with pytest.raises(ValueError, match="lr schedule must be"):
        WarmupSchedule(0.1, 10, schedule="poly")


def test_weight_decay_skips_biases_batchnorm_and_l2norm_scales():
    config = refinedet_tf.get_preset("vgg16_320", image_size=64, num_classes=3)
    detector = refinedet_tf.build_refinedet(config)
    optimizer = make_optimizer(0.1, momentum=0.0, weight_decay=0.5)
    variables = detector.trainable_variables
    before = [v.numpy().copy() for v in variables]
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    for v, b in zip(variables, before):
        if not np.any(b):
            continue
        ratio = v.numpy() / np.where(b == 0, 1, b)
        if v.name in ("bias", "scale", "gamma", "beta"):
            np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)  # untouched
        else:
            assert v.name == "kernel", v.path
            np.testing.assert_allclose(ratio[b != 0], 1 - 0.1 * 0.5, rtol=1e-5, err_msg=v.path)
    mobile = refinedet_tf.build_refinedet(refinedet_tf.get_preset("mobilenetv2_lite_192", image_size=64))
    gammas = [v for v in mobile.trainable_variables if v.name == "gamma"]
    before = [v.numpy().copy() for v in gammas]
    assert sum(np.all(b == 1.0) for b in before) > 10  # the rest: zero-gamma residual ends
    opt = make_optimizer(0.1, momentum=0.0, weight_decay=0.5)
    opt.apply_gradients([(tf.zeros_like(v), v) for v in gammas])
    for v, b in zip(gammas, before):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)


def test_arm_warm_up_stage_trains_only_the_arm_path():
    """The stage freezes TCB and ODM through their layers' trainable flags: their weights and
    BatchNorm statistics stay as they were; the ARM and the backbone move."""
    config = refinedet_tf.get_preset("mobilenetv2_lite_192", image_size=64)
    architecture = RefineDet(config)
    (warm_up, joint) = architecture.training_stages(total_steps=5, first_stage_steps=2)
    assert (warm_up.end_step, warm_up.losses, joint.end_step, joint.losses) == (2, ("arm_loc", "arm_conf"), 5, None)
    model = architecture.build_model()
    trainer = DetectorTrainer(model, architecture)
    trainer.compile(optimizer=make_optimizer(0.05, weight_decay=5e-4))
    for layer in model.layers:
        layer.trainable = not layer.name.startswith(warm_up.frozen_layers)
    trainer.optimized_losses = warm_up.losses
    heads = [v for v in model.weights if v.path.startswith(("tcb_", "odm_"))]
    arm = [v for v in model.weights if v.path.startswith("arm_")]
    assert any("moving_mean" in v.path for v in heads) and arm
    before_heads = [v.numpy().copy() for v in heads]
    before_arm = [v.numpy().copy() for v in arm]
    images = tf.random.stateless_uniform([2, 64, 64, 3], [0, 1], -1, 1)
    targets = {"boxes": tf.constant([[[0.1, 0.1, 0.6, 0.5]]] * 2), "classes": tf.constant([[2]] * 2),
               "mask": tf.constant([[True]] * 2)}
    logs = trainer.fit(tf.data.Dataset.from_tensors((images, targets)).repeat(2), epochs=1, verbose=0).history
    for v, b in zip(heads, before_heads):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(arm, before_arm))
    assert logs["total"][0] == pytest.approx(logs["arm_loc"][0] + logs["arm_conf"][0], rel=1e-6)


def test_resume_refuses_a_model_dir_saved_without_the_tcb_batch_norm(tmp_path):
    import dataclasses

    from refinedet_tf import checkpoints
    from refinedet_tf.config import get_preset
    from refinedet_tf.training.resume import check_resume_compatible

    config = get_preset("mobilenetv2_lite_192")
    (tmp_path / checkpoints.CONFIG_FILE).write_text(dataclasses.replace(config, tcb_batch_norm=False).to_json())
    with pytest.raises(ValueError, match="incompatible model .*tcb_batch_norm: saved False vs now True"):
        check_resume_compatible(str(tmp_path), config, RefineDet.structural_fields, 32)
    check_resume_compatible(str(tmp_path), dataclasses.replace(config, tcb_batch_norm=False),
                            RefineDet.structural_fields, 32)
