"""Tables of results: each run's final row, the best configuration per method, the summary of
final values (mean and standard deviation over seeds) that `bilevel table`, `compare` and
`sweep` print, and the solved counts per problem family (`bilevel table --by family`)."""
from __future__ import annotations

import json
import operator
import re
from typing import Any

import numpy as np
import pandas as pd

from ..problems import PROBLEMS, metric_directions

# what every run has, shown after the problem's own metrics: the upper value at the re-solved
# lower level (verified_f), then the iterate's f and h
GENERIC_METRICS = ["verified_f", "f", "h"]


def default_metrics(frame: pd.DataFrame, count: int = 4) -> list[str]:
    """The columns a table or plot shows by default, verified values first.

    The scores of the registered problems' evaluate hooks; then the verified twin `verified_m`
    (the metric at the re-solved lower level) of each metric m the problems declare, and of a
    user's own metrics; then verified_f; then the iterate's values: the declared metrics that
    have no verified twin, f and h.
    """
    present = [c for c in frame.columns if frame[c].notna().any()]
    scores: list[str] = []
    declared: list[str] = []
    for name in frame["problem"].unique() if "problem" in frame else ():
        spec = PROBLEMS.get(name)
        if spec is not None:
            scores += [m for m in spec.scores if m in present and m not in scores]
            declared += [m for m in spec.metrics if m in present and m not in declared and m not in scores]
    known = set(metric_directions())
    own = [m for m in present if f"verified_{m}" in present and m not in known and m != "f"]
    verified = [f"verified_{m}" for m in declared + own if f"verified_{m}" in present]
    iterate = [m for m in declared if f"verified_{m}" not in present]
    generic = [m for m in GENERIC_METRICS if m in present]
    return list(dict.fromkeys(scores + verified + generic[:1] + iterate + generic[1:]))[:count]


def final_rows(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The last logged row of each run (grouped by `by`)."""
    return frame.sort_values("iter").groupby(by, as_index=False).tail(1)


def higher_is_better(metric: str) -> bool:
    """As the registered problems declare it (`verified_m` as m); for a metric no problem
    declares, accuracy- and AUC-like names are maximised and everything else minimised."""
    name = metric.removeprefix("verified_")
    declared = metric_directions().get(name)
    return declared == "max" if declared is not None else any(word in name for word in ("accuracy", "auc"))


def best_mode(metric: str, mode: str | None = None) -> str:
    """'min' or 'max': `mode` where given, else the metric's direction (`higher_is_better`)."""
    mode = mode or ("max" if higher_is_better(metric) else "min")
    if mode not in ("min", "max"):
        raise ValueError(f"Invalid mode: {mode!r} (expected 'min' or 'max')")
    return mode


COST_COLUMNS = ("oracle_calls", "time")


def select_best(frame: pd.DataFrame, metric: str, mode: str | None = None, rtol: float = 1e-9) -> pd.DataFrame:
    """Per (problem, method), keep the runs of the hyperparameter configuration whose final
    `metric`, as a median over seeds, is best (max for accuracy-like metrics unless mode says).
    Configurations within `rtol` (relative) of the best tie; of those, the cheaper one is
    kept: fewer oracle calls, then less time (medians of the final rows)."""
    if metric not in frame.columns:
        raise ValueError(f"Invalid metric: {metric!r} (columns present: {', '.join(sorted(frame.columns))})")
    mode = best_mode(metric, mode)
    keys = ["problem", "problem_args", "method"]
    last = final_rows(frame, ["run_id"])
    costs = [c for c in COST_COLUMNS if c in last]
    scores = last.groupby(keys + ["config"], dropna=False)[[metric, *costs]].median().reset_index()
    chosen = []
    for _, group in scores.groupby(keys, dropna=False):
        valid = group.dropna(subset=[metric])
        if valid.empty:          # the metric is not defined for this problem: keep every configuration
            chosen.append(group)
            continue
        best = valid[metric].max() if mode == "max" else valid[metric].min()
        ties = valid[np.isclose(valid[metric], best, rtol=rtol, atol=0.0) | (valid[metric] == best)]
        chosen.append(ties.sort_values(costs, kind="stable", na_position="last").head(1) if costs else ties.head(1))
    best = pd.concat(chosen)
    return frame.merge(best[keys + ["config"]], on=keys + ["config"])


def _runs(last: pd.DataFrame) -> str:
    """'3', or '3 (1 diverged, 1 ran away, 2 not verified)' when some runs ended with a non-finite
    value or with iterates growing without bound, or where the final verification found that y
    does not solve the lower level (final rows `last`, with their status and verified columns)."""
    statuses = last["status"]
    counts = [f"{int((statuses == status).sum())} {word}" for status, word in (("DIVERGED", "diverged"),
                                                                              ("RUNAWAY", "ran away"))
              if (statuses == status).any()]
    if "verified" in last:   # among the runs that ended on a finite, bounded iterate
        failed = int(((last["verified"] == 0) & ~statuses.isin(["DIVERGED", "RUNAWAY"])).sum())
        counts += [f"{failed} not verified"] if failed else []
    return f"{len(statuses)}" + (f" ({', '.join(counts)})" if counts else "")


def _mean_sd(values: pd.Series) -> str:
    values = values.astype(float)
    with np.errstate(all="ignore"):    # inf from a diverged run: the table says so
        return f"{values.mean():.4g} ± {values.std(ddof=1):.2g}" if len(values) > 1 else f"{values.iloc[0]:.4g}"


def problem_label(problem: str, problem_args: str | None) -> str:
    """'coreset', or 'synthetic-sc {"dim": 3}' with the builder arguments of the run."""
    return problem + ("" if problem_args in ("{}", None) else f" {problem_args}")


def summary_table(frame: pd.DataFrame, metrics: list[str], manifest: list[dict[str, Any]] | None = None,
                  by_config: bool = True) -> list[dict[str, Any]]:
    """One row per (problem, method[, configuration]): runs (how many diverged, ran away or
    failed the verification), mean ± standard deviation over seeds of each metric's final
    value, and, from the manifest's records, the mean wall time of a run."""
    last = final_rows(frame, ["run_id"])
    walls = {r["run_id"]: r["wall_s"] for r in manifest or [] if r.get("status") == "finished" and "wall_s" in r}
    keys = ["problem", "problem_args", "method"] + (["config"] if by_config else [])
    rows = []
    for values, sub in last.groupby(keys, sort=True, dropna=False):
        row: dict[str, Any] = {"problem": problem_label(values[0], values[1]), "method": values[2]}
        if by_config:
            row["config"] = values[3]
        row["runs"] = _runs(sub)
        for m in metrics:
            if m in sub:
                row[m] = _mean_sd(sub[m])
        times = [walls[run_id] for run_id in sub["run_id"] if run_id in walls]
        if manifest is not None:
            row["wall s / run"] = sum(times) / len(times) if times else float("nan")
        rows.append(row)
    return rows


def configs_of(frame: pd.DataFrame, selected_from: pd.DataFrame | None = None, metric: str | None = None,
               mode: str | None = None) -> dict[str, str]:
    """method -> its configuration ('step_size=0.1, alpha=1'; 'defaults' for none) where the frame
    holds one per method. Where that one was chosen (`select_best` by `metric` and `mode`) among
    several in `selected_from`, the same problem's runs before the choice, it says so:
    'step_size=0.1; best of 3 by median final upper_objective (min)'."""
    out = {}
    for method, sub in frame.groupby("method"):
        configs = sub["config"].unique()
        if len(configs) != 1:
            continue
        options = json.loads(configs[0]) if configs[0] is not None else {}
        text = ", ".join(f"{k}={v}" for k, v in options.items())
        candidates = 0 if selected_from is None else \
            selected_from.loc[selected_from["method"] == method, "config"].nunique()
        if candidates > 1 and metric is not None:
            out[str(method)] = (f"{text or 'defaults'}; best of {candidates} by median final {metric} "
                                f"({best_mode(metric, mode)})")
        elif text:
            out[str(method)] = text
    return out


def family(problem: str) -> str:
    """The family of a problem name: 'bolib' for 'bolib/FalkLiu1995' (the part before the first
    '/'), the name itself for a problem outside the suite."""
    return problem.split("/", 1)[0]


_CONDITION = re.compile(r"^\s*(?P<metric>[\w.-]+)\s*(?P<op><=|>=|<|>|==)\s*(?P<value>\S+)\s*$")
_OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}


def solved_rule(text: str = "solved>=1") -> tuple[str, Any]:
    """'x_error<=0.05' -> ('x_error', run final row -> bool); the default counts the score
    `solved` of the suite problems' evaluate hook. Errors name --solved-if and echo the text."""
    match = _CONDITION.match(text)
    try:
        value = float(match.group("value")) if match else None
    except ValueError:
        value = None
    if value is None:
        raise ValueError(f"Invalid --solved-if: {text!r} (expected METRIC<=NUMBER or METRIC>=NUMBER, "
                         f"e.g. x_error<=0.05)")
    compare = _OPERATORS[match.group("op")]
    return match.group("metric"), lambda v: bool(np.isfinite(v) and compare(v, value))


def family_table(frame: pd.DataFrame, rule: str = "solved>=1",
                 manifest: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Solved runs per (method, configuration) and problem family: 'solved/total', the runs
    whose final row meets `rule` (`solved_rule`) over the finished runs, with how many ran away
    or diverged, and how many failed (the manifest's last record of a run says failed); a
    column 'all' sums the families. Returns the rows and the family columns (the suite's
    families in the registry's order, then the other problems')."""
    metric, ok = solved_rule(rule)
    if metric not in frame.columns:
        raise ValueError(f"Invalid --solved-if: {rule!r} ({metric!r} is not a column of these results; "
                         f"the suite problems' evaluate hook stores solved, F_error and x_error)")
    last = final_rows(frame, ["run_id"]).assign(family=lambda d: d["problem"].map(family))
    families = list(dict.fromkeys(last["family"]))
    failed: dict[tuple[str, str, str], int] = {}
    latest = {r["run_id"]: r for r in manifest or [] if "run_id" in r}
    for record in latest.values():
        if record.get("status") == "failed" and "method" in record:
            options = dict(record.get("options") or {})
            if record.get("batch_size") is not None:
                options["batch_size"] = record["batch_size"]
            if record.get("oracle", "autograd") != "autograd":
                options["oracle"] = record["oracle"]
            key = (record["method"], json.dumps(options, sort_keys=True, default=str), family(record["problem"]))
            failed[key] = failed.get(key, 0) + 1
            if key[2] not in families:
                families.append(key[2])
    first: dict[str, int] = {}
    for name in sorted(PROBLEMS, key=lambda n: "/" not in n):     # the suite's families first
        first.setdefault(family(name), len(first))
    families.sort(key=lambda f: (first.get(f, len(first)), f))
    groups = {k: sub for k, sub in last.groupby(["method", "config"], sort=True, dropna=False)}
    for method, config, _ in failed:
        groups.setdefault((method, config), last.iloc[0:0])
    rows = []
    for (method, config), sub in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        row: dict[str, Any] = {"method": method, "config": config}
        totals = [0, 0]
        for fam in families:
            runs = sub[sub["family"] == fam]
            lost = failed.get((method, config, fam), 0)
            if runs.empty and not lost:
                continue
            solved = int(sum(ok(float(v)) for v in runs[metric]))
            notes = [f"{int((runs['status'] == s).sum())} {w}" for s, w in (("RUNAWAY", "ran away"),
                                                                            ("DIVERGED", "diverged"))
                     if (runs["status"] == s).any()] + ([f"{lost} failed"] if lost else [])
            row[fam] = f"{solved}/{len(runs) + lost}" + (f" ({', '.join(notes)})" if notes else "")
            totals[0] += solved
            totals[1] += len(runs) + lost
        row["all"] = f"{totals[0]}/{totals[1]}"
        rows.append(row)
    return rows, families
