"""CIFAR VGG-11/16 (Simonyan & Zisserman 2015, in the kuangliu/pytorch-cifar layout).

Each number in the config is conv3x3(pad 1) -> BN -> act, each 'M' a 2x2 max-pool;
after five pools a 32x32 input is 1x1, so the classifier is a single
Linear(512, num_classes).  No dropout (the paper removes it).

Knob ``bn`` -- here a "block" is a run of convs between two max-pools:
    - ``"all"``:   BN after every conv (VGG-11: 8, VGG-16: 13).
    - ``"first"``: BN only after the first conv of each run (5 for both).
    - ``"none"``:  no BN.
There is no skip knob (``skip`` must stay ``"all"``).

Conv bias: as in kuangliu, every conv has a bias, also when a BN follows (that
bias is redundant, BN cancels it).  This keeps the reference parameter count
VGG-16 = 14,728,266 (10 classes); with ``bias=False`` before BN it would be
14,724,042.
"""

import torch.nn as nn

from .common import count_bn, count_params, make_activation, scaled

CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, name, num_classes, activation="relu", bn="all", width=1.0):
        super().__init__()
        self.name, self.activation, self.bn, self.width = name, activation, bn, width
        layers, cin, first_in_run = [], 3, True
        self.bn_per_run = []
        for v in CFG[name]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                first_in_run = True
                continue
            if first_in_run:
                self.bn_per_run.append(0)
            cout = scaled(v, width)
            use_bn = bn == "all" or (bn == "first" and first_in_run)
            layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=True))
            if use_bn:
                layers.append(nn.BatchNorm2d(cout))
                self.bn_per_run[-1] += 1
            layers.append(make_activation(activation))
            cin, first_in_run = cout, False
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))

    def describe(self):
        return {
            "family": self.name,
            "activation": self.activation,
            "bn": self.bn,
            "width": self.width,
            "num_bn": count_bn(self),
            "bn_per_stage": list(self.bn_per_run),
            "num_convs": sum(isinstance(m, nn.Conv2d) for m in self.modules()),
            "num_active_skips": 0,
            "num_params": count_params(self),
        }
