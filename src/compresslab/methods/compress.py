"""Compressed runs: baseline (trained once, or a checkpoint) -> compress -> evaluate -> fine-tune ->
evaluate, for each transform of `method.pipeline` in turn (prune then quantize = Deep Compression).

Fine-tuning uses the baseline's optimizer (`train.optimizer`) with `method.finetune_lr` (default a
tenth of the baseline's lr, as Han et al. retrain), `method.finetune_weight_decay` (default the
baseline's) and `method.finetune_scheduler` (default none: a constant lr, so the last pruning round
still gets to recover), for `method.finetune_epochs` epochs per transform (`method.quantize_epochs`
for quantization); the CompressionCallback does the compressing.
"""

from __future__ import annotations

import copy
import logging
import re
import statistics
from pathlib import Path

import pytorch_lightning as pl
import torch

from compresslab import checks
from compresslab.checkpoint import save_model
from compresslab.compression import CompressionCallback, load_artifact, parse, prune_, save_artifact, verify
from compresslab.compression.export import artifact_sizes
from compresslab.compression.layers import check_layers, layer_targets, prune_targets
from compresslab.compression.shrink import ShrinkError, shrink
from compresslab.configs import to_plain
from compresslab.data import derived_seed
from compresslab.errors import CheckpointError, ConfigError
from compresslab.loggers import wandb_run
from compresslab.methods.baseline import check_recipe, obtain_trained
from compresslab.metrics import compression_metrics, count_params, latency_ms, size_fp32_bytes, state_dict_bytes
from compresslab.models import build_model
from compresslab.modules import Classifier
from compresslab.sensitivity import compressible_layers
from compresslab.steps import Evaluate, Fit

log = logging.getLogger(__name__)

ARTIFACT_FILE = "model.clz"
SMALL_FILE = "model_small.clz"  # neuron pruning: the dense model with the pruned units removed


def check(cfg) -> None:
    check_recipe(cfg.train)
    parse(cfg.method)
    m = cfg.method
    if m.get("finetune_lr") is not None:
        checks.number(m.finetune_lr, "method.finetune_lr", lo=0, lo_open=True)
    if m.get("finetune_weight_decay") is not None:
        checks.number(m.finetune_weight_decay, "method.finetune_weight_decay", lo=0)
    checks.choice(m.get("finetune_scheduler") or "none", "method.finetune_scheduler", ("none", "cosine", "step"))
    ckpt = m.get("baseline_ckpt")
    if ckpt and not Path(ckpt).is_file():
        raise CheckpointError(f"method.baseline_ckpt={ckpt} does not exist; give the model.pt of a baseline "
                              "job, or leave it unset to train (once) the baseline this config describes")


def stage_epochs(c, name: str) -> int:
    """Fine-tuning epochs after one transform: quantization has its own count (Deep Compression's
    centroid fine-tuning is short) and none without quantization-aware training."""
    if name != "quantize":
        return c.finetune_epochs
    if not c.qat:
        return 0
    return c.finetune_epochs if c.quantize_epochs is None else c.quantize_epochs


def finetune_recipe(cfg) -> dict:
    """The baseline's optimizer with the fine-tuning lr and weight decay."""
    opt = to_plain(cfg.train.optimizer)
    m = cfg.method
    opt["lr"] = m.finetune_lr if m.get("finetune_lr") is not None else opt["lr"] / 10
    if m.get("finetune_weight_decay") is not None:
        opt["weight_decay"] = m.finetune_weight_decay
    return opt


def check_model(cfg, dm, c) -> None:
    """The checks that need the model, before any training: the layer patterns, and that a
    structured export can follow this model (a dry run on a freshly built one). It draws nothing
    from the job's random numbers: the baseline trained next starts from the weights the seed gives."""
    with torch.random.fork_rng():
        fresh = build_model(to_plain(cfg.model), dm.input_shape, dm.num_classes)
        check_layers(fresh, c)
        if "prune" in c.pipeline and c.structure == "neuron" and c.shrink:
            prune_(fresh, c.rate, structure="neuron", include=[re.escape(n) for n in prune_targets(fresh, c)])
            try:
                _shrunk(fresh, c, dm.input_shape, torch.randn(8, *dm.input_shape))
            except ShrinkError as e:
                raise ConfigError(f"method.shrink: {e}; set method.shrink=false to keep the pruned model "
                                  "masked, full-sized") from e


def steps(job):
    """A compressed job's steps (compresslab.steps): returns (metrics, paths)."""
    cfg, dm = job.cfg, job.dm
    c = parse(cfg.method)
    check_model(cfg, dm, c)
    model, _, ckpt = obtain_trained(cfg, dm, cfg.model, cfg.train, "baseline", cfg.method.get("baseline_ckpt"))
    if c.single_layer is not None and c.single_layer not in compressible_layers(model, c.exclude):
        raise ConfigError(f"method.single_layer={c.single_layer} is not a compressible layer of "
                          f"model={cfg.model.name}; choose one of {compressible_layers(model, c.exclude)}")

    scheduler = {"name": cfg.method.get("finetune_scheduler") or "none"}

    def module(net, epochs=1):
        return Classifier(net, dm.num_classes, finetune_recipe(cfg), scheduler, epochs)

    baseline_acc = (yield Evaluate(cfg, module(model), dm))["test_acc"]
    oneshot = copy.deepcopy(model)
    CompressionCallback(cfg.method).apply_all(oneshot)
    before = (yield Evaluate(cfg, module(oneshot), dm))["test_acc"]
    log.info("baseline test_acc %.4f; whole pipeline applied at once, before fine-tuning: %.4f",
             baseline_acc, before)

    stages, fitted, train_time = [], {"val_acc": None}, 0.0
    for i, name in enumerate(c.pipeline):
        epochs = stage_epochs(c, name)
        callback = CompressionCallback(cfg.method, transforms=[name], submodule="model")
        # Each stage's random draws (dropout, k-means) from (seed, stage) alone: not from whether the
        # baseline was trained in this process, nor from an earlier stage a resumed job skips.
        pl.seed_everything(derived_seed(cfg.seed, i), verbose=False)
        if epochs:
            # Its own checkpoints/: an interrupted job resumes mid fine-tune, masks and grids included.
            fitted = yield Fit(cfg, module(model, epochs), dm, job.out_dir / f"finetune_{name}", epochs,
                               job.loggers, callbacks=[callback])
            train_time += fitted["train_time_s"]
        else:
            callback.apply_all(model)
        measured = verify(model, c, list(c.pipeline[:i + 1]))
        acc = (yield Evaluate(cfg, module(model), dm))["test_acc"]
        stages.append({"transform": name, "finetune_epochs": epochs, "test_acc": acc,
                       "val_acc": fitted["val_acc"] if epochs else None,
                       **compression_metrics(model, dm.input_shape), "measured": measured,
                       "schedule": callback.history})
        stages[-1].pop("layers")
        log.info("after %s (+%d epochs): test_acc %.4f, sparsity %.4f", name, epochs, acc,
                 stages[-1]["sparsity"])

    final = yield Evaluate(cfg, module(model), dm)
    figures = compression_metrics(model, dm.input_shape)
    asked = layer_targets(model, c)
    for lay in figures["layers"]:
        lay["target"] = asked.get(f"{lay['name']}.weight" if lay["name"] else "weight", {})
    artifact = job.out_dir / ARTIFACT_FILE
    save_artifact(artifact, model, to_plain(cfg.model), dm.input_shape, dm.num_classes, cfg.data.name)
    _check_round_trip(artifact, model)
    sizes = artifact_sizes(artifact)
    dense_bytes = state_dict_bytes(model)
    paths = {"artifact": str(artifact)}
    shrunk = {}
    if "prune" in c.pipeline and c.structure == "neuron" and c.shrink:
        shrunk, small_path = shrunk_export(model, c, cfg, dm, job.out_dir / SMALL_FILE)
        paths["small_artifact"] = str(small_path)
    metrics = {**final, "val_acc": fitted["val_acc"], "train_time_s": train_time,
               "size_fp32_bytes": size_fp32_bytes(model), **figures,
               "test_acc_before_finetune": before, "baseline_test_acc": baseline_acc,
               "delta_test_acc": final["test_acc"] - baseline_acc,
               "latency_ms_batch1": latency_ms(model, dm.input_shape, 1, repeats=50),
               "latency_ms_batch256": latency_ms(model, dm.input_shape, 256, repeats=10),
               **sizes, "state_dict_bytes": dense_bytes, "artifact_ratio": dense_bytes / sizes["artifact_bytes"],
               "paper_ratio": size_fp32_bytes(model) / sizes["paper_bytes"],
               "paper_ratio_before_huffman": size_fp32_bytes(model) / sizes["paper_bytes_before_huffman"],
               **({"shrunk": shrunk} if shrunk else {}), "stages": stages}
    model_path = job.out_dir / "model.pt"
    save_model(model_path, model, to_plain(cfg.model), dm.input_shape, dm.num_classes, cfg.data.name,
               {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    _summarize_layers(job.loggers, figures["layers"])
    return metrics, {"checkpoint": str(model_path), **paths, "baseline": ckpt}


def _shrunk(model, c, input_shape, x):
    """(small model, its layer sizes, max |small(x) - model(x)|) of a neuron-pruned model."""
    layers = [n.removesuffix(".weight") for n in prune_targets(model, c)]
    small, sizes = shrink(model, input_shape, layers)
    with torch.no_grad():
        diff = float((small.eval()(x) - copy.deepcopy(model).eval()(x)).abs().max())
    if diff > 1e-4:
        raise ShrinkError(f"the shrunk model's outputs differ from the pruned model's by {diff:.3g}")
    return small, sizes, diff


def shrunk_export(model, c, cfg, dm, path: Path) -> tuple[dict, Path]:
    """The smaller dense model of a neuron-pruned one, written as an artifact that loads on its own,
    and its figures beside the dense model's: parameters, MACs, CPU latency at batch 1 and 256."""
    x = dm.x_test[:2048].float().cpu()
    small, sizes, diff = _shrunk(model, c, dm.input_shape, x)
    save_artifact(path, small, to_plain(cfg.model), dm.input_shape, dm.num_classes, cfg.data.name, sizes)
    loaded = load_artifact(path)
    with torch.no_grad():
        if not torch.equal(loaded(x), small(x)):
            raise RuntimeError(f"artifact {path} does not reproduce the shrunk model exactly")
    figures = {"max_abs_diff": diff, "sizes": sizes, "artifact_bytes": path.stat().st_size,
               "params": count_params(small)[0], "params_dense": count_params(model)[0],
               "macs": compression_metrics(small, dm.input_shape)["macs_dense"],
               "macs_dense": compression_metrics(model, dm.input_shape)["macs_dense"]}
    for batch, repeats in ((1, 50), (256, 10)):
        # Alternated rounds: on a shared CPU a slow spell then hits both models alike.
        dense, shrunk = [], []
        for _ in range(5):
            dense.append(latency_ms(model, dm.input_shape, batch, repeats))
            shrunk.append(latency_ms(small, dm.input_shape, batch, repeats))
        figures[f"latency_ms_batch{batch}"] = statistics.median(shrunk)
        figures[f"latency_ms_batch{batch}_dense"] = statistics.median(dense)
        figures[f"speedup_batch{batch}"] = statistics.median(dense) / statistics.median(shrunk)
    log.info("shrunk model: %d -> %d params, %.2fx faster at batch 256, max |diff| %.2g -> %s",
             figures["params_dense"], figures["params"], figures["speedup_batch256"], diff, path)
    return figures, path


def _check_round_trip(path: Path, model) -> None:
    """The artifact must give back exactly the compressed weights; a mismatch is a bug, not a figure."""
    loaded = load_artifact(path).state_dict()
    for name, t in model.state_dict().items():
        if not t.detach().cpu().equal(loaded[name]):
            raise RuntimeError(f"artifact {path} does not reproduce {name} exactly")


def _summarize_layers(loggers, layers: list[dict]) -> None:
    """Per-layer figures as flat keys in the W&B summary (the record keeps the `layers` list)."""
    run = wandb_run(loggers)
    if run is not None:
        run.summary.update({f"final/layers/{lay['name']}/{k}": v for lay in layers
                            for k, v in lay.items() if k != "name"})
