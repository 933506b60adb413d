"""Small AlexNet for CIFAR, on 28x28 center crops as in Zhang et al. (2017).

Source: Zhang, Bengio, Hardt, Recht, Vinyals, "Understanding deep learning requires
rethinking generalization", ICLR 2017 (Appendix A: "two (convolution 5x5 ->
max-pool 3x3 -> local-response-normalization) modules followed by two fully
connected layers with 384 and 192 hidden units"), which is the TensorFlow
CIFAR-10 tutorial model (cifar10.py, after cuda-convnet).  Layer order as in that
tutorial:

    center crop 32x32 -> 28x28 (as Zhang et al. crop CIFAR-10 to 28x28)
    conv5x5(3 -> 64, pad 2) -> act -> maxpool(3, stride 2, pad 1) -> LRN
    conv5x5(64 -> 64, pad 2) -> act -> LRN -> maxpool(3, stride 2, pad 1)
    flatten (64*7*7) -> fc 384 -> act -> fc 192 -> act -> fc num_classes

LRN parameters: TF tutorial ``tf.nn.lrn(depth_radius=4, bias=1.0,
alpha=0.001/9.0, beta=0.75)`` computes ``x / (bias + alpha * sum_{|c'-c|<=4} x^2)^beta``.
torch's ``LocalResponseNorm(size, alpha, beta, k)`` divides its ``alpha`` by
``size``, so the same op is ``size=9, alpha=0.001, beta=0.75, k=1.0`` here.

The 28x28 crop gives Zhang et al.'s parameter count, 1,387,786 (10 classes). It is a
fixed center crop inside the network (no random crops: the paper trains without
augmentation), so every model sees the same 32x32 tensors and only AlexNet drops the
2-pixel border. Differences from the tutorial: torch default initialisation (keyed by
layer name, :func:`deep.models.common.init_by_name`), no weight decay.  There is no BN
and no skip connection, so only the ``activation`` and ``width`` knobs apply.
"""

import torch.nn as nn

from .common import LocalResponseNorm, count_params, make_activation, scaled

LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 9, 0.001, 0.75, 1.0
CROP = 28  #: side of the center crop the network sees


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
            nn.Linear(c * 7 * 7, h1),
            make_activation(activation),
            nn.Linear(h1, h2),
            make_activation(activation),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x):
        h, w = x.shape[-2:]
        if h < CROP or w < CROP:
            raise ValueError(f"AlexNet needs inputs of at least {CROP}x{CROP}, got {h}x{w}")
        top, left = (h - CROP) // 2, (w - CROP) // 2
        x = x[..., top:top + CROP, left:left + CROP]
        return self.classifier(self.features(x).flatten(1))

    def describe(self):
        return {
            "family": "alexnet",
            "activation": self.activation,
            "width": self.width,
            "input_crop": CROP,
            "num_bn": 0,
            "num_lrn": sum(isinstance(m, LocalResponseNorm) for m in self.modules()),
            "num_active_skips": 0,
            "num_params": count_params(self),
        }
