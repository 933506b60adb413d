"""Small AlexNet for 32x32 CIFAR input.

Source: Zhang, Bengio, Hardt, Recht, Vinyals, "Understanding deep learning requires
rethinking generalization", ICLR 2017 (Appendix A: "two (convolution 5x5 ->
max-pool 3x3 -> local-response-normalization) modules followed by two fully
connected layers with 384 and 192 hidden units"), which is the TensorFlow
CIFAR-10 tutorial model (cifar10.py, after cuda-convnet).  Layer order as in that
tutorial:

    conv5x5(3 -> 64, pad 2) -> act -> maxpool(3, stride 2, pad 1) -> LRN
    conv5x5(64 -> 64, pad 2) -> act -> LRN -> maxpool(3, stride 2, pad 1)
    flatten (64*8*8) -> fc 384 -> act -> fc 192 -> act -> fc num_classes

LRN parameters: TF tutorial ``tf.nn.lrn(depth_radius=4, bias=1.0,
alpha=0.001/9.0, beta=0.75)`` computes ``x / (bias + alpha * sum_{|c'-c|<=4} x^2)^beta``.
torch's ``LocalResponseNorm(size, alpha, beta, k)`` divides its ``alpha`` by
``size``, so the same op is ``size=9, alpha=0.001, beta=0.75, k=1.0`` here.

Differences from the tutorial: 32x32 input instead of 24x24 crops, torch default
initialisation, no weight decay.  There is no BN and no skip connection, so only
the ``activation`` and ``width`` knobs apply.
"""

import torch.nn as nn

from .common import LocalResponseNorm, count_params, make_activation, scaled

LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 9, 0.001, 0.75, 1.0


class AlexNet(nn.Module):
    def __init__(self, num_classes, activation="relu", width=1.0):
        super().__init__()
        c, h1, h2 = scaled(64, width), scaled(384, width), scaled(192, width)
        self.activation, self.width = activation, width
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 5, padding=2),
            make_activation(activation),
            nn.MaxPool2d(3, stride=2, padding=1),
            LocalResponseNorm(LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K),
            nn.Conv2d(c, c, 5, padding=2),
            make_activation(activation),
            LocalResponseNorm(LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c * 8 * 8, h1),
            make_activation(activation),
            nn.Linear(h1, h2),
            make_activation(activation),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))

    def describe(self):
        return {
            "family": "alexnet",
            "activation": self.activation,
            "width": self.width,
            "num_bn": 0,
            "num_lrn": sum(isinstance(m, LocalResponseNorm) for m in self.modules()),
            "num_active_skips": 0,
            "num_params": count_params(self),
        }
