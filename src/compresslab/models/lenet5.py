from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, ReLU, fc 10 (431,080 params on
    MNIST). Caffe's model has no nonlinearity after the convolutions; neither does this one."""

    def __init__(self, input_shape, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 20, 5), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.Flatten())
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]
        self.classifier = nn.Sequential(nn.Linear(flat, 500), nn.ReLU(), nn.Dropout(dropout),
                                        nn.Linear(500, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
