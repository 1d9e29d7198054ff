"""Compression math on small known tensors, the verbs, the callback in a real Lightning fit, the
artifact round trip, the requested-vs-achieved check and the metric definitions."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from compresslab.compression import (CompressionCallback, TargetMissed, functional as F, load_artifact,
                                     parse, prune_, quantization_of, quantize_, save_artifact, verify)
from compresslab.data import TensorBatches
from compresslab.errors import ConfigError
from compresslab.metrics import compression_metrics, state_dict_bytes
from compresslab.models import build_model
from compresslab.modules import Classifier

W3 = torch.tensor([[0.1, -0.9, 0.3],
                   [-0.2, 0.5, -0.05],
                   [0.7, -0.4, 0.0]])


# -- pure math ----------------------------------------------------------------------------------

def test_seed_example_threshold_and_rate_on_uniform_weights():
    w = torch.rand(1000, 10, generator=torch.Generator().manual_seed(0))
    clipped = w * F.clip_mask(w, 0.5)
    pruned = w * F.magnitude_mask(w, 0.5)
    assert abs(F.sparsity(clipped) - 0.5) < 0.03  # about half of U(0, 1) lies below 0.5
    assert int((pruned == 0).sum()) == 5000       # exactly half


def test_clip_zeroes_small_magnitudes_of_both_signs_only():
    kept = W3 * F.clip_mask(W3, 0.3)
    expected = torch.tensor([[0.0, -0.9, 0.0], [0.0, 0.5, 0.0], [0.7, -0.4, 0.0]])
    assert torch.equal(kept, expected)  # |w| <= t zeroed: 0.3 too, negatives above t kept


def test_magnitude_mask_zeroes_the_k_smallest():
    mask = F.magnitude_mask(W3, 4 / 9)
    assert torch.equal(W3 * mask, torch.tensor([[0.0, -0.9, 0.3], [0.0, 0.5, 0.0], [0.7, -0.4, 0.0]]))


def test_global_masks_rank_all_tensors_together():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.1, 0.2, 3.0]])
    ma, mb = F.magnitude_masks([a, b], 0.4)
    assert ma.tolist() == [[True, True]] and mb.tolist() == [[False, False, True]]


def test_structured_mask_drops_rows_of_smallest_l2_norm():
    mask = F.structured_mask(W3, 1 / 3)
    # row norms: 0.954, 0.541, 0.806 -> row 1 goes
    assert mask.tolist() == [[True] * 3, [False] * 3, [True] * 3]


def test_quantized_values_lie_on_the_grid_and_in_range():
    w = torch.randn(50, 20, generator=torch.Generator().manual_seed(1))
    for bits in (2, 4, 8):
        scale = F.scale_for_bits(w, bits)
        q = F.quantize_tensor(w, scale, bits) * scale
        assert torch.allclose(q, q.round(), atol=1e-4)
        assert q.abs().max() <= F.qmax_of(bits) + 1e-4
        assert F.levels_bits(F.quantize_tensor(w, scale, bits)) <= bits


def test_given_scale_is_the_seeds_formula_with_clamp():
    w = torch.tensor([[0.26, -0.74, 3.0]])
    assert torch.allclose(F.quantize_tensor(w, 4.0, bits=3), torch.tensor([[0.25, -0.75, 0.75]]))
    assert torch.allclose(F.quantize_tensor(w, 4.0), torch.tensor([[0.25, -0.75, 3.0]]))


def test_per_channel_error_is_at_most_per_tensor_error_on_uneven_channels():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, 32, generator=g) * torch.logspace(-3, 0, 8)[:, None]
    per_tensor = (F.quantize_tensor(w, F.scale_for_bits(w, 4), 4) - w).pow(2).sum()
    per_channel = (F.quantize_tensor(w, F.scale_for_bits(w, 4, per_channel=True), 4) - w).pow(2).sum()
    assert per_channel <= per_tensor
    assert per_channel < per_tensor / 2  # uneven ranges: much better, not merely equal


def test_kmeans_uses_2_to_the_bits_values_and_keeps_zeros():
    w = torch.randn(40, 40, generator=torch.Generator().manual_seed(3))
    w = w * F.magnitude_mask(w, 0.8)
    q = F.kmeans_quantize(w, 3)
    assert torch.equal(q == 0, w == 0)
    assert torch.unique(q[q != 0]).numel() == 8  # all 2^3 centroids used despite the pruned gap
    assert (q - w)[w != 0].abs().max() < (w.max() - w.min()) / 8


def test_straight_through_estimator_passes_the_gradient():
    w = torch.tensor([0.26, -0.74], requires_grad=True)
    F.fake_quantize(w, 4.0, 3).sum().backward()
    assert torch.equal(w.grad, torch.ones(2))


def test_schedules_at_their_boundaries():
    assert F.agp_sparsity(0, 0.0, 0.9, t0=10, n=4, dt=5) == 0.0
    assert F.agp_sparsity(10, 0.1, 0.9, t0=10, n=4, dt=5) == 0.1
    assert F.agp_sparsity(30, 0.1, 0.9, t0=10, n=4, dt=5) == pytest.approx(0.9)
    assert F.agp_sparsity(99, 0.1, 0.9, t0=10, n=4, dt=5) == pytest.approx(0.9)
    assert F.agp_sparsity(20, 0.0, 0.8, t0=10, n=4, dt=5) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert F.iterative_sparsity(4, 4, 0.92) == pytest.approx(0.92)
    assert F.iterative_sparsity(1, 2, 0.75) == pytest.approx(0.5)  # each round halves what is left


# -- verbs, config, verification ----------------------------------------------------------------

def lenet300():
    return build_model({"arch": "mlp", "hidden": [30, 20]}, (1, 8, 8), 10)


def test_prune_touches_only_linear_weights_by_default():
    model = lenet300()
    masks = prune_(model, 0.5)
    assert set(masks) == {"net.1.weight", "net.3.weight", "net.5.weight"}
    assert all(int(p.count_nonzero()) == p.numel() for n, p in model.named_parameters() if "bias" in n)
    assert all(F.sparsity(p) == pytest.approx(0.5, abs=0.01) for p in dict(model.named_parameters()).values()
               if p.dim() == 2)


@pytest.mark.parametrize("key,value,message", [
    ("rate", 1.0, "method.rate=1.0"), ("rate", -0.1, "method.rate"), ("threshold", -1.0, "method.threshold"),
    ("bits", 0, "method.bits=0"), ("bits", 17, "method.bits=17"), ("scale", 0.0, "method.scale"),
    ("schedule", "cubic", "method.schedule")])
def test_bad_values_raise_config_errors_naming_the_key(key, value, message):
    cfg = {"pipeline": ["clip", "prune", "quantize"], "threshold": 0.1, "rate": 0.5, "bits": 4, key: value}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        parse(cfg)


def test_requested_vs_achieved_fails_when_sparsity_is_off():
    model = lenet300()
    c = parse({"pipeline": ["prune"], "rate": 0.5, "scope": "global"})
    prune_(model, 0.7, scope="global")  # a model sparser than asked for
    with pytest.raises(TargetMissed, match="sparsity 0.70"):
        verify(model, c, ["prune"])
    prune_(model := lenet300(), 0.5, scope="global")
    assert verify(model, c, ["prune"])["sparsity[all]"] == pytest.approx(0.5, abs=1e-4)


def test_requested_vs_achieved_fails_when_weights_are_off_the_grid():
    model = lenet300()
    c = parse({"pipeline": ["quantize"], "bits": 3})
    quantize_(model, bits=3)
    verify(model, c, ["quantize"])
    with torch.no_grad():
        model.net[1].weight.add_(torch.randn_like(model.net[1].weight) * 1e-3)
    with pytest.raises(TargetMissed, match="net.1.weight"):
        verify(model, c, ["quantize"])


# -- the callback in a real fit -------------------------------------------------------------------

class ZerosProbe(pl.Callback):
    """Asserts, after every optimizer step, that the weights pruned so far are still zero."""

    def __init__(self, cb):
        self.cb, self.checked = cb, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.model.named_parameters())
        for name, mask in self.cb.masks.items():
            assert not params[name][~mask].any()
        self.checked += 1


def tiny_data(loader="dataloader", epoch=None):
    """8 batches of 32: a plain DataLoader, or the project's TensorBatches (shuffled by epoch)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 1, 8, 8, generator=g), torch.randint(0, 10, (256,), generator=g)
    if loader == "dataloader":
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    return TensorBatches(x, y, 32, shuffle=True, epoch=epoch)


def tiny_trainer(epochs, callbacks, **options):
    return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks, **options)


def tiny_fit(model, callback, epochs=2, loader="dataloader"):
    module = Classifier(model, 10, {"name": "adam", "lr": 1e-2}, {"name": "none"}, epochs)
    probe = ZerosProbe(callback)
    tiny_trainer(epochs, [callback, probe]).fit(module, train_dataloaders=tiny_data(loader))
    return probe


def prune(schedule="iterative", **options):
    return CompressionCallback({"pipeline": ["prune"], "rate": 0.8, "schedule": schedule, "rounds": 4, **options},
                               submodule="model")


@pytest.mark.parametrize("loader", ["dataloader", "tensorbatches"])
def test_masks_survive_every_optimizer_step_of_iterative_pruning(loader):
    model = lenet300()
    cb = prune()
    probe = tiny_fit(model, cb, epochs=2, loader=loader)
    assert probe.checked == 16
    targets = [h["target"] for h in cb.history]
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.8) and len(targets) == 4
    assert [h["step"] for h in cb.history] == [0, 4, 8, 12]
    for p in (model.net[1].weight, model.net[3].weight, model.net[5].weight):
        assert F.sparsity(p) == pytest.approx(0.8, abs=0.01)


def test_gradual_pruning_follows_the_cubic_schedule():
    model = lenet300()
    cb = CompressionCallback({"pipeline": ["prune"], "rate": 0.9, "schedule": "gradual", "prune_every": 2,
                              "prune_end": 0.75}, submodule="model")
    tiny_fit(model, cb, epochs=2)  # 16 steps: updates at 0, 2, ..., 12
    steps = [h["step"] for h in cb.history]
    assert steps == [0, 2, 4, 6, 8, 10, 12]
    assert [h["target"] for h in cb.history] == pytest.approx(
        [F.agp_sparsity(s, 0.0, 0.9, 0, 6, 2) for s in steps])
    assert F.sparsity(model.net[1].weight) == pytest.approx(0.9, abs=0.01)


def test_schedules_count_optimizer_steps_when_batches_accumulate():
    model = lenet300()
    cb = prune()
    module = Classifier(model, 10, {"name": "adam", "lr": 1e-2}, {"name": "none"}, 2)
    tiny_trainer(2, [cb], accumulate_grad_batches=2).fit(module, train_dataloaders=tiny_data())
    assert module.global_step == 8 and [h["step"] for h in cb.history] == [0, 2, 4, 6]


class PlainModule(pl.LightningModule):
    """A LightningModule as a user writes one: not the project's, its network in `self.layers`."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layers(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("submodule", [None, "layers"])
def test_the_callback_compresses_any_lightning_module(submodule):
    module = PlainModule()
    cb = CompressionCallback({"pipeline": ["prune", "quantize"], "rate": 0.5, "bits": 3}, submodule=submodule)
    tiny_trainer(2, [cb]).fit(module, train_dataloaders=tiny_data())
    names = {"layers.1.weight", "layers.3.weight"} if submodule is None else {"1.weight", "3.weight"}
    verify(cb.model, cb.config, ["prune", "quantize"])  # raises when a target is missed
    assert set(cb.masks) == names and set(quantization_of(cb.model)) == names
    assert all(F.sparsity(module.layers[i].weight) == pytest.approx(0.5, abs=0.01) for i in (1, 3))
    assert [h["transform"] for h in cb.history] == ["prune", "quantize"] and cb.history[0]["step"] == 0


class Interrupted(Exception):
    pass


class StopAtEpoch(pl.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupted


@pytest.mark.parametrize("method", [
    {"pipeline": ["prune"], "rate": 0.8, "schedule": "iterative", "rounds": 4},
    {"pipeline": ["prune", "quantize"], "rate": 0.5, "bits": 2, "quantizer": "kmeans"},
])
def test_a_fit_resumed_from_a_checkpoint_ends_as_the_uninterrupted_one(tmp_path, method):
    from pytorch_lightning.callbacks import ModelCheckpoint

    def run(stop=None, ckpt=None):
        pl.seed_everything(0, verbose=False)
        model = lenet300()
        cb = CompressionCallback(method, submodule="model")
        module = Classifier(model, 10, {"name": "adam", "lr": 1e-2}, {"name": "none"}, 4)
        extra = [ModelCheckpoint(dirpath=tmp_path, filename="last"), StopAtEpoch(stop)] if stop else []
        trainer = pl.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[cb, *extra], enable_checkpointing=bool(stop))
        trainer.fit(module, train_dataloaders=tiny_data("tensorbatches", lambda: trainer.current_epoch),
                    ckpt_path=ckpt)
        return model, cb

    whole, whole_cb = run()
    with pytest.raises(Interrupted):  # in the middle of the pipeline: after 2 of 4 epochs
        run(stop=2)
    resumed, resumed_cb = run(ckpt=tmp_path / "last.ckpt")
    assert len(resumed_cb.history) > 1 and resumed_cb.history == whole_cb.history
    assert quantization_of(resumed).keys() == quantization_of(whole).keys()
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_prune_then_qat_keeps_zeros_and_ends_on_the_grid():
    model = lenet300()
    cb = CompressionCallback({"pipeline": ["prune", "quantize"], "rate": 0.5, "bits": 3}, submodule="model")
    tiny_fit(model, cb, epochs=2)
    c = cb.config
    measured = verify(model, c, ["prune", "quantize"])
    assert all(v <= 3 for k, v in measured.items() if k.startswith("bits"))
    assert set(quantization_of(model)) == {"net.1.weight", "net.3.weight", "net.5.weight"}


def test_kmeans_qat_shares_weights_that_moved_with_training():
    model = lenet300()
    before = model.net[1].weight.detach().clone()
    cb = CompressionCallback({"pipeline": ["quantize"], "bits": 2, "quantizer": "kmeans"}, submodule="model")
    tiny_fit(model, cb, epochs=1)
    w = model.net[1].weight
    assert torch.unique(w).numel() <= 4
    assert not torch.equal(w, F.kmeans_quantize(before, 2))  # the centroids were fine-tuned


# -- artifact --------------------------------------------------------------------------------------

MODEL_CFG = {"arch": "mlp", "hidden": [30, 20]}


@pytest.mark.parametrize("method", [
    {"pipeline": ["prune", "quantize"], "rate": 0.9, "scope": "global", "bits": 6, "quantizer": "kmeans"},
    {"pipeline": ["prune", "quantize"], "rate": 0.5, "bits": 4, "per_channel": True},
    {"pipeline": ["quantize"], "scale": 16.0},
    {"pipeline": ["clip"], "threshold": 0.05},
    {"pipeline": ["prune"], "rate": 0.5, "structure": "neuron"},
])
def test_artifact_round_trip_gives_the_same_outputs_exactly(tmp_path, method):
    model = lenet300()
    CompressionCallback(method).apply_all(model)
    size = save_artifact(tmp_path / "m.clz", model, MODEL_CFG, (1, 8, 8), 10, "synthetic")
    loaded = load_artifact(tmp_path / "m.clz")
    x = torch.randn(16, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    assert size == (tmp_path / "m.clz").stat().st_size
    assert size < state_dict_bytes(model)


def test_artifact_of_a_deep_compressed_lenet300_is_over_30x_smaller(tmp_path):
    model = build_model({"arch": "mlp", "hidden": [300, 100]}, (1, 28, 28), 10)
    CompressionCallback({"pipeline": ["prune", "quantize"], "rate": 0.92, "scope": "global", "bits": 6,
                         "quantizer": "kmeans"}).apply_all(model)
    size = save_artifact(tmp_path / "m.clz", model, {"arch": "mlp", "hidden": [300, 100]}, (1, 28, 28), 10,
                         "mnist")
    assert state_dict_bytes(model) / size >= 30


def test_load_artifact_refuses_a_file_that_is_not_one(tmp_path):
    from compresslab.errors import CheckpointError

    (tmp_path / "x.clz").write_bytes(b"not an artifact")
    with pytest.raises(CheckpointError, match="not a compresslab artifact"):
        load_artifact(tmp_path / "x.clz")


# -- metric definitions ------------------------------------------------------------------------------

class Tiny(nn.Module):
    """conv 2@3x3 on 1x4x4 (output 2x2 per channel) -> flatten -> linear 8 -> 3."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_metric_definitions_on_a_hand_built_model():
    model = Tiny()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.weight[0].zero_()        # 9 of 18 conv weights zero
        model.conv.bias.fill_(0.5)
        model.fc.weight.fill_(2.0)
        model.fc.weight[:, :6] = 0           # 18 of 24 fc weights zero
    m = compression_metrics(model, (1, 4, 4))
    assert (m["params_total"], m["params_nonzero"]) == (18 + 2 + 24, 9 + 2 + 6)
    assert m["compression_ratio"] == pytest.approx(44 / 17)
    assert m["sparsity"] == pytest.approx(1 - 17 / 44)
    assert m["macs_dense"] == 4 * 18 + 24 and m["macs_nonzero"] == 4 * 9 + 6
    assert m["theoretical_speedup"] == pytest.approx(96 / 42)
    assert m["bits_per_weight"] == 32
    conv, fc = m["layers"]
    assert conv == {"name": "conv", "params": 20, "params_nonzero": 11, "sparsity": 0.5,
                    "compression_ratio": 20 / 11, "bits": 32, "macs_dense": 72, "macs_nonzero": 36}
    assert fc["sparsity"] == 0.75 and fc["macs_nonzero"] == 6


def test_bits_per_weight_counts_quantized_values_at_their_width():
    model = Tiny()
    quantize_(model, bits=4, include=[r"fc\.weight"])
    m = compression_metrics(model, (1, 4, 4))
    nz_fc = int(model.fc.weight.count_nonzero())
    nz_rest = int(model.conv.weight.count_nonzero()) + int(model.conv.bias.count_nonzero())
    assert m["bits_per_weight"] == pytest.approx((4 * nz_fc + 32 * nz_rest) / (nz_fc + nz_rest))
    assert m["layers"][1]["bits"] == 4


def test_relative_clip_threshold_is_quality_times_layer_std():
    from compresslab.compression import clip_

    model = lenet300()
    w = model.net[1].weight.detach().clone()
    clip_(model, 1.0, relative=True)
    assert torch.equal(model.net[1].weight, w * (w.abs() > w.std()))


def test_stage_epochs_give_quantization_its_own_count():
    from compresslab.methods.compress import stage_epochs

    c = parse({"pipeline": ["prune", "quantize"], "rate": 0.5, "bits": 4, "finetune_epochs": 6,
               "quantize_epochs": 2})
    assert (stage_epochs(c, "prune"), stage_epochs(c, "quantize")) == (6, 2)
    c.qat = False
    assert stage_epochs(c, "quantize") == 0
