"""The papers' own recipes: per-layer settings (method.layers), Han et al. 2015's per-layer
threshold pruning, structured pruning that shrinks the model, and QAT that really trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from compresslab.compression import (CompressionCallback, functional as F, load_artifact, parse, prune_,
                                     quantization_of, quantize_, save_artifact, verify)
from compresslab.compression.layers import check_layers, layer_targets, output_layer
from compresslab.compression.shrink import ShrinkError, shrink
from compresslab.errors import ConfigError
from compresslab.metrics import compression_metrics, count_params
from compresslab.models import build_model
from compresslab.modules import Classifier

LENET5 = {"arch": "lenet5"}


def lenet5():
    torch.manual_seed(0)
    return build_model(LENET5, (1, 28, 28), 10)


def mlp():
    torch.manual_seed(0)
    return build_model({"arch": "mlp", "hidden": [30, 20]}, (1, 8, 8), 10)


def fit(model, callback, epochs=1, lr=1e-2):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 1, 8, 8, generator=g), torch.randint(0, 10, (256,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    module = Classifier(model, 10, {"name": "adam", "lr": lr}, {"name": "none"}, epochs)
    pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[callback]).fit(module, train_dataloaders=loader)


# -- per-layer settings ---------------------------------------------------------------------------

def test_per_layer_bits_conv_8_fc_5_as_deep_compression_lenet5():
    model = lenet5()
    method = {"pipeline": ["prune", "quantize"], "rate": 0.9, "bits": 5, "quantizer": "kmeans",
              "layers": {r"features\..*": {"bits": 8}}}
    c = parse(method)
    check_layers(model, c)
    CompressionCallback(method).apply_all(model)
    measured = verify(model, c, ["prune", "quantize"])
    assert measured["bits[features.2.weight]"] == 8 and measured["bits[classifier.0.weight]"] == 5
    assert torch.unique(model.classifier[0].weight).numel() <= 2 ** 5 + 1  # 32 values and the zeros
    assert torch.unique(model.features[2].weight).numel() > 2 ** 5 + 1
    asked = layer_targets(model, c)
    assert asked["features.0.weight"] == {"rate": 0.9, "bits": 8, "quantizer": "kmeans"}
    assert asked["classifier.3.weight"]["bits"] == 5


def test_per_layer_rates_prune_each_layer_to_its_own():
    model = mlp()
    method = {"pipeline": ["prune"], "rate": 0.5, "layers": {r"net\.1\.weight": {"rate": 0.9}}}
    CompressionCallback(method).apply_all(model)
    assert F.sparsity(model.net[1].weight) == pytest.approx(0.9, abs=0.01)
    assert F.sparsity(model.net[3].weight) == pytest.approx(0.5, abs=0.01)
    verify(model, parse(method), ["prune"])
    model.net[3].weight.data.normal_()  # a layer that lost its zeros misses its own target
    with pytest.raises(Exception, match=r"net.3.weight: sparsity 0.0000, requested rate 0.5"):
        verify(model, parse(method), ["prune"])


@pytest.mark.parametrize("layers, message", [
    ({r"conv\..*": {"bits": 8}}, r"matches no compressed parameter"),
    ({r"net\..*": {"bits": 8}, r"net\.1\..*": {"bits": 4}}, r"all match net.1.weight with different settings"),
])
def test_layer_patterns_that_cannot_work_fail_with_one_line(layers, message):
    c = parse({"pipeline": ["quantize"], "bits": 6, "layers": layers})
    with pytest.raises(ConfigError, match=message):
        check_layers(mlp(), c)


@pytest.mark.parametrize("layers, message", [
    ({r"net\..*": {"bits": 17}}, r"method.layers\['net\\\\..\*'\]: method.bits=17 is out of range"),
    ({r"net\..*": {"bitz": 4}}, r"sets \['bitz'\], which a layer cannot set"),
    ({r"net\..*": {"rate": 0.5}}, r"need method.scope=layer"),
])
def test_bad_layer_settings_fail_in_the_config_check(layers, message):
    with pytest.raises(ConfigError, match=message):
        parse({"pipeline": ["prune", "quantize"], "rate": 0.9, "scope": "global", "bits": 6,
               "layers": layers})


# -- Han et al. 2015: threshold = quality x the layer's std ------------------------------------

def test_quality_pruning_thresholds_each_layer_by_its_own_std():
    model = mlp()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    method = {"pipeline": ["prune"], "quality": 1.0, "layers": {r"net\.5\.weight": {"quality": 0.5}}}
    CompressionCallback(method).apply_all(model)
    for name, q in (("net.1.weight", 1.0), ("net.3.weight", 1.0), ("net.5.weight", 0.5)):
        w = before[name]
        assert torch.equal(dict(model.named_parameters())[name], w * (w.abs() > q * w.std()))
    assert layer_targets(model, parse(method))["net.5.weight"] == {"quality": 0.5}


def test_iterative_quality_pruning_raises_the_threshold_to_quality_times_the_starting_std():
    model = mlp()
    w0 = model.net[1].weight.detach().clone()
    cb = CompressionCallback({"pipeline": ["prune"], "quality": 1.0, "schedule": "iterative", "rounds": 4,
                              "prune_end": 1.0}, submodule="model")
    fit(model, cb, epochs=2)
    assert [h["target"] for h in cb.history] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    oneshot = F.sparsity(w0 * (w0.abs() > w0.std()))
    assert F.sparsity(model.net[1].weight) >= oneshot - 0.02  # about the one-shot share, or more
    assert F.sparsity(model.net[1].weight) > 0.3


@pytest.mark.parametrize("extra, message", [
    ({"scope": "global"}, "takes method.scope=layer"),
    ({"schedule": "gradual"}, "schedule oneshot or iterative"),
    ({"rate": 0.5}, "exactly one of method.rate"),
])
def test_quality_pruning_bad_combinations(extra, message):
    with pytest.raises(ConfigError, match=message):
        parse({"pipeline": ["prune"], "quality": 1.0, **extra})


# -- structured pruning that shrinks the model -------------------------------------------------

def test_neuron_pruning_leaves_the_output_layer_alone():
    model = mlp()
    CompressionCallback({"pipeline": ["prune"], "rate": 0.5, "structure": "neuron"}).apply_all(model)
    assert output_layer(model) == "net.5.weight"
    assert F.sparsity(model.net[5].weight) == 0
    assert F.sparsity(model.net[1].weight) == pytest.approx(0.5)


@pytest.mark.parametrize("make, shape", [(mlp, (1, 8, 8)), (lenet5, (1, 28, 28))])
def test_shrunk_model_gives_the_masked_models_outputs(make, shape, tmp_path):
    model = make()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.bias.uniform_(-0.5, 0.5)  # pruned units' constants must be folded, not dropped
    c = parse({"pipeline": ["prune"], "rate": 0.5, "structure": "neuron"})
    CompressionCallback({"pipeline": ["prune"], "rate": 0.5, "structure": "neuron"}).apply_all(model)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]
    small, sizes = shrink(model, shape, layers)
    x = torch.randn(64, *shape)
    assert (small(x) - model.eval()(x)).abs().max() <= 1e-5
    for name in layers:
        full, kept = model.get_submodule(name), small.get_submodule(name)
        assert kept.weight.shape[0] == full.weight.shape[0] // 2
    total, _ = count_params(model)
    assert count_params(small)[0] < 0.6 * total
    small_macs = compression_metrics(small, shape)["macs_dense"]
    assert small_macs < 0.6 * compression_metrics(model, shape)["macs_dense"]
    cfg = {"arch": "mlp", "hidden": [30, 20]} if make is mlp else LENET5
    save_artifact(tmp_path / "s.clz", small, cfg, shape, 10, "synthetic", sizes)
    assert torch.equal(load_artifact(tmp_path / "s.clz")(x), small(x))
    assert verify(model, c, ["prune"])


def test_shrink_refuses_what_it_cannot_follow():
    model = build_model({"arch": "resnet", "depth": 8}, (3, 8, 8), 10)
    prune_(model, 0.5, structure="neuron", include=[r"stem\.0\.weight"])
    with pytest.raises(ShrinkError, match="stem.0"):
        shrink(model, (3, 8, 8), ["stem.0"])
    cnn = build_model({"arch": "mnist1d_cnn"}, (40,), 10)
    with torch.no_grad():
        cnn.net[1].bias.fill_(1.0)  # a constant a padded convolution cannot fold into one bias
    prune_(cnn, 0.5, structure="neuron", include=[r"net\.1\.weight"])
    with pytest.raises(ShrinkError, match="pads its input"):
        shrink(cnn, (40,), ["net.1"])


# -- QAT ------------------------------------------------------------------------------------------

def test_qat_at_the_default_finetuning_lr_moves_weights_off_their_post_training_grid():
    model = mlp()
    post = build_model({"arch": "mlp", "hidden": [30, 20]}, (1, 8, 8), 10)
    post.load_state_dict(model.state_dict())
    quantize_(post, bits=2)
    cb = CompressionCallback({"pipeline": ["quantize"], "bits": 2}, submodule="model")
    fit(model, cb, epochs=1, lr=1e-4)  # the default fine-tuning lr: a tenth of the baseline's 1e-3
    assert set(quantization_of(model)) == set(quantization_of(post))
    changed = sum(int((a != b).sum()) for a, b in zip(
        (model.net[i].weight for i in (1, 3, 5)), (post.net[i].weight for i in (1, 3, 5))))
    assert changed > 0
    assert all(torch.unique(model.net[i].weight).numel() <= 3 for i in (1, 3, 5))


# -- the configs and the real entry point -----------------------------------------------------

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiments_method_passes_its_checks_on_its_model(name):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import compresslab.train

    with initialize_config_dir(config_dir=str(compresslab.train.CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
    if cfg.method.kind != "compress":
        pytest.skip("not a compressed run")
    c = parse(cfg.method)
    shape = {"mnist": (1, 28, 28), "mnist1d": (40,)}[cfg.data.name]
    check_layers(build_model(OmegaConf.to_container(cfg.model), shape, 10), c)


def test_neuron_job_exports_a_smaller_model_that_loads_on_its_own(workdir):
    from conftest import records, run_train

    run_train("data=synthetic", "model=mlp", "method=prune", "method.rate=0.5", "method.structure=neuron",
              "method.finetune_epochs=1", "logger.wandb.enabled=false", check=True)
    (rec,) = records(workdir / "outputs")
    m = rec["metrics"]
    assert m["layers"][-1]["sparsity"] == 0  # the classes survive
    shrunk = m["shrunk"]
    assert shrunk["max_abs_diff"] <= 1e-5
    assert shrunk["params"] < 0.6 * shrunk["params_dense"] and shrunk["macs"] < 0.6 * shrunk["macs_dense"]
    assert all(shrunk[k] > 0 for k in ("latency_ms_batch1", "latency_ms_batch256", "speedup_batch256"))
    small = load_artifact(rec["paths"]["small_artifact"])
    hidden = [mod.out_features for mod in small.modules() if isinstance(mod, nn.Linear)]
    full = [lay["params"] for lay in m["layers"]]
    assert hidden[-1] == 10 and len(hidden) == len(full)
    assert [lay["target"] for lay in m["layers"][:-1]] == [{"rate": 0.5}] * (len(full) - 1)


def test_layer_settings_and_shapes_that_cannot_work_fail_before_training(workdir):
    from conftest import records, run_train

    proc = run_train("data=synthetic", "method=prune_quantize", "logger.wandb.enabled=false",
                     "model=mlp,resnet20", "method.layers={conv1: {bits: 8}}", multirun=True)
    assert proc.returncode != 0
    recs = records(workdir / "outputs")
    assert len(recs) == 2 and all(r["status"] == "failed" for r in recs)
    assert all("method.layers['conv1'] matches no compressed parameter" in r["error"] for r in recs)
    proc = run_train("data=synthetic", "model=resnet20", "method=prune", "method.structure=neuron",
                     "logger.wandb.enabled=false")
    (rec,) = [r for r in records(workdir / "outputs") if "structure" in " ".join(r["overrides"])]
    assert rec["status"] == "failed" and "\n" not in rec["error"]
    assert "method.shrink" in rec["error"] and "method.shrink=false" in rec["error"]
    assert not (workdir / "outputs" / "cache" / "baseline").exists()  # no baseline was trained
