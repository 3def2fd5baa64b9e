"""Feature extractors for SB3 policies that K-FAC covers (only ``nn.Conv2d`` and ``nn.Linear`` layers)."""

from __future__ import annotations

import gymnasium as gym
import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class MinAtarCNN(BaseFeaturesExtractor):
    """The network of the MinAtar paper (Young & Tian 2019): one 3×3 convolution with 16 channels, ReLU, and
    a 128-unit hidden layer with ReLU, on ``(H, W, C)`` boolean observations (channels last, as MinAtar
    emits them; channels-first ``(C, H, W)`` spaces work too).

    Use it through ``policy_kwargs=dict(features_extractor_class=MinAtarCNN, net_arch=[])`` (the zoo's
    ``minatar`` blocks), so the actor and critic heads sit directly on the 128 features as in the paper.

    :param observation_space: ``Box`` of shape ``(10, 10, C)`` (or ``(C, 10, 10)``).
    :param features_dim: width of the hidden layer (128 in the paper).
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 128) -> None:
        super().__init__(observation_space, features_dim)
        shape = observation_space.shape
        assert shape is not None and len(shape) == 3, f"MinAtarCNN needs (H, W, C) observations, got {shape}"
        self.channels_last = shape[-1] < shape[0]  # MinAtar: (10, 10, C) with C ≤ 10 channels
        channels, height, width = (shape[2], shape[0], shape[1]) if self.channels_last else shape
        self.conv = nn.Conv2d(channels, 16, kernel_size=3, stride=1)
        self.hidden = nn.Linear(16 * (height - 2) * (width - 2), features_dim)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        """``(B, H, W, C)`` → ``(B, features_dim)``."""
        x = observations.float()
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = th.relu(self.conv(x))
        return th.relu(self.hidden(x.flatten(1)))


__all__ = ["MinAtarCNN"]
