"""The fast training path keeps every feature of Lightning's stock per-step behaviour: the same
training, the same metrics logged at the same steps, a progress bar on request, batches that need
moving still moved, whether a training_step call takes one batch or a block of them."""

from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from compresslab.data import StepBlock, TensorBatches
from compresslab.job import build_datamodule
from compresslab.models import build_model
from compresslab.errors import ConfigError
from compresslab.modules import Classifier, build_optimizer
from compresslab.train import CONF_DIR
from compresslab.training import fit, make_trainer


def config(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["data=synthetic", "data.synthetic.n_train=640", "data.val_fraction=0",
                                           "data.batch_size=64", "logger=none", "trainer.enable_progress_bar=false",
                                           *overrides])


class LightningStock(Classifier):
    """The same module as Lightning runs it stock: one batch per training_step call, automatic
    optimisation (its closure, its scheduler stepping and gradient clipping), the loss logged
    through `self.log` on every step. The reference the written-out, blocked step must match."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = True

    def training_step(self, batch, batch_idx):
        loss = self.training_loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self):
        pass


def logged_rows(cls, cfg, tmp_path) -> list[tuple[int, str, float]]:
    dm = build_datamodule(cfg)
    dm.setup()
    pl.seed_everything(0, verbose=False)
    model = build_model(OmegaConf.to_container(cfg.model), dm.input_shape, dm.num_classes)
    module = cls(model, dm.num_classes, OmegaConf.to_container(cfg.train.optimizer),
                 OmegaConf.to_container(cfg.train.scheduler), cfg.train.epochs)
    logger = CSVLogger(str(tmp_path), name="csv", version="")
    fit(cfg, module, dm, tmp_path, cfg.train.epochs, [logger], checkpoints=False)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), key, float(r[key])) for r in csv.DictReader(f)
                for key in ("train/loss", "val/acc", "epoch") if r.get(key)]


@pytest.mark.parametrize("steps_per_call", [1, 3, 8])
def test_metrics_are_logged_at_the_same_steps_with_the_same_values_as_stock_lightning(tmp_path, steps_per_call):
    # 8 steps per epoch, 16 in all: blocks of 3 end mid-epoch, blocks of 8 exactly at its end
    cfg = config("model=mlp", "train.epochs=2", "data.val_fraction=0.2", "trainer.log_every_n_steps=3")
    fast = logged_rows(Classifier, OmegaConf.merge(cfg, {"trainer": {"steps_per_call": steps_per_call}}),
                       tmp_path / "fast")
    stock = logged_rows(LightningStock, OmegaConf.merge(cfg, {"trainer": {"steps_per_call": 1}}), tmp_path / "stock")
    assert [(s, k) for s, k, _ in fast] == [(s, k) for s, k, _ in stock]
    assert sum(k == "train/loss" for _, k, _ in fast) == 16 // 3
    assert sum(k == "val/acc" for _, k, _ in fast) == 2
    assert [v for _, _, v in fast] == pytest.approx([v for _, _, v in stock])


def test_training_batches_come_in_blocks_of_steps_per_call_in_the_same_order():
    x = torch.arange(20.0)[:, None]
    plain = list(TensorBatches(x, torch.arange(20), batch_size=2, shuffle=True, seed=3))
    blocked = TensorBatches(x, torch.arange(20), batch_size=2, shuffle=True, seed=3, steps_per_call=4)
    blocks = list(blocked)
    assert blocked.num_batches == 10 and len(blocked) == len(blocks) == 3
    assert all(isinstance(b, StepBlock) for b in blocks) and [len(b) for b in blocks] == [4, 4, 2]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain, [b for block in blocks for b in block]))


def test_steps_per_call_must_be_a_positive_integer(tmp_path):
    cfg = config("model=mlp", "trainer.steps_per_call=0")
    dm = build_datamodule(cfg)
    dm.setup()
    module = Classifier(build_model(OmegaConf.to_container(cfg.model), dm.input_shape, dm.num_classes),
                        dm.num_classes, OmegaConf.to_container(cfg.train.optimizer))
    with pytest.raises(ConfigError, match=r"trainer.steps_per_call=0 is out of range"):
        fit(cfg, module, dm, tmp_path, 1, checkpoints=False)


def test_batches_already_on_the_device_are_passed_through_and_others_moved():
    module = Classifier(torch.nn.Linear(2, 2), 2, {"name": "sgd", "lr": 0.1})
    x, y = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    out = module.transfer_batch_to_device((x, y), torch.device("cpu"), 0)
    assert out[0] is x and out[1] is y
    moved = module.transfer_batch_to_device({"x": x}, torch.device("cpu"), 0)  # not a tuple: Lightning's path
    assert torch.equal(moved["x"], x)
    if torch.cuda.is_available():
        on_gpu = module.transfer_batch_to_device((x, y), torch.device("cuda", 0), 0)
        assert on_gpu[0].is_cuda and on_gpu[1].is_cuda


def test_progress_bar_redraws_every_n_steps_and_can_be_switched_off(tmp_path):
    bar = make_trainer(config("trainer.enable_progress_bar=true", "trainer.progress_bar_refresh_rate=7"),
                       tmp_path, 1, checkpoints=False).progress_bar_callback
    assert isinstance(bar, TQDMProgressBar) and bar.refresh_rate == 7
    assert make_trainer(config(), tmp_path, 1, checkpoints=False).progress_bar_callback is None
    # null leaves the choice of bar (and its refresh) to Lightning
    stock = make_trainer(config("trainer.enable_progress_bar=true", "trainer.progress_bar_refresh_rate=null"),
                         tmp_path, 1, checkpoints=False).progress_bar_callback
    assert stock is not None


def test_channels_last_trains_conv_weights_in_channels_last_order(tmp_path):
    cfg = config("model=lenet5", "train.epochs=1", "trainer.channels_last=true")
    dm = build_datamodule(cfg)
    dm.setup()
    model = build_model(OmegaConf.to_container(cfg.model), dm.input_shape, dm.num_classes)
    module = Classifier(model, dm.num_classes, OmegaConf.to_container(cfg.train.optimizer))
    before = [p.detach().clone() for p in model.parameters()]
    fit(cfg, module, dm, tmp_path, 1, checkpoints=False)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it did train


@pytest.mark.parametrize("bar", [True, False])
def test_loss_is_a_progress_bar_value_only_when_a_bar_is_shown(tmp_path, bar):
    cfg = config("model=mlp", "train.epochs=1", "trainer.log_every_n_steps=2",
                 f"trainer.enable_progress_bar={str(bar).lower()}")
    dm = build_datamodule(cfg)
    dm.setup()
    module = Classifier(build_model(OmegaConf.to_container(cfg.model), dm.input_shape, dm.num_classes),
                        dm.num_classes, OmegaConf.to_container(cfg.train.optimizer))
    trainer = make_trainer(cfg, tmp_path, 1, checkpoints=False, has_val=False)
    trainer.fit(module, datamodule=dm)
    assert ("train/loss" in trainer.progress_bar_metrics) == bar
    assert "train/loss" in trainer.callback_metrics


@pytest.mark.parametrize("scheduler,clip,steps_per_call",
                         [("cosine", None, 8), ("onecycle", None, 3), ("onecycle", None, 1), ("step", 0.05, 4)])
def test_written_out_step_trains_exactly_as_lightnings_automatic_optimisation(tmp_path, scheduler, clip,
                                                                              steps_per_call):
    cfg = config("model=mlp", "train.epochs=3", f"train.scheduler.name={scheduler}", "+train.scheduler.step_size=1",
                 f"trainer.steps_per_call={steps_per_call}",
                 "train.optimizer.name=sgd", "train.optimizer.lr=0.05", f"trainer.gradient_clip_val={clip or 'null'}")
    dm = build_datamodule(cfg)
    dm.setup()

    def trained(cls):
        pl.seed_everything(0, verbose=False)
        model = build_model(OmegaConf.to_container(cfg.model), dm.input_shape, dm.num_classes)
        module = cls(model, dm.num_classes, OmegaConf.to_container(cfg.train.optimizer),
                     OmegaConf.to_container(cfg.train.scheduler), cfg.train.epochs)
        if cls is Classifier:
            fit(cfg, module, dm, tmp_path / "ours", cfg.train.epochs, checkpoints=False)
        else:
            dm.steps_per_call = 1  # Lightning's stock contract: one batch per call
            pl.Trainer(max_epochs=cfg.train.epochs, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False,
                       gradient_clip_val=clip).fit(module, datamodule=dm)
        lr = module.trainer.optimizers[0].param_groups[0]["lr"]
        return [p.detach().clone() for p in model.parameters()], lr, module.global_step

    ours, ours_lr, ours_steps = trained(Classifier)
    ref, ref_lr, ref_steps = trained(LightningStock)
    assert ours_steps == ref_steps == 30
    assert ours_lr == pytest.approx(ref_lr) and ours_lr != pytest.approx(0.05)  # the schedule did move
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_gradient_clip_val_bounds_every_step(tmp_path):
    cfg = config("model=logreg", "train.epochs=1", "train.scheduler.name=none", "train.optimizer.name=sgd",
                 "train.optimizer.lr=1.0", "train.optimizer.momentum=0", "trainer.gradient_clip_val=0.001")
    dm = build_datamodule(cfg)
    dm.setup()
    model = build_model(OmegaConf.to_container(cfg.model), dm.input_shape, dm.num_classes)
    module = Classifier(model, dm.num_classes, OmegaConf.to_container(cfg.train.optimizer))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    fit(cfg, module, dm, tmp_path, 1, checkpoints=False)
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert 0 < moved.norm() <= 10 * 0.001 * (1 + 1e-4)  # 10 steps of lr 1 x a gradient of norm <= 0.001


def test_default_recipe_uses_torchs_fused_optimizer_kernel():
    recipe = OmegaConf.to_container(config().train.optimizer)
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert build_optimizer(params, recipe, {"name": "none"}, 1).defaults["fused"] is True
    assert not build_optimizer(params, {**recipe, "fused": False}, {"name": "none"}, 1).defaults["fused"]


def test_onecycle_steps_per_batch_and_needs_the_step_count():
    params = [torch.nn.Parameter(torch.zeros(2))]
    built = build_optimizer(params, {"name": "adam", "lr": 0.1}, {"name": "onecycle"}, 2, total_steps=20)
    assert built["lr_scheduler"]["interval"] == "step"
    with pytest.raises(ConfigError, match="onecycle needs a known number of training steps"):
        build_optimizer(params, {"name": "adam", "lr": 0.1}, {"name": "onecycle"}, 2)


class BackwardCounter(pl.Callback):
    def __init__(self):
        self.calls = 0

    def on_after_backward(self, trainer, pl_module):
        self.calls += 1


def test_backward_hooks_still_run_on_every_step_when_something_implements_them(tmp_path):
    cfg = config("model=mlp", "train.epochs=1", "trainer.steps_per_call=3")  # 10 steps: blocks of 3, 3, 3, 1
    dm = build_datamodule(cfg)
    dm.setup()

    def fitted(callbacks):
        module = Classifier(build_model(OmegaConf.to_container(cfg.model), dm.input_shape, dm.num_classes),
                            dm.num_classes, OmegaConf.to_container(cfg.train.optimizer))
        fit(cfg, module, dm, tmp_path, 1, callbacks=callbacks, checkpoints=False)
        return module

    assert fitted([])._plain_backward  # nothing listens: loss.backward() itself
    counter = BackwardCounter()
    assert not fitted([counter])._plain_backward
    assert counter.calls == 10
