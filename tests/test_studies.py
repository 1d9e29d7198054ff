"""Studies that settle a question: the interval and correction formulas, random pruning, the paired
comparisons of the report, its HTML page, and sensitivity scans through the real entry point."""

from __future__ import annotations

import base64
import csv
import math
from html.parser import HTMLParser

import pytest
import torch

from compresslab import report, stats
from compresslab.compression import functional as F, parse, prune_, verify
from compresslab.errors import ConfigError
from compresslab.models import build_model
from conftest import records, run_train
from test_report import make_sweep, record, rows_of, write

# --- formulas against hand computations ----------------------------------------------------------


def test_corrected_resampled_t_interval_of_one_5_fold_run():
    # mean 3, s^2 = 2.5, var = (1/5 + 1/4) * 2.5 = 1.125, se = 1.06066, t_{4, .975} = 2.776445
    iv = stats.corrected_t_interval([1, 2, 3, 4, 5], stats.kfold_test_train_ratio(5))
    assert iv.mean == 3 and iv.n == 5
    assert iv.low == pytest.approx(3 - 2.776445 * 1.0606602, abs=1e-5)
    assert iv.high == pytest.approx(3 + 2.776445 * 1.0606602, abs=1e-5)
    assert iv.p == pytest.approx(0.0474, abs=5e-4)  # t = 2.828 on 4 degrees of freedom


def test_corrected_t_of_a_repeated_k_fold_run_counts_every_fold_of_every_repeat():
    # 2 x 3-fold: n = 6, n_test/n_train = 1/2; s^2 = 0.8, var = (1/6 + 1/2) * 0.8, t_{5, .975} = 2.570582
    iv = stats.corrected_t_interval([1, 2, 3, 1, 2, 3], stats.kfold_test_train_ratio(3))
    half = 2.570582 * math.sqrt((1 / 6 + 1 / 2) * 0.8)
    assert (iv.low, iv.high) == (pytest.approx(2 - half, abs=1e-5), pytest.approx(2 + half, abs=1e-5))


def test_without_the_correction_it_is_the_student_t_interval():
    # [1, 2, 3]: se = 1/sqrt(3), t_{2, .975} = 4.302653
    iv = stats.corrected_t_interval([1, 2, 3], 0.0)
    assert iv.low == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert iv.method == "t (n=3)"


def test_bootstrap_over_seeds_is_seeded_and_spans_the_resampled_means():
    # two seeds: resampled means are 1 (1/4), 2 (1/2), 3 (1/4); 2.5 and 97.5 percentiles are 1 and 3
    iv = stats.bootstrap_interval([1.0, 3.0])
    assert (iv.mean, iv.low, iv.high) == (2.0, 1.0, 3.0)
    # p of the t test, not of the resamples (none of which reaches 0): t = 2 on 1 degree of
    # freedom, where the t distribution is Cauchy's: p = 1 - 2 atan(2) / pi
    assert iv.p == pytest.approx(1 - 2 * math.atan(2) / math.pi)
    assert stats.bootstrap_interval([0.3, -1.2, 2.0, 0.1]) == stats.bootstrap_interval([0.3, -1.2, 2.0, 0.1])


def test_fewer_than_two_values_give_no_interval():
    for iv in (stats.bootstrap_interval([0.5]), stats.corrected_t_interval([0.5], 0.25),
               stats.unpaired_bootstrap_interval([1.0], [2.0, 3.0])):
        assert iv.low is None and iv.high is None and iv.p is None
    assert stats.bootstrap_interval([]).mean is None


def test_probability_of_improvement_on_known_pairs():
    # wins 1 > 0 and 5 > 1, a tie at 2, a loss 3 < 4: (1 + 0.5 + 0 + 1) / 4
    assert stats.probability_of_improvement([1, 2, 3, 5], [0, 2, 4, 1]) == 0.625
    assert stats.probability_of_improvement_unpaired([1, 3], [2]) == 0.5
    assert stats.probability_of_improvement([], []) is None


def test_holm_on_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.01, None, 0.02]) == [pytest.approx(0.02), None, pytest.approx(0.02)]


# --- random pruning --------------------------------------------------------------------------------

def mlp():
    torch.manual_seed(0)
    return build_model({"arch": "mlp", "hidden": [30, 20]}, (1, 8, 8), 10)


@pytest.mark.parametrize("structure", ["unstructured", "neuron"])
def test_random_pruning_reaches_the_rate_per_layer_and_differs_from_magnitude(structure):
    magnitude, random = mlp(), mlp()
    m_masks = prune_(magnitude, 0.6, structure=structure)
    r_masks = prune_(random, 0.6, structure=structure, criterion="random", seed=3)
    for name, p in dict(random.named_parameters()).items():
        if name in r_masks:
            rows = p.shape[0]
            expected = round(0.6 * rows) / rows if structure == "neuron" else round(0.6 * p.numel()) / p.numel()
            assert F.sparsity(p) == pytest.approx(expected)
            assert not torch.equal(r_masks[name], m_masks[name])
    verify(random, parse({"pipeline": ["prune"], "rate": 0.6, "structure": structure, "tolerance": 0.05}), ["prune"])


def test_random_pruning_is_seeded_nests_and_counts_globally():
    a, b, c = mlp(), mlp(), mlp()
    first = prune_(a, 0.5, criterion="random", seed=1)
    assert all(torch.equal(first[n], m) for n, m in prune_(b, 0.5, criterion="random", seed=1).items())
    assert any(not torch.equal(first[n], m) for n, m in prune_(c, 0.5, criterion="random", seed=2).items())
    again = prune_(a, 0.8, criterion="random", seed=1)  # a second round keeps the first's zeros
    assert all(bool((~first[n] <= ~m).all()) for n, m in again.items())
    g = mlp()
    prune_(g, 0.7, scope="global", criterion="random", seed=0)
    ws = [p for n, p in g.named_parameters() if n.endswith("weight")]
    assert sum(int((w == 0).sum()) for w in ws) == round(0.7 * sum(w.numel() for w in ws))


def test_bad_criterion_and_single_layer_with_include_are_clear_errors():
    with pytest.raises(ConfigError, match=r"method\.criterion='biggest'"):
        parse({"pipeline": ["prune"], "rate": 0.5, "criterion": "biggest"})
    with pytest.raises(ConfigError, match=r"method\.single_layer=net\.1 and method\.include"):
        parse({"pipeline": ["prune"], "rate": 0.5, "single_layer": "net.1", "include": ["net.1.weight"]})
    assert parse({"pipeline": ["prune"], "rate": 0.5, "single_layer": "net.1"}).include == (r"net\.1\.weight",)


# --- paired comparisons in the report ------------------------------------------------------------

@pytest.fixture
def sweep_dir(tmp_path):
    return make_sweep(tmp_path / "sweep")


def test_five_folds_against_their_baselines_use_the_corrected_t_interval(tmp_path):
    root = tmp_path / "cv"
    for fold in range(5):  # differences to the baseline: 1, 2, 3, 4, 5 pp
        acc = 0.91 + fold / 100
        write(root, f"fold={fold}", record(rate=0.8, fold=fold, test_acc=acc, baseline_test_acc=0.90,
                                           delta_test_acc=acc - 0.90, compression_ratio=5.0))
    rep = report.make_report([root], tmp_path / "out")
    (row,) = rows_of(rep.table).values()
    assert row[-4:] == ["+3.00 [+0.06, +5.94] *", "1.00", "5", "paired, 5-fold corrected t (n=5)"]
    with open(rep.files["configs.csv"]) as f:
        (c,) = list(csv.DictReader(f))
    assert float(c["ci_low_pp"]) == pytest.approx(3 - 2.776445 * 1.0606602, abs=1e-4)
    assert c["significant_holm"] == "True" and c["interval"] == "paired, 5-fold corrected t (n=5)"


def test_repeated_k_fold_pairs_every_fold_of_every_split(tmp_path):
    root = tmp_path / "rcv"
    for split in range(2):  # 2 x 3-fold; differences 1, 2, 3 pp in each repeat
        for fold in range(3):
            acc = 0.91 + fold / 100
            rec = record(rate=0.8, fold=fold, test_acc=acc, baseline_test_acc=0.90, delta_test_acc=acc - 0.90)
            rec["config"]["data"].update(split_seed=split, cv={"folds": 3, "fold": fold})
            write(root, f"split={split},fold={fold}", rec)
    rep = report.make_report([root], tmp_path / "out")
    (row,) = rows_of(rep.table).values()
    half = 2.570582 * math.sqrt((1 / 6 + 1 / 2) * 0.8)
    assert row[-4:] == [f"+2.00 [{2 - half:+.2f}, {2 + half:+.2f}] *", "1.00", "6",
                        "paired, 3-fold corrected t (n=6)"]


def test_reference_config_pairs_by_seed_and_says_when_pairs_are_too_few(sweep_dir, tmp_path):
    rep = report.make_report([sweep_dir], tmp_path / "out", reference="prune method.rate=0.5")
    rows = rows_of(rep.table)
    assert rows["prune method.rate=0.5"][-4] == "reference"
    # seeds 0 and 1: (80 - 90, 86 - 92) = (-10, -6); the two resampled extremes bound the interval,
    # and no mark: the t test's p (t = -4 on 1 degree of freedom) is 1 - 2 atan(4) / pi = 0.156
    assert rows["prune method.rate=0.9"][-4:] == ["-8.00 [-10.00, -6.00]", "0.00", "2",
                                                  "paired, bootstrap over seeds (n=2)"]
    assert rows["baseline –"][-4:-1] == ["+8.00 [n/a]", "1.00", "1"]  # only seed 0 in common
    assert any("fewer than two pairs" in n and "baseline" in n for n in rep.notes)


def test_configs_without_a_common_seed_fall_back_to_unpaired_and_say_so(tmp_path):
    root = tmp_path / "s"
    for seed, acc in ((0, 0.90), (1, 0.92)):
        write(root, f"a{seed}", record(rate=0.5, seed=seed, test_acc=acc))
    for seed, acc in ((5, 0.80), (6, 0.84)):
        write(root, f"b{seed}", record(rate=0.9, seed=seed, test_acc=acc))
    rep = report.make_report([root], tmp_path / "out", reference="method.rate=0.5")
    cells = rows_of(rep.table)["prune method.rate=0.9"]
    assert cells[-4].startswith("-9.00 [") and cells[-1].startswith("UNPAIRED")
    assert cells[-3] == "0.00"  # every (a, b) combination: b loses
    assert any("no seed or fold in common" in n for n in rep.notes)


def test_an_absent_reference_is_one_note_and_the_report_is_still_written(sweep_dir, tmp_path, capsys):
    assert report.main([str(sweep_dir), "--out", str(tmp_path / "out"), "--reference", "method.rate=0.7"]) == 0
    out = capsys.readouterr().out
    assert "note: --reference 'method.rate=0.7' matches no config" in out
    assert "prune method.rate=0.5" in out  # the configs it could have named
    for name in ("table.md", "configs.csv", "jobs.csv", "report.html", "accuracy_vs_compression_ratio.png"):
        assert (tmp_path / "out" / name).is_file()


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.headers = [], []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        self._in_th = tag == "th"

    def handle_data(self, data):
        if self._in_th:
            self.headers.append(data)


def test_html_page_holds_the_table_and_every_figure_it_ships(sweep_dir, tmp_path):
    rep = report.make_report([sweep_dir], tmp_path / "out")
    page = Page()
    page.feed(rep.files["report.html"].read_text())
    shipped = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert "accuracy_vs_compression_ratio.png" in shipped and "P(A > reference)" in page.headers
    assert sorted(img["data-file"] for img in page.images) == shipped
    for img in page.images:
        prefix, data = img["src"].split(",", 1)
        assert prefix == "data:image/png;base64"
        assert base64.b64decode(data) == (tmp_path / "out" / img["data-file"]).read_bytes()


def test_curves_put_magnitude_and_random_side_by_side_with_a_log_axis_past_10x(tmp_path):
    root = tmp_path / "study"
    for criterion, drop in (("magnitude", 0.01), ("random", 0.05)):
        for rate, ratio in ((0.5, 2.0), (0.9, 10.0), (0.96875, 32.0)):
            for seed in range(2):
                acc = 0.95 - drop * ratio / 10 - seed / 1000
                rec = record(rate=rate, seed=seed, test_acc=acc, baseline_test_acc=0.96,
                             delta_test_acc=acc - 0.96, compression_ratio=ratio)
                rec["config"]["method"]["criterion"] = criterion
                write(root, f"{criterion},{rate},{seed}", rec)
    curves = report.accuracy_curves(report.group_records(report.scan([root]).records))
    assert list(curves) == ["prune criterion=magnitude", "prune criterion=random"]
    assert [x for x, _ in curves["prune criterion=random"]] == [2.0, 10.0, 32.0]
    assert all(iv.low is not None for points in curves.values() for _, iv in points)
    assert report.log_axis([2.0, 32.0]) and not report.log_axis([2.0, 16.0])
    dense = report.dense_control(report.group_records(report.scan([root]).records))
    assert dense.mean == pytest.approx(96.0) and dense.n == 2


# --- through the real entry point ------------------------------------------------------------------

def test_sensitivity_sweep_draws_one_curve_per_layer_from_one_baseline(workdir):
    run_train("sweep=sensitivity", "data=digits", "method.rate=0.5,0.9", "logger=none", multirun=True, check=True)
    recs = records(workdir / "outputs" / "sweeps")
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs)
    assert len({r["paths"]["baseline"] for r in recs}) == 1  # trained once
    for r in recs:  # the named layer is pruned to the rate, the others are left dense
        layer = r["config"]["method"]["single_layer"]
        for lay in r["metrics"]["layers"]:
            want = r["config"]["method"]["rate"] if lay["name"] == layer else 0.0
            assert lay["sparsity"] == pytest.approx(want, abs=0.01)
    (sweep_dir,) = (workdir / "outputs" / "sweeps").iterdir()
    rep = report.make_report([sweep_dir], workdir / "report")
    key, curves = report.sensitivity_curves(rep.groups)
    assert key == "method.rate" and list(curves) == ["net.1", "net.3", "net.5"]
    assert all([x for x, _ in points] == [0.5, 0.9] for points in curves.values())
    assert "sensitivity.png" in rep.files


def test_sensitivity_scan_of_a_model_with_no_compressible_layer_is_one_clear_message(workdir):
    proc = run_train("sweep=sensitivity", "data=digits", "method.exclude=[.*]", "logger=none", multirun=True)
    assert proc.returncode != 0
    assert "has no compressible layer" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_study_runs_magnitude_and_random_from_the_same_baseline(workdir):
    # a baseline of 3 epochs: after 1 its accuracy is too low for a 90% prune of either kind to beat chance
    run_train("sweep=study", "data=digits", "method.rate=0.9", "seed=0", "method.finetune_epochs=1",
              "train.epochs=3", "logger=none", multirun=True, check=True)
    recs = {r["config"]["method"]["criterion"]: r for r in records(workdir / "outputs" / "sweeps")}
    assert set(recs) == {"magnitude", "random"}
    assert recs["magnitude"]["paths"]["baseline"] == recs["random"]["paths"]["baseline"]
    for r in recs.values():
        assert all(lay["sparsity"] == pytest.approx(0.9, abs=0.01) for lay in r["metrics"]["layers"])
    assert recs["random"]["metrics"]["test_acc_before_finetune"] < recs["magnitude"]["metrics"]["test_acc_before_finetune"]
