"""Refusing config keys that nothing reads: `+method.rat=0.5` must not run at the default rate.

A key is known when a file of its config group under conf/ has it (any option of the group, and
any experiment or sweep file that sets it), or when the code it is handed to takes it as an argument:
the model class of `model.arch`, torch's optimizers (`train.optimizer`), the lr schedules
(`train.scheduler`), the data module (`data`), Lightning's Trainer (`trainer`). Method keys are those
of the method files of the same `method.kind` (a distillation run reads no prune rate). A key that
none of these has fails the job before any training, naming the nearest known key.

The Trainer arguments that the project sets itself (max_epochs from train.epochs, ...) are refused
too, with the key that sets them: they would be overridden or collide.
"""

from __future__ import annotations

import difflib
import inspect
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

from compresslab.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Keys of the code that no yaml file sets by default.
SCHEDULER_KEYS = ("name", "step_size", "gamma", "pct_start")
# Trainer arguments the project passes itself, with the key that sets each (None: no key does).
TRAINER_SET_BY = {"max_epochs": "train.epochs (method.finetune_epochs for fine-tuning)",
                  "min_epochs": "train.epochs", "max_steps": "train.epochs", "logger": "logger=<option>",
                  "default_root_dir": "paths.output_dir", "deterministic": "the top-level key deterministic",
                  "callbacks": None, "enable_checkpointing": None, "enable_model_summary": None,
                  "plugins": None}
GROUPS = ("data", "model", "train", "trainer", "logger", "paths")
# Groups whose keys are not ours to check (Hydra checks its own).
UNCHECKED = ("hydra",)
# Keys of `method.teacher` beside its model config.
TEACHER_RUN_KEYS = ("ckpt", "train", "data", "seed")


def check(config: dict, conf_dir: Path = CONF_DIR) -> None:
    """Raise ConfigError for the first key of the resolved job `config` that nothing reads."""
    known = _known(str(conf_dir))
    kind = (config.get("method") or {}).get("kind")
    for path in leaves(config):
        head, rest = path[0], path[1:]
        if head in UNCHECKED:
            continue
        if head == "trainer" and rest and rest[0] in TRAINER_SET_BY:
            by = TRAINER_SET_BY[rest[0]]
            raise ConfigError(f"trainer.{rest[0]} is set by {by}; set that instead of trainer.{rest[0]}" if by
                              else f"trainer.{rest[0]} is set by compresslab itself; remove it")
        if rest and (head in GROUPS + ("method",) or head in known["top_groups"]):
            prefix, key, candidates = f"{head}.", ".".join(rest), _group_keys(known, head, kind)
        else:
            prefix, key, candidates = "", ".".join(path), known["top"]
        if key not in candidates:
            near = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{near[0]}?" if near else "; remove it"
            raise ConfigError(f"unknown config key {prefix}{key}: nothing reads it{hint}")


# Mappings whose keys are the user's own (parameter-name patterns): the compression config checks
# their settings (compression/layers.py), so they count as one leaf here.
FREE_FORM = (("method", "layers"), ("method", "compress", "layers"))


def leaves(node, path: tuple = ()):
    """Paths (tuples of keys) of the leaves of a nested dict; lists, empty dicts and the FREE_FORM
    mappings are leaves."""
    if isinstance(node, dict) and node and path not in FREE_FORM:
        for k, v in node.items():
            yield from leaves(v, (*path, str(k)))
    elif path:
        yield path


def _group_keys(known: dict, head: str, kind) -> set[str]:
    if head != "method":
        return known[head]
    # A teacher is a model config plus its run keys; a student's compression has the compress keys.
    teacher = ({f"teacher.{k}" for k in known["model"] | set(TEACHER_RUN_KEYS)}
               | {f"teacher.train.{k}" for k in known["train"]}
               | {f"teacher.data.{k}" for k in known["data"]})
    compress = {f"compress.{k}" for k in known["method:compress"]}
    own = known.get(f"method:{kind}", known["method"])
    return own | (teacher | compress if kind == "distill" else set())



@lru_cache(maxsize=4)
def _known(conf_dir: str) -> dict[str, set[str]]:
    conf = Path(conf_dir)
    known: dict[str, set[str]] = {}
    for group in GROUPS:
        known[group] = set()
        for f in sorted((conf / group).glob("*.yaml")):
            known[group] |= _paths(_load(f))
    method_files = {f.stem: f for f in sorted((conf / "method").glob("*.yaml"))}
    known["method"] = set()
    for stem, f in method_files.items():
        key = f"method:{_kind(stem, method_files)}"
        known[key] = known.get(key, set()) | _paths(_load(f))
        known["method"] |= known[key]
    known["top"] = set(_load(conf / "train.yaml"))
    known["top_groups"] = set()
    # Experiments and sweeps are global packages: whatever they set is a key someone reads.
    for f in [*sorted((conf / "experiment").glob("*.yaml")), *sorted((conf / "sweep").glob("*.yaml"))]:
        for key, value in _load(f).items():
            if key == "hydra":
                continue
            paths = _paths(value) if isinstance(value, dict) else set()
            if key == "method":
                option = _method_option(f)
                kinds = [f"method:{_kind(option, method_files)}"] if option in method_files else \
                    [k for k in known if k.startswith("method:")]
                for k in ["method", *kinds]:
                    known[k] |= paths
            elif key in GROUPS:
                known[key] |= paths
            else:
                known["top"].add(key)
                if paths:
                    known["top_groups"].add(key)
                    known[key] = known.get(key, set()) | paths
    _add_code_keys(known)
    return known


def _add_code_keys(known: dict) -> None:
    import pytorch_lightning as pl

    from compresslab.data import TensorDataModule
    from compresslab.models import ARCHITECTURES
    from compresslab.modules.classifier import OPTIMIZERS

    for cls in ARCHITECTURES.values():
        known["model"] |= _params(cls.__init__, skip=("input_shape", "num_classes"))
    known["data"] |= _params(TensorDataModule.__init__, skip=("seed", "source_options"))
    known["train"] |= {f"optimizer.{p}" for cls in OPTIMIZERS.values()
                       for p in _params(cls.__init__, skip=("params",))}
    known["train"] |= {f"scheduler.{k}" for k in SCHEDULER_KEYS}
    known["trainer"] |= _params(pl.Trainer.__init__)


def _params(fn, skip=()) -> set[str]:
    return {name for name, p in inspect.signature(fn).parameters.items()
            if name != "self" and name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _load(path: Path) -> dict:
    body = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    body.pop("defaults", None)
    return body


def _method_option(path: Path) -> str | None:
    """The method option an experiment file picks (`override /method: prune`), if it picks one."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    for entry in raw.get("defaults", []):
        if isinstance(entry, dict):
            for k, v in entry.items():
                if k.split()[-1].strip("/") == "method":
                    return v
    return None


def _kind(stem: str, files: dict) -> str | None:
    """A method file's kind: its own, or that of the file its defaults list names first."""
    raw = OmegaConf.to_container(OmegaConf.load(files[stem]), resolve=False)
    if "kind" in raw:
        return raw["kind"]
    for entry in raw.get("defaults", []):
        if isinstance(entry, str) and entry != "_self_" and entry in files:
            return _kind(entry, files)
    return None


def _paths(body, depth: int | None = None, prefix: str = "") -> set[str]:
    """Dotted paths of every key in `body`, nodes and leaves alike."""
    out = set()
    if not isinstance(body, dict):
        return out
    for k, v in body.items():
        path = f"{prefix}{k}"
        out.add(path)
        if isinstance(v, dict) and v and (depth is None or depth > 1):
            out |= _paths(v, None if depth is None else depth - 1, f"{path}.")
    return out
