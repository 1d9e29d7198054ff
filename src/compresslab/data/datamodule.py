"""One LightningDataModule for every dataset: tensors held whole, batched by index.

A DataLoader over a TensorDataset pays a Python call per sample; slicing a permuted index pays one
per batch, which is what keeps a small model's epoch close to a hand-written loop's. On a GPU the
tensors move to the device once, so batching costs no host-to-device copies either.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from compresslab import checks
from compresslab.configs import to_plain
from compresslab.data.sources import Arrays, load
from compresslab.errors import ConfigError


def random_shift(x: torch.Tensor, max_px: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image of a (N, C, H, W) batch by its own random offset in [-max_px, max_px],
    filling with zeros (the "jitter" of Hinton et al. 2015)."""
    if max_px <= 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_px, max_px, max_px, max_px))
    dy, dx = torch.randint(0, 2 * max_px + 1, (2, n), generator=generator, device="cpu").to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None, None],
                  torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]


def derived_seed(seed: int, index: int) -> int:
    """A seed that depends on (seed, index) alone, e.g. of one epoch's shuffle and augmentation, so
    a run resumed at any epoch boundary draws what the uninterrupted run drew."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])  # 32 bits: any RNG takes it


def rank_share(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s share of `order`, as DistributedSampler splits it: padded with the order's first
    indices to a multiple of `world_size`, so every rank gets the same number of samples (and of
    batches: a rank that ran out early would wait forever in the gradient all-reduce)."""
    if world_size == 1:
        return order
    pad = -len(order) % world_size
    if pad:
        order = torch.cat([order, order.repeat(math.ceil(pad / len(order)))[:pad]])
    return order[rank::world_size]


class TensorBatches:
    """An iterable of (x, y) batches over in-memory tensors; a fresh shuffle each pass.

    A pass of epoch e shuffles (and augments) with `derived_seed(seed, e)`; `epoch` gives the epoch a
    pass belongs to (the trainer's current_epoch), or, when None, passes are counted from 0. With
    `extra` (a tensor aligned with x, e.g. a teacher's precomputed logits) batches are
    (x, y, extra); it describes the unaugmented inputs. Under DDP (`world_size` > 1) each rank
    reads its share of every order (see `rank_share`)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, shift_px: int = 0, rank: int = 0, world_size: int = 1,
                 extra: torch.Tensor | None = None, epoch: Callable[[], int] | None = None):
        self.x, self.y, self.extra = x, y, extra
        self.batch_size, self.shuffle, self.shift_px = batch_size, shuffle, shift_px
        self.rank, self.world_size = rank, world_size
        self.seed, self.epoch = seed, epoch
        self.passes = 0

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.y) / self.world_size) / self.batch_size)

    def __iter__(self):
        epoch = self.epoch() if self.epoch is not None else self.passes
        self.passes += 1
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        n = len(self.y)
        if self.shuffle or self.world_size > 1:
            order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
            order = rank_share(order, self.rank, self.world_size).to(self.x.device)
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                yield self._augment(self.x[idx], generator), self.y[idx], *self._extra(idx)
        else:  # plain slices are views: evaluation batches cost no copy
            for start in range(0, n, self.batch_size):
                part = slice(start, start + self.batch_size)
                yield self.x[part], self.y[part], *self._extra(part)

    def _extra(self, idx) -> tuple:
        return () if self.extra is None else (self.extra[idx],)

    def _augment(self, x, generator):
        return random_shift(x, self.shift_px, generator) if self.shift_px else x


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Indices of each of `folds` disjoint, stratified folds covering all of y."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [test_idx for _, test_idx in splitter.split(np.zeros(len(y)), y)]


def split_train_val(y: torch.Tensor, val_fraction: float, seed: int, folds: int | None = None,
                    fold: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices carved from the training set (never from test).

    With `folds`, validation is fold `fold` of a stratified k-fold split; otherwise a seeded
    stratified hold-out of `val_fraction`.
    """
    labels = y.numpy()
    if folds:
        if not (isinstance(fold, int) and 0 <= fold < folds):
            raise ConfigError(f"data.cv.fold={fold} is not a fold of data.cv.folds={folds}; "
                              f"use 0..{folds - 1}")
        val = stratified_folds(labels, folds, seed)[fold]
    elif val_fraction > 0:
        from sklearn.model_selection import train_test_split

        _, val = train_test_split(np.arange(len(labels)), test_size=val_fraction, random_state=seed,
                                  stratify=labels)
    else:
        val = np.array([], dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[val] = False
    return torch.from_numpy(np.flatnonzero(mask)), torch.from_numpy(np.sort(val))


class TensorDataModule(pl.LightningDataModule):
    def __init__(self, name: str, data_dir: str | Path, batch_size: int = 128,
                 eval_batch_size: int = 1024, val_fraction: float = 0.1, split_seed: int = 0,
                 cv: dict | None = None, max_train: int | None = None, max_test: int | None = None,
                 shift_px: int = 0, on_device: bool = True, seed: int = 0, **source_options):
        super().__init__()
        checks.number(batch_size, "data.batch_size", lo=1, integer=True)
        checks.number(eval_batch_size, "data.eval_batch_size", lo=1, integer=True)
        checks.number(val_fraction, "data.val_fraction", lo=0, hi=1, hi_open=True)
        checks.number(shift_px, "data.shift_px", lo=0, integer=True)
        self.name, self.data_dir = name, Path(data_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.cv = dict(cv or {})
        self.max_train, self.max_test = max_train, max_test
        self.shift_px, self.on_device, self.seed = shift_px, on_device, seed
        self.source_options = source_options
        self.arrays: Arrays | None = None
        # Optional per-sample tensor aligned with x_train, yielded as a third batch element
        # (distillation sets its teacher's logits here for the duration of a fit).
        self.train_extra: torch.Tensor | None = None

    # Loaded eagerly by the job (it needs shapes to build the model); Lightning's call is then a no-op.
    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        a = load(self.name, self.data_dir, **self.source_options)
        if self.max_test:
            a.x_test, a.y_test = a.x_test[: self.max_test], a.y_test[: self.max_test]
        folds = self.cv.get("folds")
        train_idx, val_idx = split_train_val(a.y_train, self.val_fraction, self.split_seed,
                                             folds, self.cv.get("fold"))
        if self.max_train:
            keep = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(self.split_seed))
            train_idx = train_idx[torch.sort(keep[: self.max_train]).values]
            val_idx = val_idx[: max(1, self.max_train // 10)] if len(val_idx) else val_idx
        x_tr = a.x_train[train_idx]
        # Per-channel standardisation with statistics of the training portion only.
        # Flat (N, F) signals get one scalar, as their features are positions, not channels.
        dims = [0] + list(range(2, x_tr.dim())) if x_tr.dim() > 2 else [0, 1]
        self.mean = x_tr.mean(dim=dims, keepdim=True)
        self.std = x_tr.std(dim=dims, keepdim=True).clamp_min(1e-6)
        norm = lambda x: ((x - self.mean) / self.std).contiguous()  # noqa: E731
        self.x_train, self.y_train = norm(x_tr), a.y_train[train_idx]
        self.x_val, self.y_val = norm(a.x_train[val_idx]), a.y_train[val_idx]
        self.x_test, self.y_test = norm(a.x_test), a.y_test
        self.num_classes = a.num_classes
        self.arrays = a

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def has_val(self) -> bool:
        return len(self.y_val) > 0

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        if self.on_device and trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cpu")

    def _batches(self, x, y, batch_size, train=False):
        device = self._device()
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if x.device != device:  # once per loader; subsequent epochs reuse the device copies
            x, y = x.to(device), y.to(device)
        extra = self.train_extra.to(device) if train and self.train_extra is not None else None
        epoch = (lambda: trainer.current_epoch) if trainer is not None else None
        return TensorBatches(x, y, batch_size, shuffle=train, seed=self.seed,
                             shift_px=self.shift_px if train else 0, rank=rank, world_size=world,
                             extra=extra, epoch=epoch)

    def train_dataloader(self):
        return self._batches(self.x_train, self.y_train, self.batch_size, train=True)

    def val_dataloader(self):
        return self._batches(self.x_val, self.y_val, self.eval_batch_size) if self.has_val else []

    def test_dataloader(self):
        return self._batches(self.x_test, self.y_test, self.eval_batch_size)


def build_datamodule(cfg) -> TensorDataModule:
    """The data module of a job config: `cfg.data` (its `name` picks the dataset, the other keys are
    the module's arguments) with the job's `seed`."""
    options = dict(to_plain(cfg.data))
    options.pop("_target_", None)
    name = options.pop("name")
    return TensorDataModule(name, seed=cfg.seed, **options)
