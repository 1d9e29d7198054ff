from __future__ import annotations

import math

from torch import nn


class MNIST1DCNN(nn.Module):
    """Greydanus 2020's MNIST-1D CNN: three strided 1-D convolutions of `channels` and a linear head."""

    def __init__(self, input_shape, num_classes: int, channels: int = 25):
        super().__init__()
        length = input_shape[-1]
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, length)) if len(input_shape) == 1 else nn.Identity(),
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten())
        for k in (5, 3, 3):
            length = math.floor((length + 2 - k) / 2) + 1
        self.head = nn.Linear(channels * length, num_classes)

    def forward(self, x):
        return self.head(self.net(x))


class MNIST1DGRU(nn.Module):
    """Greydanus 2020's GRU baseline: the signal read one value per step, classified from the last
    step's output (`readout="last"`) or, as in the paper's code, from the outputs of every step
    flattened (`readout="all"`: a bidirectional GRU's backward half has read the whole signal only
    at the first step)."""

    def __init__(self, input_shape, num_classes: int, hidden: int = 6, bidirectional: bool = True,
                 readout: str = "last"):
        super().__init__()
        if readout not in ("last", "all"):
            raise TypeError(f"readout={readout!r} must be 'last' or 'all'")
        self.readout = readout
        self.gru = nn.GRU(1, hidden, batch_first=True, bidirectional=bidirectional)
        steps = input_shape[-1] if readout == "all" else 1
        self.head = nn.Linear(hidden * (2 if bidirectional else 1) * steps, num_classes)

    def forward(self, x):
        out, _ = self.gru(x.reshape(x.shape[0], -1, 1))
        return self.head(out.flatten(1) if self.readout == "all" else out[:, -1])
