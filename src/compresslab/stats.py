"""Statistics of repeated runs as pure functions of plain lists of numbers: intervals of a mean
(difference) over seeds or cross-validation folds, the probability of improvement, and Holm's
correction. docs/studies.md says when the report uses which, with the sources.

- Folds: Nadeau & Bengio's corrected resampled t (2003). The n scores of k-fold cross-validation
  (r times repeated: n = r * k) come from models whose training sets overlap, so their sample
  variance understates the variance of the mean; the correction replaces 1/n by 1/n + n_test/n_train
  (= 1/n + 1/(k - 1) for k-fold), with a t distribution of n - 1 degrees of freedom (Bouckaert &
  Frank 2004 for the repeated case).
- Seeds: a percentile bootstrap of the mean over the seeds (rliable's intervals, Agarwal et al.
  2021), seeded, so the same records give the same interval. A percentile interval never reaches
  outside the values seen: with all of a handful of seeds on one side of 0 it excludes 0 at every
  level. So its p-value (what Holm's correction and the report's mark use) is the Student t test's
  (Welch's when unpaired), which does account for how few values there are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
N_BOOTSTRAP = 10_000


@dataclass(frozen=True)
class Interval:
    """A mean with its interval and the two-sided p-value of "the mean is 0"; `low`, `high` and `p`
    are None when the values cannot give one (fewer than two)."""
    mean: float | None
    low: float | None
    high: float | None
    p: float | None
    n: int
    method: str

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def _clean(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def kfold_test_train_ratio(k: int) -> float:
    """n_test / n_train of k-fold cross-validation: one fold held out, k - 1 trained on."""
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2 folds, got {k}")
    return 1.0 / (k - 1)


def corrected_t_interval(values, test_train_ratio: float, confidence: float = CONFIDENCE) -> Interval:
    """Nadeau & Bengio's corrected resampled t interval of the mean of `values` (scores or paired
    differences of n resampled train/test splits): mean ± t_{n-1} sqrt((1/n + n_test/n_train) s^2),
    s^2 the sample variance. `test_train_ratio` = 0 gives the plain Student t interval."""
    x = _clean(values)
    n = len(x)
    method = f"corrected t (n={n})" if test_train_ratio else f"t (n={n})"
    if n < 2:
        return Interval(x[0] if x else None, None, None, None, n, method)
    mean = float(np.mean(x))
    se = math.sqrt((1.0 / n + test_train_ratio) * float(np.var(x, ddof=1)))
    if se == 0:
        return Interval(mean, mean, mean, 1.0 if mean == 0 else 0.0, n, method)
    q = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))
    p = float(2 * scipy_stats.t.sf(abs(mean) / se, n - 1))
    return Interval(mean, mean - q * se, mean + q * se, p, n, method)


def bootstrap_interval(values, confidence: float = CONFIDENCE, n_boot: int = N_BOOTSTRAP,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of `values` (one per seed): the means of `n_boot`
    resamples with replacement, drawn from `seed`; p from the one-sample t test (module docstring)."""
    x = np.asarray(_clean(values))
    n = len(x)
    method = f"bootstrap over seeds (n={n})"
    if n < 2:
        return Interval(float(x[0]) if n else None, None, None, None, n, method)
    means = np.random.default_rng(seed).choice(x, size=(n_boot, n), replace=True).mean(axis=1)
    p = corrected_t_interval(x, 0.0).p
    return _percentile(float(x.mean()), means, confidence, p, n, method)


def unpaired_bootstrap_interval(a, b, confidence: float = CONFIDENCE, n_boot: int = N_BOOTSTRAP,
                                seed: int = 0) -> Interval:
    """Interval of mean(a) - mean(b) for runs that cannot be paired: a and b resampled apart."""
    x, y = np.asarray(_clean(a)), np.asarray(_clean(b))
    method = f"unpaired bootstrap (n={len(x)} vs {len(y)})"
    mean = float(x.mean() - y.mean()) if len(x) and len(y) else None
    if len(x) < 2 or len(y) < 2:
        return Interval(mean, None, None, None, min(len(x), len(y)), method)
    rng = np.random.default_rng(seed)
    diffs = (rng.choice(x, size=(n_boot, len(x))).mean(axis=1)
             - rng.choice(y, size=(n_boot, len(y))).mean(axis=1))
    if np.var(x, ddof=1) + np.var(y, ddof=1) == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(scipy_stats.ttest_ind(x, y, equal_var=False).pvalue)
    return _percentile(mean, diffs, confidence, p, min(len(x), len(y)), method)


def _percentile(mean: float, draws: np.ndarray, confidence: float, p: float, n: int, method: str) -> Interval:
    low, high = np.percentile(draws, [50 * (1 - confidence), 50 * (1 + confidence)])
    return Interval(mean, float(low), float(high), p, n, method)


def probability_of_improvement(a, b) -> float | None:
    """P(A > B) over the pairs (a[i], b[i]): the share of pairs where a wins, ties counting one half
    (rliable's definition)."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if not pairs:
        return None
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in pairs) / len(pairs)


def probability_of_improvement_unpaired(a, b) -> float | None:
    """P(A > B) for runs that cannot be paired: over every (a, b) combination (Mann-Whitney's U / nm)."""
    x, y = _clean(a), _clean(b)
    if not x or not y:
        return None
    return probability_of_improvement([u for u in x for _ in y], [v for _ in x for v in y])


def holm(pvalues) -> list[float | None]:
    """Holm's step-down adjusted p-values (same order; None stays None, and does not count towards
    the number of tests m): the i-th smallest p becomes max over j <= i of min(1, (m - j + 1) p_(j)).
    A test is significant at level alpha after correction when its adjusted p is below alpha."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(indexed)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
