"""Distillation runs: the job's `model` (the student) learns from a frozen teacher's soft targets.

The teacher comes from `method.teacher.ckpt`, or is trained once per (data, teacher model, teacher
recipe, seed) by `baseline.obtain_trained` and shared by every job of a sweep that asks for it.
With `method.scratch=true` the same student is also trained without a teacher under the same budget
(same recipe, same initial weights, same batch order), so one record shows what distillation gained.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from compresslab import checks, reuse
from compresslab.checkpoint import save_model
from compresslab.compression import CompressionCallback, parse, save_artifact, verify
from compresslab.configs import to_plain
from compresslab.data import build_datamodule
from compresslab.errors import CheckpointError, ConfigError
from compresslab.methods.baseline import check_recipe, model_spec, obtain_trained, train_classifier
from compresslab.metrics import (compression_metrics, count_params, prediction_agreement, size_fp32_bytes,
                                 state_dict_bytes)
from compresslab.models import build_model, check_model_config
from compresslab.modules import Classifier
from compresslab.modules.distill import Distiller, predict_logits
from compresslab.steps import Evaluate, Fit

log = logging.getLogger(__name__)

ARTIFACT_FILE = "model.clz"  # the compressed student's artifact, as compressed runs write it

# Keys of `method.teacher` that are not part of the teacher's model config.
_TEACHER_RUN_KEYS = ("ckpt", "train", "data", "seed")


def teacher_model_cfg(teacher) -> dict:
    """The teacher's model config: `method.teacher` without its checkpoint, recipe, data and seed."""
    return {k: v for k, v in to_plain(teacher).items() if k not in _TEACHER_RUN_KEYS}


def check(cfg) -> None:
    method = cfg.method
    checks.number(method.temperature, "method.temperature", lo=0, lo_open=True)
    checks.number(method.soft_weight, "method.soft_weight", lo=0, hi=1)
    if not isinstance(method.get("scratch", False), bool):
        raise ConfigError(f"method.scratch={method.scratch!r} must be true or false")
    check_recipe(cfg.train)
    teacher = method.teacher
    if teacher.get("ckpt"):
        if not Path(teacher.ckpt).is_file():
            raise CheckpointError(f"method.teacher.ckpt={teacher.ckpt} does not exist; give the path "
                                  "of a model.pt written by a compresslab job, or set it to null to "
                                  "train the teacher")
    else:
        check_recipe(teacher.train, "method.teacher.train")
        if not teacher_model_cfg(teacher).get("arch"):
            raise ConfigError("method.teacher has no arch: give a model config "
                              "(e.g. method.teacher.arch=mlp method.teacher.hidden=[1200,1200]) "
                              "or method.teacher.ckpt")
        check_model_config(teacher_model_cfg(teacher), "method.teacher")
        teacher_run_cfg(cfg)  # unknown data keys fail now, not after the student has trained
    compression_of(cfg)


def teacher_run_cfg(cfg):
    """The job config the teacher is trained under: the job's, with `method.teacher.data` merged
    into `data` (e.g. shift_px=2: Hinton et al. jittered the teacher's inputs, not the student's)
    and `method.teacher.seed` as `seed` (one teacher can serve students of several seeds)."""
    teacher = cfg.method.teacher
    overrides = to_plain(teacher.get("data")) or {}
    unknown = sorted(set(overrides) - set(cfg.data))
    if unknown:
        raise ConfigError(f"method.teacher.data has keys {unknown} that data={cfg.data.name} does not "
                          f"have; use keys of the data config ({sorted(cfg.data)})")
    overrides = {k: v for k, v in overrides.items() if cfg.data[k] != v}
    changes = {"data": overrides} if overrides else {}
    seed = teacher.get("seed")
    if seed is not None and seed != cfg.seed:
        changes["seed"] = checks.seed(seed, "method.teacher.seed")
    if not changes:
        return cfg
    try:
        return OmegaConf.merge(cfg, changes)
    except OmegaConfBaseException as e:
        raise ConfigError(f"method.teacher.data does not merge into data: {str(e).splitlines()[0]}") from e


def obtain_teacher(cfg, dm):
    """(teacher model, its checkpoint path): loaded from method.teacher.ckpt, else trained once."""
    teacher = cfg.method.teacher
    ckpt = teacher.get("ckpt")
    if ckpt:  # the checkpoint describes its own architecture; data shape and classes are checked
        model, _, path = obtain_trained(cfg, dm, None, None, "teacher", ckpt)
        return model, path
    run_cfg = teacher_run_cfg(cfg)
    teacher_dm = dm
    if run_cfg is not cfg:  # its own augmentation or seed: its own batches (same arrays on disk)
        teacher_dm = build_datamodule(run_cfg)
        teacher_dm.setup()
    # The cached teacher is keyed by its seed, so the weights it starts from must depend on nothing else.
    pl.seed_everything(run_cfg.seed, workers=True, verbose=False)
    model, _, path = obtain_trained(run_cfg, teacher_dm, teacher_model_cfg(teacher), teacher.train,
                                    "teacher", None)
    return model, path


def teacher_spec(cfg) -> tuple | None:
    """(spec, run config, model config, recipe) of the trained-once teacher a job of `cfg` needs, or
    None when it is given a checkpoint: what `obtain_teacher` trains, as stacks of jobs share it."""
    if cfg.method.kind != "distill" or cfg.method.teacher.get("ckpt"):
        return None
    teacher = cfg.method.teacher
    run_cfg = teacher_run_cfg(cfg)
    model_cfg = teacher_model_cfg(teacher)
    return model_spec(run_cfg, model_cfg, teacher.train), run_cfg, model_cfg, teacher.train


def compression_of(cfg):
    """The student's compression (`method.compress`, keys of conf/method/compress.yaml) parsed and
    checked, or None. It runs during the student's own `train.epochs`; its fine-tuning keys
    (finetune_*, baseline_ckpt) do not apply to a distilled student."""
    spec = cfg.method.get("compress")
    if spec is None:
        return None
    return parse(spec)


def _compression_callbacks(cfg) -> list:
    """A fresh CompressionCallback per fit (of the student: the module's `model`), or none."""
    if cfg.method.get("compress") is None:
        return []
    return [CompressionCallback(cfg.method.compress, submodule="model")]


def steps(job):
    """A distillation job's steps (compresslab.steps): returns (metrics, paths)."""
    cfg, dm = job.cfg, job.dm
    method = cfg.method
    compression = compression_of(cfg)
    teacher, teacher_ckpt = obtain_teacher(cfg, dm)
    teacher.eval().requires_grad_(False)
    optimizer, scheduler = to_plain(cfg.train.optimizer), to_plain(cfg.train.scheduler)
    teacher_acc = (yield Evaluate(cfg, Classifier(teacher, dm.num_classes, optimizer), dm))["test_acc"]

    extra = {}
    if method.get("scratch", False):
        pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the distilled student's init
        scratch_module, scratch = yield from train_classifier(cfg, dm, cfg.model, cfg.train,
                                                              job.out_dir / "scratch",
                                                              callbacks=_compression_callbacks(cfg))
        if compression is not None:
            verify(scratch_module.model, compression, list(compression.pipeline))
        extra = {"scratch_test_acc": scratch["test_acc"], "scratch_train_time_s": scratch["train_time_s"]}

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    student = build_model(to_plain(cfg.model), dm.input_shape, dm.num_classes)
    module = Distiller(student, teacher, dm.num_classes, optimizer, scheduler, cfg.train.epochs,
                       temperature=method.temperature, soft_weight=method.soft_weight)
    # Without augmentation every epoch shows the teacher the same inputs: run it once, not per batch.
    if not dm.shift_px:
        dm.train_extra = predict_logits(teacher, dm.x_train, dm.eval_batch_size)
    try:
        with warnings.catch_warnings():  # the frozen teacher is in eval mode on purpose
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
            fitted = yield Fit(cfg, module, dm, job.out_dir, cfg.train.epochs, job.loggers,
                               callbacks=_compression_callbacks(cfg))
    finally:
        dm.train_extra = None

    metrics = {**(yield Evaluate(cfg, module, dm)), "val_acc": fitted["val_acc"],
               "train_time_s": fitted["train_time_s"]}
    total, nonzero = count_params(student)
    teacher_total, _ = count_params(teacher)
    metrics.update(params_total=total, params_nonzero=nonzero, size_fp32_bytes=size_fp32_bytes(student),
                   teacher_test_acc=teacher_acc, student_params=total, teacher_params=teacher_total,
                   params_ratio=teacher_total / total,
                   teacher_agreement=prediction_agreement(predict_logits(student, dm.x_test),
                                                          predict_logits(teacher, dm.x_test)),
                   **extra)
    paths = {"teacher_checkpoint": teacher_ckpt, "lightning_checkpoints": str(job.out_dir / "checkpoints")}
    if compression is not None:
        metrics.update(compressed_student_metrics(student, compression, cfg, dm, job.out_dir / ARTIFACT_FILE))
        paths["artifact"] = str(job.out_dir / ARTIFACT_FILE)
    model_path = save_model(job.out_dir / reuse.MODEL_FILE, student, to_plain(cfg.model), dm.input_shape,
                            dm.num_classes, cfg.data.name,
                            {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics, {"checkpoint": str(model_path), **paths}


def compressed_student_metrics(student, compression, cfg, dm, artifact: Path) -> dict:
    """Targets checked (a miss fails the job), the compression figures and the artifact's size."""
    measured = verify(student, compression, list(compression.pipeline))
    artifact_bytes = save_artifact(artifact, student, to_plain(cfg.model), dm.input_shape, dm.num_classes,
                                   cfg.data.name)
    dense_bytes = state_dict_bytes(student)
    return {**compression_metrics(student, dm.input_shape), "measured": measured,
            "artifact_bytes": artifact_bytes, "state_dict_bytes": dense_bytes,
            "artifact_ratio": dense_bytes / artifact_bytes}
