from __future__ import annotations

import math

from torch import nn


class MLP(nn.Module):
    """Fully connected ReLU network; `hidden=[]` is logistic regression, `[300, 100]` LeNet-300-100."""

    def __init__(self, input_shape, num_classes: int, hidden=(300, 100), dropout: float = 0.0,
                 input_dropout: float = 0.0):
        super().__init__()
        widths = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout:
            layers.append(nn.Dropout(input_dropout))
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
