"""CIFAR ResNet-18/34 (He et al. 2016, in the kuangliu/pytorch-cifar layout).

    3x3 conv(3 -> 64) -> BN -> act                       (stem)
    stage 1..4: BasicBlocks, [2,2,2,2] (18) / [3,4,6,3] (34),
                channels 64,128,256,512, first block of a stage has stride 1,2,2,2
    mean over H,W -> Linear(512, num_classes)

BasicBlock: ``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))``; the shortcut is
the identity, or a projection (1x1 conv, stride, + BN) where the shape changes.
The activation knob replaces every nonlinearity (stem, both in every block).

Knobs (the paper, Sec. 3.2/3.3, says "in each block"; we read it as below):

* ``bn`` -- here a "block" is one BasicBlock.
    - ``"all"``:   every BN (stem, bn1 and bn2 of every block, projection BN).
    - ``"first"``: in every BasicBlock keep only bn1 (after the first conv);
      bn2 and the projection-shortcut BN are removed.  The stem BN is kept.
    - ``"none"``:  no BN anywhere.
  A conv followed by a BN has ``bias=False``; a conv whose BN is removed has
  ``bias=True``.  Removed BNs are ``nn.Identity``.
* ``skip`` -- here a "block" is a stage (the BasicBlocks at one resolution).
    - ``"all"``:    every BasicBlock adds its shortcut.
    - ``"first"``:  only the first BasicBlock of each stage adds its shortcut;
      the others compute ``act(bn2(conv2(act(bn1(conv1(x))))))``, no ``+ x``.
    - ``"first2"``: the first two BasicBlocks of each stage add it (for
      ResNet-18, with 2 blocks per stage, this equals ``"all"``).
  The first block of a stage always keeps its shortcut, so all projections exist
  in every setting.

BN counts: ResNet-18 all/first/none = 20/9/0, ResNet-34 = 36/17/0.
Active skips: ResNet-18 all/first/first2 = 8/4/8, ResNet-34 = 16/4/8.
Parameter counts (width 1, bn all, 10 classes): 11,173,962 / 21,282,122.
"""

import torch.nn as nn

from .common import count_bn, count_params, make_activation, scaled

STAGES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
CHANNELS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)
SKIPS_KEPT = {"all": None, "first": 1, "first2": 2}  # per stage; None = all


def _conv_bn(cin, cout, kernel, stride, use_bn):
    """conv (bias only if no BN follows) and its BN (or Identity)."""
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=not use_bn)
    return conv, (nn.BatchNorm2d(cout) if use_bn else nn.Identity())


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, activation, bn1, bn2, bn_shortcut, skip):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride, bn1)
        self.act1 = make_activation(activation)
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3, 1, bn2)
        self.act2 = make_activation(activation)
        self.skip = skip
        self.shortcut = None
        if skip:
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride, bn_shortcut))
            else:
                self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.skip:
            out = out + self.shortcut(x)
        return self.act2(out)


class ResNet(nn.Module):
    def __init__(self, name, num_classes, activation="relu", bn="all", skip="all", width=1.0):
        super().__init__()
        self.name, self.activation, self.bn, self.skip, self.width = name, activation, bn, skip, width
        chans = [scaled(c, width) for c in CHANNELS]
        self.conv1, self.bn1 = _conv_bn(3, chans[0], 3, 1, bn != "none")
        self.act = make_activation(activation)
        kept = SKIPS_KEPT[skip]
        cin, stages = chans[0], []
        for n_blocks, cout, stride in zip(STAGES[name], chans, STRIDES):
            blocks = []
            for i in range(n_blocks):
                blocks.append(BasicBlock(
                    cin, cout, stride if i == 0 else 1, activation,
                    bn1=bn != "none", bn2=bn == "all", bn_shortcut=bn == "all",
                    skip=kept is None or i < kept))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(cin, num_classes)

    def stages(self):
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        for stage in self.stages():
            x = stage(x)
        return self.linear(x.mean(dim=(2, 3)))

    def describe(self):
        bn_per_stage = [count_bn(s) for s in self.stages()]
        skips_per_stage = [sum(b.skip for b in s) for s in self.stages()]
        return {
            "family": self.name,
            "activation": self.activation,
            "bn": self.bn,
            "skip": self.skip,
            "width": self.width,
            "num_bn": count_bn(self),
            "bn_per_stage": bn_per_stage,
            "num_blocks": sum(len(s) for s in self.stages()),
            "blocks_per_stage": [len(s) for s in self.stages()],
            "num_active_skips": sum(skips_per_stage),
            "active_skips_per_stage": skips_per_stage,
            "num_params": count_params(self),
        }
