"""The statistics of the study: paired t-intervals and p-values (no scipy), Holm's correction,
the predicted half-width of a paired difference, the slope of a curve's last quarter."""

from __future__ import annotations

import math
import statistics
from typing import Optional


# Two-sided 95% quantiles of Student's t by degrees of freedom (no scipy needed).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
       20: 2.086, 25: 2.060, 30: 2.042}


def t95(df: int) -> float:
    return T95.get(df) or T95[max(k for k in T95 if k <= df)]


def t_test_p(t: float, df: int) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with integer ``df`` (Abramowitz & Stegun
    26.7.3-4, exact; no scipy needed)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, total = math.cos(theta) ** 2, 0.0
    if df % 2:
        term = math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):
            total, term = total + term, term * c2 * 2 * k / (2 * k + 1)
        return max(0.0, 1 - 2 / math.pi * (theta + math.sin(theta) * total))
    term = 1.0
    for k in range(df // 2):
        total, term = total + term, term * c2 * (2 * k + 1) / (2 * k + 2)
    return max(0.0, 1 - math.sin(theta) * total)


def holm(diffs: list) -> None:
    """Holm's step-down adjustment of the paired-t p-values over the distinct comparisons (a pair
    and its mirror count once), set as ``p_holm`` on each difference."""
    distinct = {}
    for d in diffs:
        if d.get("p") is not None:
            distinct.setdefault(frozenset((d["setting"], d["reference"])), d["p"])
    m, running, adjusted = len(distinct), 0.0, {}
    for i, (key, p) in enumerate(sorted(distinct.items(), key=lambda kv: kv[1])):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[key] = running
    for d in diffs:
        d["p_holm"] = adjusted.get(frozenset((d["setting"], d["reference"])))


def paired(a: list, b: list) -> dict:
    """Mean paired difference a - b with its 95% t-interval and two-sided paired-t p-value (None
    with fewer than 2 pairs)."""
    d = [x - y for x, y in zip(a, b)]
    out = {"n": len(d), "differences": d, "mean": statistics.mean(d) if d else None, "low": None, "high": None,
           "p": None}
    if len(d) > 1:
        se = statistics.stdev(d) / math.sqrt(len(d))
        half = t95(len(d) - 1) * se
        out.update(low=out["mean"] - half, high=out["mean"] + half,
                   p=t_test_p(out["mean"] / se, len(d) - 1) if se > 0 else float(out["mean"] == 0))
        out["verdict"] = ("not distinguishable on this benchmark" if out["low"] <= 0 <= out["high"]
                          else ("better" if out["mean"] > 0 else "worse"))
    return out


def mean_curve(row: dict) -> list:
    curves = list(row["curves"].values())
    return [statistics.mean(c[e] for c in curves) for e in range(min(map(len, curves)))]


def slope(curve: list) -> float:
    """Least-squares gain per epoch over the last quarter of ``curve`` (at least 2 epochs)."""
    tail = curve[-max(2, len(curve) // 4):]
    xs = range(len(tail))
    mx, my = statistics.mean(xs), statistics.mean(tail)
    return sum((x - mx) * (y - my) for x, y in zip(xs, tail)) / sum((x - mx) ** 2 for x in xs)


def predicted_half_width(differences: list, n: int) -> Optional[float]:
    """95% half-width of a paired difference over ``n`` seeds, with the spread of ``differences``."""
    return t95(n - 1) * statistics.stdev(differences) / math.sqrt(n) if len(differences) > 1 else None


def convergence(table: dict) -> dict:
    """Each setting's gain per epoch over the last quarter of its mean curve."""
    return {name: slope(mean_curve(row)) for name, row in table.items()}
