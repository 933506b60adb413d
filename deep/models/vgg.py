"""CIFAR VGG-11/16 (Simonyan & Zisserman 2015), as trained on CIFAR by the paper (Sec. 3.2, 4).

Each number in the config is conv3x3(pad 1) -> BN -> act, each 'M' a 2x2 max-pool; after five
pools a 32x32 input is 1x1x512. The classifier is the common CIFAR VGG head with its dropout
removed, as the paper says it removed "all the dropout layers" (so its VGGs had a classifier with
hidden layers, where dropout sits):

    Linear(512, 512) -> act -> Linear(512, 512) -> act -> Linear(512, num_classes)

Knob ``bn`` -- here a "block" is a run of convs between two max-pools:
    - ``"all"``:   BN after every conv (VGG-11: 8, VGG-16: 13).
    - ``"first"``: BN only after the first conv of each run (5 for both).
    - ``"none"``:  no BN.
There is no skip knob (``skip`` must stay ``"all"``).

Conv bias: every conv has a bias, also when a BN follows (as torchvision's ``vgg*_bn``; BN
cancels it). Parameter counts (width 1, 10 classes): VGG-11 9,750,922, VGG-16 15,245,130.

Layers are named by position in the network, not by index in a list (``features.conv3_2``,
``features.bn3_2``, ``classifier.fc1``), so a conv has the same name whatever the bn knob and
variants start from the same weights (:func:`deep.models.common.init_by_name`).
"""

from collections import OrderedDict

import torch.nn as nn

from .common import count_bn, count_params, make_activation, scaled

CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}
HIDDEN = 512  #: width of the classifier's two hidden layers (at width 1)


class VGG(nn.Module):
    def __init__(self, name, num_classes, activation="relu", bn="all", width=1.0):
        super().__init__()
        self.name, self.activation, self.bn, self.width = name, activation, bn, width
        layers, cin, run, i = OrderedDict(), 3, 1, 0
        self.bn_per_run = [0]
        for v in CFG[name]:
            if v == "M":
                layers[f"pool{run}"] = nn.MaxPool2d(2, 2)
                run, i = run + 1, 0
                self.bn_per_run.append(0)
                continue
            i += 1
            cout = scaled(v, width)
            layers[f"conv{run}_{i}"] = nn.Conv2d(cin, cout, 3, padding=1, bias=True)
            if bn == "all" or (bn == "first" and i == 1):
                layers[f"bn{run}_{i}"] = nn.BatchNorm2d(cout)
                self.bn_per_run[-1] += 1
            layers[f"act{run}_{i}"] = make_activation(activation)
            cin = cout
        self.bn_per_run.pop()  # the empty run after the last pool
        self.features = nn.Sequential(layers)
        hidden = scaled(HIDDEN, width)
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(cin, hidden)), ("act1", make_activation(activation)),
            ("fc2", nn.Linear(hidden, hidden)), ("act2", make_activation(activation)),
            ("fc3", nn.Linear(hidden, num_classes)),
        ]))

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
            "classifier": [m.out_features for m in self.classifier if isinstance(m, nn.Linear)],
            "num_active_skips": 0,
            "num_params": count_params(self),
        }
