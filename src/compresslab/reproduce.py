"""Paper reproductions: `python -m compresslab.reproduce NAME` runs one paper's experiment configs
(conf/experiment/) through the real entry point, then prints and writes a table of each published
row beside our value (mean ± std over seeds), the difference, and whether the row's target is met.

    python -m compresslab.reproduce --list
    python -m compresslab.reproduce greydanus2020_mnist1d [--seeds 2] [--quick] [overrides...]
    python -m compresslab.reproduce greydanus2020_mnist1d --table-only     # rebuild the table

A reproduction is one Hydra multirun (one process: imports paid once): its sweep over experiment
configs (and any other key) times the seeds. Its jobs land in `outputs/reproduce/NAME[-quick]/jobs`,
so running the same command again skips the jobs already done for the same config and redoes
failed ones (`force=true` redoes all); the table goes to `outputs/reproduce/NAME[-quick]/table.md`.
Extra arguments are Hydra overrides for every job (e.g. `hydra/launcher=parallel`, `logger=none`).

The published numbers live here, in PAPERS, and nowhere else; each reproduction names its source.
Exit status: 0 when every job ran and every target is met; 1 when a job failed or a target was
missed (with --quick, only failed jobs count: tiny data is not meant to meet the paper's bars).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from compresslab import results

# ---------------------------------------------------------------------------------------------
# Values read from one record, in the unit the paper reports.


def accuracy_pct(record: dict) -> float:
    return 100.0 * record["metrics"]["test_acc"]


def error_pct(record: dict, key: str = "test_acc") -> float:
    return 100.0 * (1.0 - record["metrics"][key])


def errors_of_10k(record: dict, key: str = "test_acc") -> float:
    """Test errors as MNIST papers count them: out of 10,000 test images."""
    return 10_000 * (1.0 - record["metrics"][key])


def metric(key: str, scale: float = 1.0) -> Callable[[dict], float]:
    return lambda record: scale * record["metrics"][key]


def stage_error_pct(transform: str) -> Callable[[dict], float]:
    """Test error (%) after the pipeline stage `transform` of a compressed run (e.g. prune before quantize)."""
    def value(record: dict) -> float:
        for stage in record["metrics"]["stages"]:
            if stage["transform"] == transform:
                return 100.0 * (1.0 - stage["test_acc"])
        raise KeyError(f"no {transform!r} stage in the record")
    return value


def layer_kept_pct(index: int) -> Callable[[dict], float]:
    """Percentage of the weights of the `index`-th Linear/Conv layer that are nonzero."""
    return lambda record: 100.0 * (1.0 - record["metrics"]["layers"][index]["sparsity"])


# ---------------------------------------------------------------------------------------------
# Targets: the "Done when" of the reproductions issue. Each reads our means of the table's rows.


@dataclass(frozen=True)
class Within:
    """|ours − published| ≤ tol."""
    tol: float
    unit: str = "pt"

    def text(self, row: "Row") -> str:
        return f"within {self.tol:g} {self.unit} of the paper"

    def met(self, ours: float, row: "Row", means: dict[str, float]) -> bool:
        return abs(ours - row.published) <= self.tol


@dataclass(frozen=True)
class AtMost:
    """ours ≤ mean of row `ref` + plus (e.g. pruned error ≤ our baseline error + 0.15 pt)."""
    ref: str
    plus: float = 0.0

    def text(self, row: "Row") -> str:
        return f"≤ {self.ref}" + (f" + {self.plus:g}" if self.plus else "")

    def met(self, ours: float, row: "Row", means: dict[str, float]) -> bool:
        return ours <= means[self.ref] + self.plus + 1e-9


@dataclass(frozen=True)
class AtLeast:
    value: float

    def text(self, row: "Row") -> str:
        return f"≥ {self.value:g}"

    def met(self, ours: float, row: "Row", means: dict[str, float]) -> bool:
        return ours >= self.value - 1e-9


@dataclass(frozen=True)
class AtMostValue:
    value: float

    def text(self, row: "Row") -> str:
        return f"≤ {self.value:g}"

    def met(self, ours: float, row: "Row", means: dict[str, float]) -> bool:
        return ours <= self.value


@dataclass(frozen=True)
class Below:
    """ours < mean of row `ref` (strictly better when lower is better)."""
    ref: str

    def text(self, row: "Row") -> str:
        return f"< {self.ref}"

    def met(self, ours: float, row: "Row", means: dict[str, float]) -> bool:
        return ours < means[self.ref]


@dataclass(frozen=True)
class ClosesGap:
    """The distilled student closes ≥ `fraction` of the gap between `student` (alone) and `teacher`:
    (student − ours) / (student − teacher) ≥ fraction, in errors (lower is better)."""
    student: str
    teacher: str
    fraction: float = 0.5

    def text(self, row: "Row") -> str:
        return f"closes ≥ {self.fraction:.0%} of the {self.student}–{self.teacher} gap"

    def gap_closed(self, ours: float, means: dict[str, float]) -> float:
        gap = means[self.student] - means[self.teacher]
        return (means[self.student] - ours) / gap if gap > 0 else float("nan")

    def met(self, ours: float, row: "Row", means: dict[str, float]) -> bool:
        return self.gap_closed(ours, means) >= self.fraction


# ---------------------------------------------------------------------------------------------
# Reproductions.


@dataclass(frozen=True)
class Row:
    key: str                          # how targets of other rows refer to this one
    label: str                        # what the paper reports, in its words
    where: dict                       # overrides that pick this row's jobs, e.g. {"experiment": "x"}
    value: Callable[[dict], float]    # record -> our value, in the unit of `published`
    published: float | None = None    # None: the paper has no such figure (the row is ours only)
    unit: str = ""
    target: object = None             # Within / AtMost / AtLeast / Below / ClosesGap, or None
    digits: int = 2


@dataclass(frozen=True)
class Reproduction:
    name: str
    title: str
    source: str
    sweep: tuple[str, ...]            # multirun overrides (the seeds are added)
    rows: tuple[Row, ...]
    seeds: int = 2
    quick: tuple[str, ...] = ()       # overrides that shrink every job to a smoke test
    budget_min: float = 30.0          # the bar for one run on a 2-core CPU
    notes: str = ""


def _exp(name: str, **more) -> dict:
    return {"experiment": name, **{k.replace("__", "."): str(v) for k, v in more.items()}}


_MNIST1D = "greydanus2020_mnist1d"
_MNIST1D_ARMS = ("logreg", "mlp", "cnn", "gru", "cnn_prune", "cnn_quantize", "cnn_prune_quantize")

# Overrides that make every job of a reproduction a smoke test (tiny data, one epoch).
_QUICK = ("data.max_train=512", "data.max_test=256", "train.epochs=1")
# Four fine-tuning epochs: the iterative schedules retrain at least one epoch per prune round (4 rounds).
# `++`: a multirun over experiment configs first composes the primary config without them, where
# `method` is the baseline's and has no such key.
_QUICK_COMPRESS = (*_QUICK, "++method.finetune_epochs=4")

def _han2015(model: str, title_model: str, tables: str, base_err: float, pruned_err: float,
             kept_k: float, kept_pct: dict[str, float]) -> Reproduction:
    """Han et al. 2015's rows for one model: errors, parameters, compression, weights kept per layer,
    for their per-layer threshold recipe (the main rows) and for one global ranking at the same
    overall rate (ours, for comparison)."""
    exp, ranked = _exp(f"han2015_{model}"), _exp(f"han2015_{model}_global")
    return Reproduction(
        name=f"han2015_{model}",
        title=f"Iterative pruning with retraining, per-layer thresholds (quality × std), {title_model} on MNIST",
        source=f"Han, Pool, Tran, Dally 2015, Learning both Weights and Connections (NIPS), {tables}",
        sweep=(f"experiment=han2015_{model},han2015_{model}_global",), seeds=2, quick=_QUICK_COMPRESS,
        rows=(
            Row("base_err", "baseline test error", exp, lambda r: error_pct(r, "baseline_test_acc"),
                base_err, "%", None),
            Row("pruned_err", "pruned + retrained test error", exp, error_pct, pruned_err, "%",
                AtMost("base_err", 0.15)),
            Row("params", "parameters kept (thousands)", exp, metric("params_nonzero", 1e-3), kept_k, "K",
                None, 1),
            Row("ratio", "compression ratio (total / nonzero)", exp, metric("compression_ratio"), 12.0, "×",
                AtLeast(12.0), 1),
            *(Row(layer, f"weights kept, {layer}", exp, layer_kept_pct(i), pct, "%", Within(5.0), 1)
              for i, (layer, pct) in enumerate(kept_pct.items())),
            Row("global_err", "ours: one global magnitude ranking to the same rate, test error", ranked,
                error_pct, None, "%", None),
            Row("global_ratio", "ours: global ranking, compression ratio", ranked, metric("compression_ratio"),
                None, "×", None, 1),
            *(Row(f"global_{layer}", f"ours: global ranking, weights kept, {layer}", ranked, layer_kept_pct(i),
                  pct, "%", None, 1) for i, (layer, pct) in enumerate(kept_pct.items())),
        ),
        notes="Main rows: the paper's recipe, each layer pruned at quality × its std (the qualities in "
              f"conf/experiment/han2015_{model}.yaml), the threshold rising to it over the prune → "
              "retrain rounds. The global rows rank all weights at once to one rate, which lets the small last layer "
              "keep far more than the paper's.",
    )


def hidden_params_pct(record: dict) -> float:
    """Parameters of the hidden layers (all but the output layer) of the shrunk model, % of the dense's."""
    shrunk = record["metrics"]["shrunk"]
    dense = record["metrics"]["layers"][:-1]
    small = sum(n_in * n_out + n_out for name, (n_in, n_out) in shrunk["sizes"].items()
                if name != record["metrics"]["layers"][-1]["name"])
    return 100.0 * small / sum(lay["params"] for lay in dense)


def _deep_compression(model: str, title_model: str, sharing: str, base_err: float, final_err: float,
                      dense_kb: float, before_x: float | None, paper_kb: float, paper_x: float) -> Reproduction:
    """Deep Compression's rows for one model: errors, the sizes in the paper's own count (before and
    after Huffman coding) and our artifact's bytes on disk."""
    exp = _exp(f"deep_compression_{model}")
    return Reproduction(
        name=f"deep_compression_{model}",
        title=f"Pruning + {sharing} + Huffman coding, {title_model} on MNIST",
        source=f"Han, Mao, Dally 2016, Deep Compression (ICLR), Tables 1-{2 if model == 'lenet300' else 3}",
        sweep=(f"experiment=deep_compression_{model}",), seeds=2, quick=_QUICK_COMPRESS,
        budget_min=30.0 if model == "lenet300" else 60.0,
        rows=(
            Row("base_err", "baseline test error", exp, lambda r: error_pct(r, "baseline_test_acc"), base_err,
                "%", None),
            Row("pruned_err", "pruned test error (before weight sharing)", exp, stage_error_pct("prune"), None,
                "%", None),
            Row("final_err", "pruned + shared test error", exp, error_pct, final_err, "%",
                AtMost("base_err", 0.1)),
            Row("dense_kb", "fp32 size (KB of 1000 bytes, as the paper)", exp, metric("size_fp32_bytes", 1e-3),
                dense_kb, "KB", None, 1),
            Row("before_x", "the paper's count before Huffman coding: fixed-width relative indices + codes + "
                "codebooks, fp32 biases (fp32 size / that)", exp, metric("paper_ratio_before_huffman"), before_x,
                "×", None, 1),
            Row("paper_kb", "the paper's count after Huffman coding (KB): coded indices + codes, codebooks, "
                "code tables, fp32 biases", exp, metric("paper_bytes", 1e-3), paper_kb, "KB", None, 1),
            Row("paper_x", "compression in the paper's count (fp32 size / that)", exp, metric("paper_ratio"),
                paper_x, "×", None, 1),
            Row("artifact_kb", "our artifact, model.clz, on disk (KB)", exp, metric("artifact_bytes", 1e-3),
                paper_kb, "KB", None, 1),
            Row("artifact_x", "artifact ratio on disk (fp32 state_dict file / model.clz)", exp,
                metric("artifact_ratio"), paper_x, "×", AtLeast(paper_x), 1),
        ),
        notes="Our artifact is the bytes on disk: the paper's count plus the header (model config, "
              "tensor shapes, checksum). Both counts are computed by the code that writes the file "
              "(compresslab/compression/export.py).",
    )


PAPERS: dict[str, Reproduction] = {r.name: r for r in (
    Reproduction(
        name=_MNIST1D,
        title="MNIST-1D baselines, then the CNN pruned and quantized",
        source="Greydanus 2020, Scaling Down Deep Learning (arXiv:2011.14439), Table/Fig. 'benchmarks'; "
               "recipe: Adam lr 1e-2, batch 100, 6000 steps",
        sweep=("experiment=" + ",".join(f"{_MNIST1D}_{a}" for a in _MNIST1D_ARMS),),
        seeds=2, budget_min=5.0,
        quick=(*_QUICK, "++method.finetune_epochs=3"),   # ++: see _QUICK_COMPRESS
        rows=(
            Row("logreg", "logistic regression, test accuracy", _exp(f"{_MNIST1D}_logreg"), accuracy_pct,
                32.0, "%", Within(4.0), 1),
            Row("mlp", "MLP, test accuracy", _exp(f"{_MNIST1D}_mlp"), accuracy_pct, 68.0, "%", Within(4.0), 1),
            Row("cnn", "CNN, test accuracy", _exp(f"{_MNIST1D}_cnn"), accuracy_pct, 94.0, "%", Within(4.0), 1),
            Row("gru", "GRU, test accuracy", _exp(f"{_MNIST1D}_gru"), accuracy_pct, 91.0, "%", Within(4.0), 1),
            Row("cnn_pruned", "CNN pruned (50%, fine-tuned), test accuracy", _exp(f"{_MNIST1D}_cnn_prune"),
                accuracy_pct, None, "%", None, 1),
            Row("cnn_pruned_x", "CNN pruned, compression ratio", _exp(f"{_MNIST1D}_cnn_prune"),
                metric("compression_ratio"), None, "×", None, 2),
            Row("cnn_quant", "CNN quantized (4-bit, QAT), test accuracy", _exp(f"{_MNIST1D}_cnn_quantize"),
                accuracy_pct, None, "%", None, 1),
            Row("cnn_pq", "CNN pruned + 4-bit k-means, test accuracy", _exp(f"{_MNIST1D}_cnn_prune_quantize"),
                accuracy_pct, None, "%", None, 1),
            Row("cnn_pq_artifact", "CNN pruned + 4-bit k-means, artifact ratio (fp32 file / artifact, on disk)",
                _exp(f"{_MNIST1D}_cnn_prune_quantize"), metric("artifact_ratio"), None, "×", None, 1),
        ),
        notes="The paper compresses nothing: the last rows are ours (no published figure), a compression "
              "study on a benchmark that trains in seconds; their baseline is our CNN row.",
    ),
    _han2015("lenet300", "LeNet-300-100", "Tables 1-2", base_err=1.64, pruned_err=1.59, kept_k=22.0,
             kept_pct={"fc1": 8.0, "fc2": 9.0, "fc3": 26.0}),
    _han2015("lenet5", "LeNet-5 (Caffe)", "Tables 1, 3", base_err=0.80, pruned_err=0.77, kept_k=36.0,
             kept_pct={"conv1": 66.0, "conv2": 12.0, "fc1": 8.0, "fc2": 19.0}),
    _deep_compression("lenet300", "LeNet-300-100", "6-bit k-means weight sharing", base_err=1.64,
                      final_err=1.58, dense_kb=1070.0, before_x=32.0, paper_kb=27.0, paper_x=40.0),
    _deep_compression("lenet5", "LeNet-5 (Caffe)", "k-means weight sharing, conv 8 bits / fc 5 bits",
                      base_err=0.80, final_err=0.74, dense_kb=1720.0, before_x=None, paper_kb=44.0,
                      paper_x=39.0),
    Reproduction(
        name="structured_lenet300",
        title="Structured pruning of half the hidden units of LeNet-300-100, exported as a smaller dense model",
        source="ours (no paper): the removed units really removed, as Torch-Pruning and NNI's ModelSpeedup do",
        sweep=("experiment=structured_lenet300",), seeds=2, quick=_QUICK_COMPRESS,
        rows=(
            Row("base_err", "baseline test error", _exp("structured_lenet300"),
                lambda r: error_pct(r, "baseline_test_acc"), None, "%", None),
            Row("pruned_err", "half the hidden units pruned, fine-tuned, test error",
                _exp("structured_lenet300"), error_pct, None, "%", None),
            Row("hidden", "hidden layers' parameters kept (small / dense, %)", _exp("structured_lenet300"),
                hidden_params_pct, None, "%", None, 1),
            Row("diff", "max |small model − masked model| over 2048 test inputs", _exp("structured_lenet300"),
                lambda r: r["metrics"]["shrunk"]["max_abs_diff"], None, "", AtMostValue(1e-5), 7),
            Row("speed1", "CPU speedup at batch 1 (dense / small latency)", _exp("structured_lenet300"),
                lambda r: r["metrics"]["shrunk"]["speedup_batch1"], None, "×", None),
            Row("speed256", "CPU speedup at batch 256 (dense / small latency)", _exp("structured_lenet300"),
                lambda r: r["metrics"]["shrunk"]["speedup_batch256"], None, "×", AtLeast(1.0)),
        ),
        notes="The small model (model_small.clz) loads with compresslab.load_artifact on its own. Latency: "
              "median of 5 alternated rounds of each model on the same CPU, in the job itself.",
    ),
    Reproduction(
        name="hinton2015_mnist",
        title="Knowledge distillation at T = 20, MNIST, 784-1200-1200-10 teacher → 784-800-800-10 student",
        source="Hinton, Vinyals, Dean 2015, Distilling the Knowledge in a Neural Network, section 3",
        sweep=("experiment=hinton2015_mnist",), seeds=2,
        quick=(*_QUICK, "method.teacher.train.epochs=1"),
        rows=(
            Row("teacher", "teacher test errors (dropout, jitter)", _exp("hinton2015_mnist"),
                lambda r: errors_of_10k(r, "teacher_test_acc"), 67.0, "errors", None, 1),
            Row("scratch", "student alone, test errors", _exp("hinton2015_mnist"),
                lambda r: errors_of_10k(r, "scratch_test_acc"), 146.0, "errors", None, 1),
            Row("distilled", "student with soft targets (T = 20), test errors", _exp("hinton2015_mnist"),
                errors_of_10k, 74.0, "errors", ClosesGap("scratch", "teacher", 0.5), 1),
        ),
        notes="Errors are counted out of 10,000 test images ((1 − accuracy) × 10,000, also in --quick runs).",
    ),
    Reproduction(
        name="zhu2017_agp",
        title="Gradual (cubic) pruning against one-shot pruning at the same sparsity, LeNet-300-100 on MNIST",
        source="Zhu & Gupta 2017, To prune, or not to prune (arXiv:1710.01878), eq. 1",
        # The highest sparsity first, one-shot then gradual: a run cut short has the pairs that matter most.
        sweep=("method.rate=0.98,0.95,0.9", "experiment=zhu2017_agp_oneshot,zhu2017_agp_gradual"),
        seeds=2, quick=(*_QUICK_COMPRESS, "++method.prune_every=2"),  # 16 quick steps: update masks often
        rows=tuple(
            row for rate, label in ((0.9, "90"), (0.95, "95"), (0.98, "98")) for row in (
                Row(f"oneshot{label}", f"one-shot pruning to {label}% + fine-tuning, test error",
                    _exp("zhu2017_agp_oneshot", method__rate=rate), error_pct, None, "%", None),
                Row(f"gradual{label}", f"gradual pruning to {label}%, same budget, test error",
                    _exp("zhu2017_agp_gradual", method__rate=rate), error_pct, None, "%",
                    Below(f"oneshot{label}") if rate > 0.9 else None),
            )),
        notes="Zhu & Gupta publish no LeNet-300-100 figures; the claim tested is theirs: at high sparsity "
              "gradual pruning beats one-shot pruning given the same training budget.",
    ),
)}


# ---------------------------------------------------------------------------------------------
# The table.


@dataclass
class RowResult:
    row: Row
    values: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)   # one-line errors of this row's failed jobs

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    out = {}
    for o in overrides:
        if "=" in o:
            key, value = o.split("=", 1)
            out[key.lstrip("+~")] = value
    return out


def _same(a: str, b: str) -> bool:
    try:
        return math.isclose(float(a), float(b))
    except ValueError:
        return a == b


def matches(record: dict, where: dict, seeds: list[int] | None = None) -> bool:
    given = parse_overrides(record.get("overrides", []))
    if seeds is not None and record.get("seed") not in seeds:
        return False
    return all(k in given and _same(given[k], str(v)) for k, v in where.items())


def collect(repro: Reproduction, records: list[dict], seeds: list[int] | None = None) -> list[RowResult]:
    """Our values of each row from the records (a record whose seed is not in `seeds` is left out)."""
    out = []
    for row in repro.rows:
        result = RowResult(row)
        for record in records:
            if not matches(record, row.where, seeds):
                continue
            if record["status"] != "ok":
                result.failed.append(record.get("error") or "failed")
                continue
            try:
                result.values.append(float(row.value(record)))
            except (KeyError, IndexError, TypeError, ZeroDivisionError) as e:
                result.failed.append(f"the record lacks this figure ({type(e).__name__}: {e})")
        out.append(result)
    return out


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def verdict(result: RowResult, means: dict[str, float]) -> str:
    row = result.row
    if row.target is None:
        return ""
    if result.mean is None:
        return "not run" if not result.failed else "FAILED"
    try:
        ok = row.target.met(result.mean, row, means)
    except KeyError as e:
        return f"n/a (no value for {e})"
    extra = ""
    if isinstance(row.target, ClosesGap):
        closed = row.target.gap_closed(result.mean, means)
        extra = (f" (closes {closed:.0%})" if not math.isnan(closed)
                 else f" (no gap: {row.target.student} is not worse than {row.target.teacher})")
    return ("met" if ok else "MISSED") + extra


def build_table(repro: Reproduction, results_: list[RowResult], quick: bool = False) -> str:
    """The Markdown table: one line per published (or our-only) row."""
    means = {r.row.key: r.mean for r in results_ if r.mean is not None}
    lines = ["| row | paper | ours (mean ± std, n) | ours − paper | target | |",
             "|---|---:|---:|---:|---|---|"]
    for res in results_:
        row = res.row
        unit = f" {row.unit}" if row.unit and row.unit != "×" else row.unit
        paper = "—" if row.published is None else f"{row.published:g}{unit}"
        if res.mean is None:
            ours = "failed: " + res.failed[0] if res.failed else "no record"
            diff = "—"
        else:
            spread = f" ± {_num(res.std, row.digits)}" if res.std is not None else ""
            ours = f"{_num(res.mean, row.digits)}{spread}{unit} (n={len(res.values)})"
            if res.failed:
                ours += f", {len(res.failed)} failed"
            diff = "—" if row.published is None else f"{res.mean - row.published:+.{row.digits}f}"
        target = row.target.text(row) if row.target is not None else ""
        lines.append(f"| {row.label} | {paper} | {ours} | {diff} | {target} | {verdict(res, means)} |")
    if quick:
        lines.append("")
        lines.append("*--quick: tiny data and one epoch; a smoke test of the pipeline, not the paper's recipe, "
                     "so targets are not expected to be met.*")
    return "\n".join(lines)


def targets_met(repro: Reproduction, results_: list[RowResult]) -> tuple[int, int]:
    means = {r.row.key: r.mean for r in results_ if r.mean is not None}
    checked = [verdict(r, means) for r in results_ if r.row.target is not None]
    return sum(v.startswith("met") for v in checked), len(checked)


# ---------------------------------------------------------------------------------------------
# Running.


def run_dir(name: str, quick: bool, root: Path | None = None) -> Path:
    root = Path(root or os.environ.get("COMPRESSLAB_ROOT", "."))
    return root / "outputs" / "reproduce" / (f"{name}-quick" if quick else name)


def command(repro: Reproduction, seeds: list[int], quick: bool, jobs_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "compresslab.train", "-m", *repro.sweep,
            "seed=" + ",".join(str(s) for s in seeds),
            *(repro.quick if quick else ()), "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={jobs_dir}",
            # Numbered job dirs: the default names jobs by the overrides that vary across the sweep,
            # which it can only work out when the sweep dir is its own default, not given as here.
            # The same command numbers its jobs the same way, so re-runs still skip finished jobs.
            "hydra.sweep.subdir=${hydra.job.num}", *extra]


def read_records(jobs_dir: Path) -> list[dict]:
    found = []
    for path in sorted(Path(jobs_dir).rglob(results.FILENAME)):
        try:
            found.append(results.read(path))
        except results.SchemaError as e:
            print(f"compresslab-reproduce: skipped {e}", file=sys.stderr)
    return found


def report(repro: Reproduction, out: Path, seeds: list[int], quick: bool, header: list[str]) -> tuple[str, int, int]:
    rows = collect(repro, read_records(out / "jobs"), seeds)
    table = build_table(repro, rows, quick)
    met, checked = targets_met(repro, rows)
    text = "\n".join([f"## {repro.name}: {repro.title}", "", f"Source: {repro.source}.", "", *header,
                      "", table, "", f"Targets met: {met} of {checked}."]
                     + (["", repro.notes] if repro.notes else [])) + "\n"
    (out / "table.md").write_text(text)
    return text, met, checked


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished children (and theirs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="compresslab-reproduce",
        description="Run one paper's experiments and print the published table beside ours.")
    parser.add_argument("name", nargs="?", help="the reproduction (see --list)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job")
    parser.add_argument("--list", action="store_true", help="list the reproductions and exit")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: the reproduction's)")
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run: tiny data, one epoch")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the jobs already run")
    args = parser.parse_intermixed_args(argv)

    if args.list or not args.name:
        for r in PAPERS.values():
            print(f"{r.name:28s} {r.title} (≤ {r.budget_min:g} min on 2 CPU cores; {r.seeds} seeds)")
        return 0 if args.list else 2
    if args.name not in PAPERS:
        print(f"compresslab-reproduce: unknown reproduction {args.name!r}; choose one of "
              f"{', '.join(PAPERS)} (--list)", file=sys.stderr)
        return 2
    repro = PAPERS[args.name]
    n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else repro.seeds)
    if n_seeds < 1:
        print("compresslab-reproduce: --seeds must be at least 1", file=sys.stderr)
        return 2
    seeds = list(range(n_seeds))
    out = run_dir(repro.name, args.quick)
    out.mkdir(parents=True, exist_ok=True)
    cmd = command(repro, seeds, args.quick, out / "jobs", args.overrides)
    shown = "python -m compresslab.reproduce " + " ".join(
        [repro.name, *(["--quick"] if args.quick else []), f"--seeds {n_seeds}", *args.overrides])
    header = [f"Command: `{shown}`"]
    rc = 0
    if not args.table_only:
        print("compresslab-reproduce: running " + " ".join(cmd[1:]), flush=True)
        started_at, start, cpu_start = time.time(), time.perf_counter(), _children_cpu_s()
        rc = subprocess.call(cmd)
        elapsed, cpu = time.perf_counter() - start, _children_cpu_s() - cpu_start
        earlier = [r for r in read_records(out / "jobs") if r["job"].get("started", started_at) < started_at
                   and r["status"] == "ok" and r.get("seed") in seeds]
        # On a shared machine the wall time says more about the neighbours than about the run;
        # the CPU time of all its processes (user + sys) does not.
        header.append(f"Wall time: {elapsed / 60:.1f} min, CPU time of all jobs: {cpu / 60:.1f} min "
                      f"({n_seeds} seed{'s' * (n_seeds > 1)}; bar: ≤ {repro.budget_min:g} min on a "
                      f"2-core CPU). Jobs: `{out / 'jobs'}`.")
        if earlier:
            header.append(f"The sweep skipped {len(earlier)} jobs an earlier run of this command had done "
                          "for the same configs: the times above are those of the other jobs only.")
        if rc:
            header.append(f"The sweep exited with status {rc}: some jobs failed (their rows say so).")
    elif (out / "table.md").is_file():  # keep the measured times of the run that made the records
        header += [line for line in (out / "table.md").read_text().splitlines()
                   if line.startswith(("Wall time:", "The sweep exited", "The sweep skipped"))]
    text, met, checked = report(repro, out, seeds, args.quick, header)
    print(text)
    print(f"compresslab-reproduce: table written to {out / 'table.md'}")
    return rc if rc else (0 if met == checked or args.quick else 1)


def cli() -> None:
    """The `compresslab-reproduce` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
