"""Models have the published parameter counts and refuse inputs they cannot take."""

import pytest
import torch

from compresslab.errors import ConfigError
from compresslab.metrics import count_params, size_fp32_bytes
from compresslab.models import build_model


@pytest.mark.parametrize("cfg,shape,params", [
    ({"arch": "mlp", "hidden": [300, 100]}, (1, 28, 28), 266_610),   # LeNet-300-100
    ({"arch": "lenet5"}, (1, 28, 28), 431_080),                     # Caffe's LeNet-5
    ({"arch": "mlp", "hidden": []}, (40,), 410),                    # logistic regression
    ({"arch": "resnet", "depth": 20, "width": 16}, (3, 32, 32), 269_722),  # ResNet-20, option A
])
def test_parameter_counts(cfg, shape, params):
    model = build_model(cfg, shape, 10)
    assert count_params(model)[0] == params
    assert size_fp32_bytes(model) == 4 * params


@pytest.mark.parametrize("cfg,shape", [({"arch": "mnist1d_cnn"}, (40,)), ({"arch": "mnist1d_gru"}, (40,)),
                                       ({"arch": "resnet", "depth": 8, "width": 4}, (3, 16, 16))])
def test_forward_gives_one_logit_per_class(cfg, shape):
    assert build_model(cfg, shape, 10)(torch.zeros(3, *shape)).shape == (3, 10)


def test_nonzero_count_sees_zeroed_weights():
    model = build_model({"arch": "mlp", "hidden": [4]}, (3,), 2)
    with torch.no_grad():
        model.net[1].weight[0].zero_()
    assert count_params(model) == (26, 23)


@pytest.mark.parametrize("cfg,shape,match", [
    ({"arch": "lenet5"}, (1, 8, 8), "cannot take inputs of shape"),
    ({"arch": "resnet", "depth": 21}, (3, 32, 32), "6n\\+2"),
    ({"arch": "transformer"}, (1, 28, 28), "unknown"),
    ({"arch": "mlp", "widths": [3]}, (1, 28, 28), "widths"),
])
def test_bad_model_configs_are_config_errors(cfg, shape, match):
    with pytest.raises(ConfigError, match=match):
        build_model(cfg, shape, 10)
