"""The training path is Lightning's stock one and fast where that costs nothing: it trains exactly as
a hand-written loop over the same batches, logs at Lightning's steps, hands a user's callbacks every
batch, shows a progress bar on request and still moves batches that need moving."""

from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from compresslab.data import TensorBatches, build_datamodule
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


def logged_rows(cfg, tmp_path) -> list[tuple[int, str, float]]:
    dm = build_datamodule(cfg)
    dm.setup()
    pl.seed_everything(0, verbose=False)
    model = build_model(OmegaConf.to_container(cfg.model), dm.input_shape, dm.num_classes)
    module = Classifier(model, dm.num_classes, OmegaConf.to_container(cfg.train.optimizer),
                        OmegaConf.to_container(cfg.train.scheduler), cfg.train.epochs)
    logger = CSVLogger(str(tmp_path), name="csv", version="")
    fit(cfg, module, dm, tmp_path, cfg.train.epochs, [logger], checkpoints=False)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), key, float(r[key])) for r in csv.DictReader(f)
                for key in ("train/loss", "val/acc") if r.get(key)]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_loss_is_logged_every_n_optimizer_steps_and_validation_once_an_epoch(tmp_path, accumulate):
    # 8 batches per epoch, 2 epochs: 16 optimizer steps, or 8 when two batches make one step
    cfg = config("model=mlp", "train.epochs=2", "data.val_fraction=0.2", "trainer.log_every_n_steps=3",
                 f"trainer.accumulate_grad_batches={accumulate}")
    rows = logged_rows(cfg, tmp_path)
    steps = 16 // accumulate
    assert [s for s, k, _ in rows if k == "train/loss"] == list(range(2, steps, 3))
    assert [s for s, k, _ in rows if k == "val/acc"] == [steps // 2 - 1, steps - 1]


class BatchProbe(pl.Callback):
    """What a user's own callback sees: Lightning's stock hooks, one batch each."""

    def __init__(self):
        self.batches, self.backwards, self.steps = [], 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        self.batches.append(len(y))

    def on_after_backward(self, trainer, pl_module):
        self.backwards += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps += 1


def test_a_users_callback_gets_every_batch_backward_and_optimizer_step(tmp_path):
    cfg = config("model=mlp", "train.epochs=2", "+trainer.limit_train_batches=7")  # 10 batches of 64 per epoch
    dm = build_datamodule(cfg)
    dm.setup()
    module = Classifier(build_model(OmegaConf.to_container(cfg.model), dm.input_shape, dm.num_classes),
                        dm.num_classes, OmegaConf.to_container(cfg.train.optimizer))
    probe = BatchProbe()
    fit(cfg, module, dm, tmp_path, 2, callbacks=[probe], checkpoints=False)
    assert probe.batches == [64] * 14 and probe.backwards == probe.steps == module.global_step == 14


def test_a_shuffled_pass_depends_only_on_the_seed_and_the_epoch():
    x = torch.arange(20.0)[:, None]

    def order(epoch, seed=3):
        loader = TensorBatches(x, torch.arange(20), batch_size=20, shuffle=True, seed=seed, epoch=lambda: epoch)
        return next(iter(loader))[1]

    counted = TensorBatches(x, torch.arange(20), batch_size=20, shuffle=True, seed=3)
    first, second = (next(iter(counted))[1] for _ in range(2))  # no epoch given: passes are counted
    assert torch.equal(first, order(0)) and torch.equal(second, order(1))
    assert not torch.equal(order(0), order(1)) and not torch.equal(order(1), order(1, seed=4))
    assert torch.equal(order(5), order(5))


@pytest.mark.parametrize("n,world", [(20, 2), (21, 2), (22, 4), (3, 4)])
def test_every_rank_gets_the_same_number_of_batches_and_together_all_samples(n, world):
    x, y = torch.arange(float(n))[:, None], torch.arange(n)
    shares = [list(TensorBatches(x, y, batch_size=2, shuffle=True, seed=1, rank=r, world_size=world))
              for r in range(world)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(TensorBatches(x, y, 2, world_size=world))
    seen = torch.cat([b[1] for s in shares for b in s])
    assert len(seen) == world * -(-n // world) and set(seen.tolist()) == set(range(n))


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


@pytest.mark.parametrize("scheduler,clip", [("cosine", None), ("onecycle", None), ("step", 0.05)])
def test_a_job_trains_exactly_as_a_hand_written_loop_over_the_same_batches(tmp_path, scheduler, clip):
    cfg = config("model=mlp", "train.epochs=3", f"train.scheduler.name={scheduler}", "+train.scheduler.step_size=1",
                 "train.optimizer.name=sgd", "train.optimizer.lr=0.05", f"trainer.gradient_clip_val={clip or 'null'}")
    dm = build_datamodule(cfg)
    dm.setup()
    recipe = OmegaConf.to_container(cfg.train.optimizer), OmegaConf.to_container(cfg.train.scheduler)

    def fresh():
        pl.seed_everything(0, verbose=False)
        return build_model(OmegaConf.to_container(cfg.model), dm.input_shape, dm.num_classes)

    ours = fresh()
    module = Classifier(ours, dm.num_classes, *recipe, cfg.train.epochs)
    fit(cfg, module, dm, tmp_path, cfg.train.epochs, checkpoints=False)

    raw = fresh()
    loader = TensorBatches(dm.x_train, dm.y_train, dm.batch_size, shuffle=True, seed=dm.seed)
    built = build_optimizer(raw.parameters(), *recipe, cfg.train.epochs, total_steps=3 * len(loader))
    optimizer, schedule = built["optimizer"], built["lr_scheduler"]
    for _ in range(cfg.train.epochs):
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(raw(x), y).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(raw.parameters(), clip)
            optimizer.step()
            if schedule["interval"] == "step":
                schedule["scheduler"].step()
        if schedule["interval"] == "epoch":
            schedule["scheduler"].step()
    assert module.global_step == 30
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    assert optimizer.param_groups[0]["lr"] != pytest.approx(0.05)  # the schedule did move
    for a, b in zip(ours.parameters(), raw.parameters()):
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
