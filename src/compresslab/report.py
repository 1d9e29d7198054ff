"""The report of one or more sweeps: `python -m compresslab.report DIR... [--out DIR]
[--reference CONFIG] [--wandb]` (or `compresslab-report`).

Reads every result.json under the given dirs and writes into the output dir:
- `jobs.csv`: one row per job, ok or failed, with its config label and every scalar metric;
- `table.md` and `configs.csv`: one row per config (jobs that differ only in seed or CV fold), mean ±
  sample std over those repeats of test and validation accuracy (with data.cv.* the validation split
  is the held-out fold), accuracy change vs the baseline, compression ratio, artifact ratio and
  theoretical speedup (printed too); then the paired comparison with the reference (default: each
  job's own baseline or teacher; `--reference CONFIG` another config): the mean difference over the
  jobs sharing a seed and fold, its 95% interval (corrected resampled t over CV folds, bootstrap over
  seeds), P(A > reference) and a mark where the interval excludes 0 after Holm's correction over the
  table (docs/studies.md);
- `pareto_<x>.png`: mean test accuracy (95% interval) of each config against compression ratio,
  artifact bytes and multiply-accumulates (MACs), one series per method, the Pareto front (no other config is better on
  both axes) drawn;
- `accuracy_vs_compression_ratio.png`: one curve per series (method and every swept key but the
  operating point: magnitude and random pruning side by side) with its 95% band, the dense control as
  a horizontal band; `sensitivity.png`: a sensitivity scan's curve per layer;
- `report.html`: the table, the notes and every figure (embedded) in one self-contained page.
Failed jobs, job dirs without a result (interrupted) and unreadable records are listed, not fatal;
a comparison that cannot be made is a note and the rest of the report is still written; no record at
all, a missing dir or a record of a newer schema is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from compresslab import results, stats
from compresslab.configs import flatten
from compresslab.sweep import scan

# Config keys a config's repeats differ in: mean ± std is taken over them (a repeated k-fold
# cross-validation draws its r splits with r values of data.split_seed).
REPEAT_KEYS = ("seed", "data.cv.fold", "data.split_seed")
# Config keys that say where things go or how they run, not what is computed.
IGNORED_KEYS = (*results.NON_RESULT_KEYS, "threads", "tags", "task_name")
# Config keys that place a config on its curve: the other swept keys tell the curves apart.
OPERATING_KEYS = ("method.rate", "method.threshold", "method.bits", "method.scale")
SENSITIVITY_KEY = "method.single_layer"
ALPHA = 1 - stats.CONFIDENCE


class ReportError(Exception):
    """The report cannot be made from what was given (no records, a newer schema, a missing dir)."""


# ---------------------------------------------------------------------------------------------
# Pure figures.

def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def pareto_front(points: list[tuple[float, float]], x_higher_better: bool) -> list[bool]:
    """For each (x, accuracy) point, whether no other point is at least as good on both axes and
    better on one."""
    sign = 1 if x_higher_better else -1

    def dominates(q, p):
        return (sign * q[0] >= sign * p[0] and q[1] >= p[1]
                and (sign * q[0] > sign * p[0] or q[1] > p[1]))

    return [not any(dominates(q, p) for q in points if q is not p) for p in points]


def is_repeat_key(key: str) -> bool:
    """Seeds (the job's and those derived from it, like a teacher's) and the CV fold."""
    return key in REPEAT_KEYS or key.endswith(".seed")


def identity(record: dict) -> dict:
    """What makes a job's config, repeats aside: its flattened config, or (a record of a job that
    failed before its config resolved) its overrides."""
    if isinstance(record.get("config"), dict):
        flat = flatten(record["config"])
    else:
        flat = dict(o.lstrip("+~").split("=", 1) for o in record.get("overrides", []) if "=" in o)
    return {k: v for k, v in flat.items()
            if not is_repeat_key(k) and k.split(".")[0] not in IGNORED_KEYS}


# Figures by what the methods write: compression (compression_ratio, artifact_*, macs_*,
# baseline_test_acc, delta_test_acc), distillation (params_ratio, teacher_test_acc), any (params_*).
def compression_ratio(m: dict) -> float | None:
    if m.get("compression_ratio") is not None:
        return m["compression_ratio"]
    if m.get("params_ratio") is not None:  # a distilled student: teacher params / student params
        return m["params_ratio"]
    if m.get("params_total") and m.get("params_nonzero"):
        return m["params_total"] / m["params_nonzero"]
    return None


def artifact_bytes(m: dict) -> float | None:
    return m.get("artifact_bytes") if m.get("artifact_bytes") is not None else m.get("size_fp32_bytes")


def delta_acc(m: dict) -> float | None:
    if m.get("delta_test_acc") is not None:
        return m["delta_test_acc"]
    reference = m.get("baseline_test_acc", m.get("teacher_test_acc"))
    if reference is not None and m.get("test_acc") is not None:
        return m["test_acc"] - reference
    return None


FIGURES = {  # column -> (header, function of the metrics, format)
    "test_acc": ("test acc (%)", lambda m: _pct(m.get("test_acc")), "{:.2f}"),
    "val_acc": ("val acc (%)", lambda m: _pct(m.get("val_acc")), "{:.2f}"),  # the CV fold's score
    "delta": ("Δ acc (pp)", lambda m: _pct(delta_acc(m)), "{:+.2f}"),
    "compression_ratio": ("compression ratio (×)", compression_ratio, "{:.1f}"),
    "artifact_ratio": ("artifact ratio (×)", lambda m: m.get("artifact_ratio"), "{:.1f}"),
    "speedup": ("theoretical speedup (×)", lambda m: m.get("theoretical_speedup"), "{:.1f}"),
}
TABLE_NOTE = ("Mean ± sample std over the seeds and CV folds of each config. Δ acc: vs the baseline a "
              "compressed job started from, or a distilled student's teacher. Compression ratio: "
              "params / nonzero params; for a distilled student, teacher params / student params.\n")
PLOTS = {  # file stem -> (x label, function of the metrics, higher is better)
    "compression_ratio": ("compression ratio (params / nonzero params)", compression_ratio, True),
    "artifact_bytes": ("artifact size (bytes)", artifact_bytes, False),
    "macs": ("multiply-accumulates per sample (nonzero weights)", lambda m: m.get("macs_nonzero"), False),
}


def _pct(value):
    return None if value is None else 100 * value


# ---------------------------------------------------------------------------------------------
# Records -> groups.

@dataclass
class Group:
    method: str
    identity: dict
    records: list[dict] = field(default_factory=list)
    label: str = ""
    varying: tuple = ()  # the keys telling this config from the others of its method

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "ok"]

    def stat(self, fn) -> tuple[float | None, float | None]:
        return mean_std(fn(r["metrics"]) for r in self.ok)

    def interval(self, fn) -> stats.Interval:
        """The 95% interval of the mean of fn over this config's repeats."""
        return mean_interval([fn(r["metrics"]) for r in self.ok], folds_of(self.ok))

    @property
    def series(self) -> tuple:
        """What tells this config's curve from the others: its method and swept keys but the
        operating point's."""
        return (self.method, *((k, self.identity[k]) for k in self.varying
                               if k not in OPERATING_KEYS and k in self.identity))

    @property
    def series_label(self) -> str:
        return " ".join([self.method, *(f"{k.removeprefix('method.')}={v}" for k, v in self.series[1:])])

    @property
    def layer(self) -> str | None:
        return self.identity.get(SENSITIVITY_KEY)


def pair_key(record: dict) -> tuple:
    """Jobs with the same seed, split and CV fold saw the same initialisation, batch order and data."""
    config = flatten(record.get("config") or {})
    return record["seed"], config.get("data.split_seed"), config.get("data.cv.fold")


def folds_of(records: list[dict]) -> int | None:
    """k when every record is a fold of the same k-fold cross-validation, else None (seeds only)."""
    ks = set()
    for r in records:
        config = flatten(r.get("config") or {})
        ks.add(config.get("data.cv.folds") if config.get("data.cv.fold") is not None else None)
    k = ks.pop() if len(ks) == 1 else None
    return k if isinstance(k, int) and k >= 2 else None


def mean_interval(values, k: int | None) -> stats.Interval:
    """Corrected resampled t over the folds of k-fold CV, else a bootstrap over the seeds."""
    if k:
        return stats.corrected_t_interval(values, stats.kfold_test_train_ratio(k))
    return stats.bootstrap_interval(values)


def group_records(records: list[dict]) -> list[Group]:
    """Jobs of the same config (repeats aside) in one group, each labelled by the config keys that
    tell it from the other groups of its method."""
    groups: dict[str, Group] = {}
    for record in records:
        ident = identity(record)
        key = json.dumps(ident, sort_keys=True, default=str)
        groups.setdefault(key, Group(record["method"], ident)).records.append(record)
    out = list(groups.values())
    for method in {g.method for g in out}:
        same = [g for g in out if g.method == method]
        keys = sorted({k for g in same for k in g.identity})
        varying = [k for k in keys if len({json.dumps(g.identity.get(k), default=str) for g in same}) > 1]
        for g in same:
            g.label = " ".join(f"{k}={g.identity[k]}" for k in varying if k in g.identity)
            g.varying = tuple(varying)
    return sorted(out, key=lambda g: (g.method != "baseline", g.method, g.label))


# ---------------------------------------------------------------------------------------------
# Paired comparisons with a reference.

@dataclass
class Reference:
    label: str
    group: Group | None  # None: each job's own baseline (or a student's teacher), same seed


DEFAULT_REFERENCE = Reference("the baseline each job started from (or a student's teacher)", None)


@dataclass
class Comparison:
    """A config against the reference: the mean difference of test accuracy in percentage points."""
    interval: stats.Interval
    p_improvement: float | None
    how: str
    p_holm: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


def find_reference(groups: list[Group], spec: str | None) -> tuple[Reference | None, str | None]:
    """The config `--reference` names (a method and/or key=value tokens, as the table's method and
    config columns show them), or None and why not."""
    if not spec:
        return DEFAULT_REFERENCE, None
    tokens = spec.split()
    methods = [t for t in tokens if "=" not in t]
    wanted = [t.split("=", 1) for t in tokens if "=" in t]
    hits = [g for g in groups if g.ok and (not methods or g.method in methods)
            and all(k in g.identity and str(g.identity[k]) == v for k, v in wanted)]
    if len(hits) == 1:
        return Reference(f"{hits[0].method} {hits[0].label}".strip(), hits[0]), None
    names = "; ".join(f"{g.method} {g.label}".strip() for g in groups if g.ok)
    if not hits:
        return None, (f"--reference {spec!r} matches no config with ok jobs in these dirs (configs: {names}); "
                      f"no paired comparison made")
    return None, (f"--reference {spec!r} matches {len(hits)} configs; add key=value tokens to pick one "
                  f"(configs: {names}); no paired comparison made")


def _acc(record: dict) -> float | None:
    value = record["metrics"].get("test_acc")
    return None if value is None else 100 * value


def _paired(pairs: list[tuple[dict, float, float]]) -> Comparison:
    k = folds_of([r for r, _, _ in pairs])
    interval = mean_interval([a - b for _, a, b in pairs], k)
    mine, theirs = [a for _, a, _ in pairs], [b for _, _, b in pairs]
    how = f"paired, {k}-fold {interval.method}" if k else f"paired, {interval.method}"
    return Comparison(interval, stats.probability_of_improvement(mine, theirs), how)


def compare(g: Group, ref: Reference) -> Comparison | None:
    """g against the reference over the jobs that share a seed and fold with it (unpaired, said
    so, when none do); None for the reference itself."""
    if ref.group is None:
        if g.method == "baseline":
            return None
        pairs = [(r, _acc(r), _acc(r) - 100 * delta_acc(r["metrics"])) for r in g.ok
                 if _acc(r) is not None and delta_acc(r["metrics"]) is not None]
        return _paired(pairs)
    if g is ref.group:
        return None
    theirs = {pair_key(r): r for r in ref.group.ok if _acc(r) is not None}
    mine = [r for r in g.ok if _acc(r) is not None]
    pairs = [(r, _acc(r), _acc(theirs[pair_key(r)])) for r in mine if pair_key(r) in theirs]
    if pairs or not mine:
        return _paired(pairs)
    a, b = [_acc(r) for r in mine], [_acc(r) for r in theirs.values()]
    interval = stats.unpaired_bootstrap_interval(a, b)
    return Comparison(interval, stats.probability_of_improvement_unpaired(a, b),
                      f"UNPAIRED (no seed or fold in common), {interval.method}")


def compare_all(groups: list[Group], ref: Reference | None) -> dict[int, Comparison | None]:
    """Each group's comparison (by id), Holm-corrected over the table's comparisons."""
    if ref is None:
        return {}
    comps = {id(g): compare(g, ref) for g in groups}
    made = [c for c in comps.values() if c is not None]
    for c, p in zip(made, stats.holm([c.interval.p for c in made])):
        c.p_holm = p
    return comps


def comparison_notes(groups: list[Group], comps: dict) -> list[str]:
    notes, few = [], []
    for g in groups:
        c = comps.get(id(g))
        name = f"{g.method} {g.label}".strip()
        if c is not None and c.how.startswith("UNPAIRED"):
            notes.append(f"{name}: no seed or fold in common with the reference; compared unpaired")
        elif c is not None and g.ok and c.interval.low is None:
            few.append(f"{name} ({c.interval.n})")
    if few:
        more = f" and {len(few) - 4} more" if len(few) > 5 else ""
        notes.append(f"{len(few)} config(s) with fewer than two pairs, so no interval (n/a): "
                     f"{', '.join(few[:4] if more else few)}{more}")
    return notes


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def comparison_cells(c: Comparison | None) -> list[str]:
    if c is None:
        return ["reference", "–", "–", "–"]
    iv = c.interval
    if iv.mean is None:
        return ["n/a", "n/a", "0", c.how]
    ci = "n/a" if iv.low is None else f"{iv.low:+.2f}, {iv.high:+.2f}"
    return [f"{iv.mean:+.2f} [{ci}]{' *' if c.significant else ''}",
            "n/a" if c.p_improvement is None else f"{c.p_improvement:.2f}", str(iv.n), c.how]


COMPARISON_HEADS = ["Δ vs reference (pp) [95% interval]", "P(A > reference)", "pairs", "interval"]


def comparison_note(ref: Reference | None, comps: dict) -> str:
    if ref is None:
        return ""
    m = sum(c is not None for c in comps.values())
    return (f"Reference: {ref.label}. Δ vs reference: mean over the jobs paired by seed and CV fold of "
            f"(test acc - reference's), with its 95% interval: corrected resampled t (Nadeau & Bengio) "
            f"over CV folds, percentile bootstrap over seeds; P(A > reference): share of pairs where the "
            f"config wins (ties 1/2). * = the difference holds after Holm's correction over the {m} "
            f"comparison{'s' if m != 1 else ''} of this table: adjusted p < {ALPHA:.2f}, p from the corrected t "
            f"over folds, from the paired t test over seeds (a percentile interval of a few seeds is too "
            f"narrow to test with). n/a: fewer than two pairs.\n")


def markdown_table(groups: list[Group], comps: dict | None = None, ref: Reference | None = None) -> str:
    comps = comps or {}
    head = ["method", "config", "ok / jobs", *(FIGURES[c][0] for c in FIGURES),
            *(COMPARISON_HEADS if ref else [])]
    rows = [head, ["---"] * len(head)]
    for g in groups:
        cells = [g.method, g.label or "–", f"{len(g.ok)} / {len(g.records)}"]
        for _, fn, fmt in FIGURES.values():
            mean, std = g.stat(fn)
            cells.append("–" if mean is None else
                         fmt.format(mean) + ("" if std is None else f" ± {fmt.format(std).lstrip('+')}"))
        if ref:
            cells += comparison_cells(comps.get(id(g)))
        rows.append(cells)
    return ("\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n\n" + TABLE_NOTE
            + ("\n" + comparison_note(ref, comps) if ref else ""))


def config_rows(groups: list[Group], comps: dict) -> list[dict]:
    """configs.csv: the table's figures as numbers, one row per config."""
    rows = []
    for g in groups:
        row = {"method": g.method, "config": g.label, "ok": len(g.ok), "jobs": len(g.records)}
        for column, (_, fn, _) in FIGURES.items():
            row[f"{column}_mean"], row[f"{column}_std"] = g.stat(fn)
        c = comps.get(id(g))
        iv = c.interval if c else None
        row.update(reference=c is None and id(g) in comps,
                   delta_ref_pp=iv and iv.mean, ci_low_pp=iv and iv.low, ci_high_pp=iv and iv.high,
                   p=iv and iv.p, p_holm=c and c.p_holm, significant_holm=bool(c and c.significant),
                   p_improvement=c and c.p_improvement, pairs=iv.n if iv else None,
                   interval=c.how if c else "")
        rows.append({k: ("n/a" if v is None and k in ("ci_low_pp", "ci_high_pp", "p", "p_holm") and c
                         else "" if v is None else v) for k, v in row.items()})
    return rows


def job_rows(records: list[dict], groups: list[Group]) -> list[dict]:
    label_of = {id(r): g.label for g in groups for r in g.records}
    rows = []
    for r in records:
        config = flatten(r.get("config") or {})
        row = {"dir": r["_dir"], "status": r["status"], "error": r.get("error") or "",
               "method": r["method"], "config": label_of.get(id(r), ""), "seed": r["seed"],
               "fold": config.get("data.cv.fold", ""), "data": r["data"], "model": r["model"],
               "config_hash": r["config_hash"],
               "wall_time_s": r.get("job", {}).get("wall_time_s", "")}
        row.update({k: v for k, v in sorted(r["metrics"].items())
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot_pareto(groups: list[Group], stem: str, path: Path) -> bool:
    """One PNG of mean test accuracy against the `stem` figure; False when no config has it."""
    xlabel, fn, higher_better = PLOTS[stem]
    points = []
    for g in groups:
        x, _ = g.stat(fn)
        acc = g.interval(lambda m: _pct(m.get("test_acc")))
        if x is not None and acc.mean is not None:
            points.append((g, x, acc.mean / 100, acc))
    if not points:
        return False
    plt = _pyplot()
    front = pareto_front([(x, a) for _, x, a, _ in points], higher_better)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for method in sorted({g.method for g, *_ in points}):
        mine = [p for p in points if p[0].method == method]
        ax.errorbar([p[1] for p in mine], [p[3].mean for p in mine], yerr=_yerr([p[3] for p in mine]),
                    fmt="o", capsize=3, label=method, alpha=0.85)
    on_front = sorted((p for p, f in zip(points, front) if f), key=lambda p: p[1])
    ax.plot([p[1] for p in on_front], [100 * p[2] for p in on_front], "-", color="black", lw=1,
            zorder=0, label="Pareto front")
    ax.scatter([p[1] for p in on_front], [100 * p[2] for p in on_front], s=140, facecolors="none",
               edgecolors="black", lw=1.5, zorder=3)
    if log_axis([p[1] for p in points]):
        ax.set_xscale("log")
    ax.set_xlabel(xlabel + ("  (→ better)" if higher_better else "  (← better)"))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"accuracy vs {stem.replace('_', ' ')}: mean, 95% interval per config", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _yerr(intervals: list[stats.Interval]) -> list[list[float]]:
    """Asymmetric error bars of intervals (none drawn where there is no interval)."""
    return [[iv.mean - iv.low if iv.low is not None else 0.0 for iv in intervals],
            [iv.high - iv.mean if iv.high is not None else 0.0 for iv in intervals]]


def dense_control(groups: list[Group]) -> stats.Interval:
    """The dense model's test accuracy (%) over its seeds and folds: the baselines in the dirs and
    those the compressed jobs started from, one value per seed and fold."""
    by_key: dict[tuple, float] = {}
    records = [r for g in groups for r in g.ok]
    for r in records:
        m = r["metrics"]
        if r["method"] == "baseline" and m.get("test_acc") is not None:
            by_key[pair_key(r)] = 100 * m["test_acc"]
        elif m.get("baseline_test_acc") is not None:
            by_key.setdefault(pair_key(r), 100 * m["baseline_test_acc"])
    return mean_interval(list(by_key.values()), folds_of(records))


def _band(ax, xs, intervals, color, label, marker="o"):
    ys = [iv.mean for iv in intervals]
    ax.plot(xs, ys, marker=marker, ms=4, lw=1.5, color=color, label=label)
    have = [(x, iv) for x, iv in zip(xs, intervals) if iv.low is not None]
    if have:
        ax.fill_between([x for x, _ in have], [iv.low for _, iv in have], [iv.high for _, iv in have],
                        color=color, alpha=0.2, lw=0)


def _dense_band(ax, dense: stats.Interval) -> None:
    if dense.mean is None:
        return
    label = f"dense control ({dense.n} run{'s' if dense.n != 1 else ''})"
    ax.axhline(dense.mean, color="black", ls="--", lw=1, label=label)
    if dense.low is not None:
        ax.axhspan(dense.low, dense.high, color="grey", alpha=0.25, lw=0)


Curve = list[tuple[float, stats.Interval]]  # (x, test accuracy % with its interval), sorted by x


def accuracy_curves(groups: list[Group]) -> dict[str, Curve]:
    """Test accuracy against mean compression ratio, one curve per series (sensitivity scans and
    baselines left out)."""
    curves: dict[str, Curve] = {}
    for g in groups:
        if g.method == "baseline" or g.layer is not None:
            continue
        x, _ = g.stat(compression_ratio)
        acc = g.interval(lambda m: _pct(m.get("test_acc")))
        if x is not None and acc.mean is not None:
            curves.setdefault(g.series_label, []).append((x, acc))
    return {label: sorted(points, key=lambda p: p[0]) for label, points in sorted(curves.items())}


def sensitivity_curves(groups: list[Group]) -> tuple[str | None, dict[str, Curve]]:
    """A sensitivity scan: (the operating key, {layer: test accuracy against the layer's value of it})."""
    scan_groups = [g for g in groups if g.layer is not None and g.ok]
    keys = [k for k in OPERATING_KEYS if any(k in g.varying for g in scan_groups)]
    if not keys:
        return None, {}
    key, curves = keys[0], {}
    for g in scan_groups:
        acc = g.interval(lambda m: _pct(m.get("test_acc")))
        if g.identity.get(key) is not None and acc.mean is not None:
            curves.setdefault(str(g.layer), []).append((float(g.identity[key]), acc))
    return key, {layer: sorted(points, key=lambda p: p[0]) for layer, points in sorted(curves.items())}


def plot_curves(groups: list[Group], path: Path) -> bool:
    """Accuracy vs compression ratio, one curve per series with its 95% band, the dense control
    as a band; False when no compressed config has a ratio."""
    curves = accuracy_curves(groups)
    if not curves:
        return False
    xs = [x for points in curves.values() for x, _ in points]
    _curves_figure(curves, groups, path, "compression ratio (params / nonzero params)",
                   "accuracy vs compression: mean and 95% interval over seeds/folds", log_x=log_axis(xs))
    return True


def _curves_figure(curves: dict, groups: list[Group], path: Path, xlabel: str, title: str,
                   log_x: bool = False, legend_title: str | None = None) -> None:
    """Test accuracy curves with their 95% bands, the dense control as a band, saved to `path`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, points) in enumerate(curves.items()):
        _band(ax, [x for x, _ in points], [iv for _, iv in points], colors[i % len(colors)], label)
    _dense_band(ax, dense_control(groups))
    if log_x:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(_ratio_formatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both" if log_x else "major")
    ax.legend(fontsize=8, loc="lower left", title=legend_title, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def log_axis(xs) -> bool:
    """A log axis when the values span more than 10x (a linear one crowds the low ratios)."""
    return bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 10


def _ratio_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: f"{x:g}×")


def plot_sensitivity(groups: list[Group], path: Path) -> bool:
    """A sensitivity scan: test accuracy against the one layer's rate (or bits), one curve per
    layer, the dense control as a band; False when no ok job compressed a single layer."""
    key, curves = sensitivity_curves(groups)
    if not curves:
        return False
    xlabel = {"method.rate": "fraction of the layer's weights pruned (method.rate)",
              "method.bits": "bits of the layer's weights (method.bits)"}.get(key, key)
    _curves_figure(curves, groups, path, xlabel, "sensitivity: one layer compressed, the others dense",
                   legend_title="layer")
    return True


def html_page(title: str, table_md: str, notes: list[str], figures: list[Path]) -> str:
    """One self-contained page: the table, the notes, every figure embedded as a base64 PNG (its
    file name in data-file, so a reader can tell which file each one is)."""
    lines = [line for line in table_md.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    prose = [line for line in table_md.splitlines() if line and not line.startswith("|")]
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
           "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(-n+2){text-align:left}"
           "img{max-width:100%;display:block;margin:1em 0}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>", "<table>"]
    if rows:
        out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>")
        for row in rows[2:]:
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    out += [f"<p>{html.escape(p)}</p>" for p in prose]
    if notes:
        out.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for fig in figures:
        data = base64.b64encode(fig.read_bytes()).decode()
        out.append(f"<h2>{html.escape(fig.stem.replace('_', ' '))}</h2>"
                   f"<img data-file='{html.escape(fig.name)}' alt='{html.escape(fig.stem)}' "
                   f"src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The command.

@dataclass
class Report:
    groups: list[Group]
    table: str
    files: dict[str, Path]
    failed: list[dict]
    missing: list[Path]
    unreadable: list[str]
    skipped_plots: list[str]
    notes: list[str] = field(default_factory=list)  # comparisons that could not be made as asked
    comparisons: dict = field(default_factory=dict)


def make_report(dirs, out_dir: Path | None = None, reference: str | None = None) -> Report:
    dirs = [Path(d) for d in dirs]
    for d in dirs:
        if not d.is_dir():
            raise ReportError(f"{d} is not a directory: give the sweep dirs to report on "
                              f"(e.g. outputs/sweeps/<name>)")
    found = scan(dirs)
    if found.newer:
        raise ReportError("refusing records written by a newer compresslab:\n  " + "\n  ".join(found.newer))
    if not found.records:
        why = f" ({len(found.unreadable)} unreadable, {len(found.missing)} jobs without a result)" \
            if found.unreadable or found.missing else ""
        raise ReportError(f"no readable result.json under {', '.join(map(str, dirs))}{why}: "
                          f"is this a sweep or run dir?" +
                          "".join(f"\n  {u}" for u in found.unreadable))
    out_dir = Path(out_dir) if out_dir else dirs[0] / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_records(found.records)
    ref, why_not = find_reference(groups, reference)
    comps = compare_all(groups, ref)
    notes = ([why_not] if why_not else []) + comparison_notes(groups, comps)
    table = markdown_table(groups, comps, ref)
    files = {"jobs.csv": out_dir / "jobs.csv", "table.md": out_dir / "table.md",
             "configs.csv": out_dir / "configs.csv"}
    write_csv(files["jobs.csv"], job_rows(found.records, groups))
    write_csv(files["configs.csv"], config_rows(groups, comps))
    files["table.md"].write_text(table + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else ""))
    skipped = []
    plots = [(f"pareto_{stem}", lambda path, stem=stem: plot_pareto(groups, stem, path)) for stem in PLOTS]
    plots += [("accuracy_vs_compression_ratio", lambda path: plot_curves(groups, path)),
              ("sensitivity", lambda path: plot_sensitivity(groups, path))]
    for stem, plot in plots:
        path = out_dir / f"{stem}.png"
        if plot(path):
            files[path.name] = path
        elif {"sensitivity": any(g.layer is not None for g in groups),
              "accuracy_vs_compression_ratio": any(g.layer is None for g in groups)}.get(stem, True):
            skipped.append(stem)  # a figure this kind of sweep would have had
    files["report.html"] = out_dir / "report.html"
    files["report.html"].write_text(html_page(f"compresslab report: {', '.join(d.name for d in dirs)}", table,
                                              notes, [p for n, p in files.items() if n.endswith(".png")]))
    return Report(groups, table, files, found.failed, found.missing, found.unreadable, skipped, notes, comps)


def log_to_wandb(report: Report, out_dir: Path, project: str) -> str:
    """One W&B run (offline unless WANDB_MODE says otherwise) holding the table and the plots."""
    import os

    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(project=project, job_type="report", dir=str(out_dir), name=f"report-{out_dir.parent.name}",
                     settings=wandb.Settings(console="off", x_disable_stats=True))
    with open(report.files["jobs.csv"]) as f:
        rows = list(csv.reader(f))
    run.log({"jobs": wandb.Table(columns=rows[0], data=rows[1:]),
             **{name: wandb.Image(str(path)) for name, path in report.files.items() if name.endswith(".png")}})
    run_dir = str(Path(run.dir).parent)
    run.finish()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compresslab-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep (or run) dirs holding result.json files")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: FIRST_DIR/report)")
    parser.add_argument("--reference", default=None, metavar="CONFIG",
                        help="the config the others are compared with, as the table names it: a method "
                             "and/or key=value tokens, e.g. 'prune method.criterion=magnitude method.rate=0.9' "
                             "(default: each job's own baseline or teacher)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plots to a W&B run")
    parser.add_argument("--wandb-project", default="compresslab")
    args = parser.parse_args(argv)
    try:
        report = make_report(args.dirs, args.out, args.reference)
    except ReportError as e:
        print(f"compresslab-report: error: {e}", file=sys.stderr)
        return 2
    print(report.table)
    n_jobs = sum(len(g.records) for g in report.groups) + len(report.missing) + len(report.unreadable)
    print(f"{n_jobs} jobs: {n_jobs - len(report.failed) - len(report.missing) - len(report.unreadable)} ok, "
          f"{len(report.failed)} failed, {len(report.missing)} without a result, "
          f"{len(report.unreadable)} unreadable")
    for r in report.failed:
        print(f"  failed: {r['_dir']}: {r['error']}")
    for d in report.missing:
        print(f"  no result (interrupted or still running): {d}")
    for u in report.unreadable:
        print(f"  unreadable: {u}")
    for stem in report.skipped_plots:
        print(f"  no {stem} plot: no ok job has what it draws")
    for note in report.notes:
        print(f"  note: {note}")
    out_dir = report.files["jobs.csv"].parent
    print("wrote: " + ", ".join(str(p) for p in report.files.values()))
    if args.wandb:
        print(f"W&B run (offline; `wandb sync` uploads it): {log_to_wandb(report, out_dir, args.wandb_project)}")
    return 0


def main_exit() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
