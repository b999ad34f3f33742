"""Initialization of backbones trained from scratch."""


def zero_residual_gammas(net, blocks):
    """Sets to 0 the gamma of the BatchNorm that ends each residual branch.

    Every residual block then starts as the identity (its shortcut), so a deep network trained
    from scratch starts as a shallow one and deepens as the gammas grow: the "zero-gamma"
    initialization of Goyal et al. 2017 (torchvision's `zero_init_residual`). Only for random
    initialization; pretrained weights are left alone. On the CPU demo (MobileNetV2 x0.35 from
    scratch, 1000 steps) it raised VOC07 mAP from 0.43 to 0.69 (one seed each).

    Args:
      net: a built keras.Model.
      blocks: (add layer name, name of the BatchNormalization ending its residual branch) pairs;
        a missing or wrongly wired name is a ValueError, so a Keras change cannot silently
        disable this.
    Returns:
      the number of BatchNorm layers zeroed.
    """
    for add_name, bn_name in blocks:
        add, bn = net.get_layer(add_name), net.get_layer(bn_name)
        if not any(t is bn.output for t in add.input):  # `in` would compare KerasTensors with ==
            raise ValueError(f"{bn_name} does not feed {add_name}: not a residual branch's end")
        bn.gamma.assign(bn.gamma * 0.0)
    return len(blocks)
