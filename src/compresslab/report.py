"""The report of one or more sweeps: `python -m compresslab.report DIR... [--out DIR] [--wandb]`
(or `compresslab-report`).

Reads every result.json under the given dirs and writes into the output dir:
- `jobs.csv`: one row per job, ok or failed, with its config label and every scalar metric;
- `table.md`: one row per config (jobs that differ only in seed or CV fold), mean ± sample std
  over those repeats of test and validation accuracy (with data.cv.* the validation split is the
  held-out fold), accuracy change vs the baseline, compression ratio, artifact ratio and
  theoretical speedup (printed too);
- `pareto_<x>.png`: mean test accuracy of each config against compression ratio, artifact bytes and
  multiply-accumulates (MACs), one series per method, the Pareto front (no other config is better
  on both axes) drawn.
Failed jobs, job dirs without a result (interrupted) and unreadable records are listed, not fatal;
no record at all, a missing dir or a record of a newer schema is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from compresslab import results
from compresslab.sweep import scan

# Config keys a config's repeats differ in: mean ± std is taken over them.
REPEAT_KEYS = ("seed", "data.cv.fold")
# Config keys that say where things go or how they run, not what is computed.
IGNORED_KEYS = (*results.NON_RESULT_KEYS, "threads", "tags", "task_name")


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


def flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else value
    return flat


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

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "ok"]

    def stat(self, fn) -> tuple[float | None, float | None]:
        return mean_std(fn(r["metrics"]) for r in self.ok)


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
    return sorted(out, key=lambda g: (g.method != "baseline", g.method, g.label))


def markdown_table(groups: list[Group]) -> str:
    head = ["method", "config", "ok / jobs", *(FIGURES[c][0] for c in FIGURES)]
    rows = [head, ["---"] * len(head)]
    for g in groups:
        cells = [g.method, g.label or "–", f"{len(g.ok)} / {len(g.records)}"]
        for _, fn, fmt in FIGURES.values():
            mean, std = g.stat(fn)
            cells.append("–" if mean is None else
                         fmt.format(mean) + ("" if std is None else f" ± {fmt.format(std).lstrip('+')}"))
        rows.append(cells)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n\n" + TABLE_NOTE


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
        acc, acc_std = g.stat(lambda m: m.get("test_acc"))
        if x is not None and acc is not None:
            points.append((g, x, acc, acc_std or 0.0))
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front([(x, a) for _, x, a, _ in points], higher_better)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for method in sorted({g.method for g, *_ in points}):
        mine = [p for p in points if p[0].method == method]
        ax.errorbar([p[1] for p in mine], [100 * p[2] for p in mine], yerr=[100 * p[3] for p in mine],
                    fmt="o", capsize=3, label=method, alpha=0.85)
    on_front = sorted((p for p, f in zip(points, front) if f), key=lambda p: p[1])
    ax.plot([p[1] for p in on_front], [100 * p[2] for p in on_front], "-", color="black", lw=1,
            zorder=0, label="Pareto front")
    ax.scatter([p[1] for p in on_front], [100 * p[2] for p in on_front], s=140, facecolors="none",
               edgecolors="black", lw=1.5, zorder=3)
    if max(p[1] for p in points) / max(min(p[1] for p in points), 1e-12) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel + ("  (→ better)" if higher_better else "  (← better)"))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"accuracy vs {stem.replace('_', ' ')}: mean ± std per config")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


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


def make_report(dirs, out_dir: Path | None = None) -> Report:
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
    table = markdown_table(groups)
    files = {"jobs.csv": out_dir / "jobs.csv", "table.md": out_dir / "table.md"}
    write_csv(files["jobs.csv"], job_rows(found.records, groups))
    files["table.md"].write_text(table)
    skipped = []
    for stem in PLOTS:
        path = out_dir / f"pareto_{stem}.png"
        if plot_pareto(groups, stem, path):
            files[path.name] = path
        else:
            skipped.append(stem)
    return Report(groups, table, files, found.failed, found.missing, found.unreadable, skipped)


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
    parser.add_argument("--wandb", action="store_true", help="also log the table and plots to a W&B run")
    parser.add_argument("--wandb-project", default="compresslab")
    args = parser.parse_args(argv)
    try:
        report = make_report(args.dirs, args.out)
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
        print(f"  no plot against {stem}: no ok job records it")
    out_dir = report.files["jobs.csv"].parent
    print("wrote: " + ", ".join(str(p) for p in report.files.values()))
    if args.wandb:
        print(f"W&B run (offline; `wandb sync` uploads it): {log_to_wandb(report, out_dir, args.wandb_project)}")
    return 0


def main_exit() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
