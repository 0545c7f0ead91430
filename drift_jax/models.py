"""Flax architectures. Models take float NHWC images in [0, 1] and return logits.

`SeedCNN` is the architecture of the original work (docs/DESIGN.md); `ResNet` is a small CIFAR-style
residual network with BatchNorm (He et al. 2016, sec. 4.2: 3 stages of 16/32/64 channels), whose
running statistics regularised inversion matches later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from drift_jax.errors import DriftJaxError
from drift_jax.layers import Conv, max_pool_2x2

BN_MOMENTUM = 0.9  # running = m * running + (1 - m) * batch; inversion inverts this update


class SeedCNN(nn.Module):
    """Conv32-ReLU-MaxPool, Conv64-ReLU-MaxPool, Dense128-ReLU, Dense(num_classes)."""

    num_classes: int
    conv_form: str = "canonical"
    pool_form: str = "reshape"

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no train-time behaviour
        x = max_pool_2x2(nn.relu(Conv(32, form=self.conv_form)(x)), self.pool_form)
        x = max_pool_2x2(nn.relu(Conv(64, form=self.conv_form)(x)), self.pool_form)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
    features: int
    stride: int
    conv_form: str
    bn: Callable

    @nn.compact
    def __call__(self, x):
        y = Conv(self.features, stride=self.stride, use_bias=False, form=self.conv_form)(x)
        y = nn.relu(self.bn()(y))
        y = Conv(self.features, use_bias=False, form=self.conv_form)(y)
        y = self.bn(scale_init=nn.initializers.zeros)(y)
        if x.shape != y.shape:
            x = Conv(self.features, 1, self.stride, use_bias=False, form=self.conv_form)(x)
            x = self.bn()(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2): conv16, 3 stages x `blocks` basic blocks, global average pool.

    ``bn_axis_name`` names the mesh axis over which training syncs batch statistics (set by the
    stack trainer when the batch is sharded); None when unsharded.
    """

    num_classes: int
    blocks: int = 1
    widths: tuple[int, ...] = (16, 32, 64)
    conv_form: str = "canonical"
    pool_form: str = "reshape"  # unused: no max pooling; kept so every arch takes the same options
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                       axis_name=self.bn_axis_name if train else None, **kw)
        x = nn.relu(bn()(Conv(self.widths[0], use_bias=False, form=self.conv_form)(x)))
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = ResidualBlock(width, stride, self.conv_form, bn)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


ARCHITECTURES = {"seedcnn": SeedCNN, "resnet": ResNet}
# The smallest image side each architecture takes: SeedCNN halves its input twice with 2x2
# pooling (a side under 4 pools to nothing, and its classifier would see no features), and the
# ResNet halves it twice with stride-2 stages (under 4, the last stage has one pixel to halve).
MIN_IMAGE_SIZE = {"seedcnn": 4, "resnet": 4}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model: saved beside every checkpoint."""

    arch: str
    num_classes: int
    image_shape: tuple[int, int, int]
    conv_form: str = "canonical"
    pool_form: str = "reshape"

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise DriftJaxError(f"unknown architecture {self.arch!r}; choose one of "
                                f"{', '.join(ARCHITECTURES)}.")
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        height, width = self.image_shape[:2]
        least = MIN_IMAGE_SIZE[self.arch]
        if min(height, width) < least:
            raise DriftJaxError(f"{self.arch} needs images of at least {least}x{least} pixels "
                                f"(it halves them twice), got {height}x{width}; resize the "
                                "images, or use larger data.")

    def build(self, **overrides) -> nn.Module:
        return ARCHITECTURES[self.arch](num_classes=self.num_classes, conv_form=self.conv_form,
                                        pool_form=self.pool_form, **overrides)

    def init(self, key: jax.Array) -> dict:
        """Variables of one model: {'params': ...} plus {'batch_stats': ...} for BN models."""
        dummy = jnp.zeros((1, *self.image_shape), jnp.float32)
        return dict(self.build().init(key, dummy, train=False))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
