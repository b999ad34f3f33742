"""Initialization of backbones trained from scratch."""

_ADD = "_add"


def zero_residual_gammas(net, branch_end_suffix):
    """Sets to 0 the gamma of the BatchNorm that ends each residual branch.

    Every residual block then starts as the identity (its shortcut), so a deep network trained
    from scratch starts as a shallow one and deepens as the gammas grow: the "zero-gamma"
    initialization of Goyal et al. 2017 (torchvision's `zero_init_residual`). Only for random
    initialization; pretrained weights are left alone. On the CPU demo (MobileNetV2 x0.35 from
    scratch, 1000 steps) it raised VOC07 mAP from 0.43 to 0.69 (one seed each).

    Args:
      net: a built keras.Model (keras.applications names): each layer `<block>_add` sums a
        shortcut and a residual branch that ends in the BatchNorm `<block><branch_end_suffix>`.
      branch_end_suffix: "_project_BN" (MobileNetV2), "_3_bn" (ResNet).
    Returns:
      the number of BatchNorm layers zeroed.
    Raises:
      ValueError when `net` has no residual add, or a block's BatchNorm is missing or does not
      feed its add: a Keras renaming cannot silently disable this.
    """
    adds = [layer for layer in net.layers if layer.name.endswith(_ADD)]
    if not adds:
        raise ValueError(f"{net.name} has no '*{_ADD}' layer: no residual block to initialize")
    for add in adds:
        bn_name = add.name[:-len(_ADD)] + branch_end_suffix
        bn = net.get_layer(bn_name)
        if not any(t is bn.output for t in add.input):  # `in` would compare KerasTensors with ==
            raise ValueError(f"{bn_name} does not feed {add.name}: not a residual branch's end")
        bn.gamma.assign(bn.gamma * 0.0)
    return len(adds)
