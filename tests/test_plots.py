"""Plots fit for a paper: medians over the same runs at every point, honest interpolation on log
axes, file names that say what a figure shows, legends that say what was chosen; files written
with the permissions the umask gives."""
import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from bilevel.cli import main as cli
from bilevel.cli import store, tables
from bilevel.cli.main import main
from bilevel.cli.plot import band, figure


def frame_of(runs, x="time", metric="f", **constant):
    """A tidy frame: runs = {run_id: (xs, values)}."""
    rows = [{"run_id": run_id, x: xv, metric: yv, **constant} for run_id, (xs, ys) in runs.items()
            for xv, yv in zip(xs, ys)]
    return pd.DataFrame(rows)


def test_a_metric_of_the_final_row_only_is_one_point_and_is_drawn():
    # retrained_accuracy and verified values exist at each run's last row only
    frame = frame_of({"a": ([4.0], [0.8]), "b": ([2.0], [0.9]), "c": ([3.0], [0.7])}, metric="acc", method="m")
    b = band(frame, "time", "acc")
    np.testing.assert_allclose(b[["time", "median", "low", "high"]].to_numpy(), [[3.0, 0.8, 0.75, 0.85]])
    fig = figure(frame, ["acc"], x="time")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    (points,) = [line for line in ax.get_lines() if line.get_marker() == "o"]
    np.testing.assert_allclose(points.get_xydata(), [[3.0, 0.8]])          # one group: not dodged
    plt_close(fig)
    two = pd.concat([frame, frame.assign(method="n", acc=frame["acc"] - 0.1)])
    fig = figure(two, ["acc"], x="time")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    xy = sorted(tuple(line.get_xydata()[0]) for line in ax.get_lines() if line.get_marker() == "o")
    # two groups at the same x: dodged to 0.995 x and 1.005 x, so their bars do not hide each other
    np.testing.assert_allclose(xy, [[3.0 * 0.995, 0.8], [3.0 * 1.005, 0.7]])
    np.testing.assert_allclose(ax.get_xticks(), [3.0])                    # the tick says the true x
    plt_close(fig)
    plt_close(fig)


def plt_close(fig):
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_names_of_close_reference_lines_and_long_legends_stay_readable():
    import matplotlib.pyplot as plt
    frame = frame_of({"a": ([0, 1], [0.1, 0.87]), "b": ([0, 1], [0.1, 0.86])}, x="iter", metric="acc", method="m")
    long = "a configuration label far longer than one panel is wide " * 2
    fig = figure(frame, ["acc"], reference_lines={"acc": {"clean": 0.8765, "validation": 0.881, "corrupted": 0.8155}},
                 configs={"m": long})
    (ax,) = [a for a in fig.axes if a.get_visible()]
    sides = {t.get_text(): t.xy[0] for t in ax.texts}
    # 0.8765 and 0.881 are closer than a text height: their names go to opposite ends
    assert sides == {"corrupted": 1.0, "clean": 1.0, "validation": 0.0}
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert 0 <= legend.x0 and legend.x1 <= fig.bbox.width      # the legend is inside the figure, not clipped
    plt.close(fig)


def test_the_band_on_time_spans_only_what_every_run_covers():
    frame = frame_of({"a": ([0, 1, 2, 3], [3, 2, 1, 0]),      # the longest
                      "b": ([0, 2], [4, 2]),                  # ends first, at t = 2
                      "c": ([0.5, 2.5], [6, 6])})             # starts last, at t = 0.5
    b = band(frame, "time", "f", points=4)
    # the grid runs from 0.5 to 2; by hand at 0.5, 1, 1.5, 2: a 2.5 2 1.5 1, b 3.5 3 2.5 2, c 6 6 6 6
    np.testing.assert_allclose(b["time"], [0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(b["median"], [3.5, 3.0, 2.5, 2.0])
    np.testing.assert_allclose(b["low"], [3.0, 2.5, 2.0, 1.5])     # the 0.25 quantile of three values
    np.testing.assert_allclose(b["high"], [4.75, 4.5, 4.25, 4.0])  # (a sorted, b sorted)


def test_on_the_iteration_axis_a_finished_run_keeps_its_final_value():
    frame = frame_of({"a": ([0, 10, 20], [4, 2, 0]), "b": ([0, 10], [6, 4]), "c": ([0, 10, 20], [2, 2, 2])},
                     x="iter")
    b = band(frame, "iter", "f", points=3)
    np.testing.assert_allclose(b["iter"], [0, 10, 20])
    np.testing.assert_allclose(b["median"], [4, 2, 2])              # at 20: a 0, b 4 (kept), c 2


def test_runs_that_share_no_range_give_no_band_and_the_legend_says_so():
    frame = frame_of({"a": ([0, 1], [1, 2]), "b": ([2, 3], [1, 2])}, method="sgf")
    assert band(frame, "time", "f").empty
    assert figure(frame, ["f"], x="time").legends[0].get_texts() == []          # nothing drawn, nothing listed
    frame = pd.concat([frame, frame_of({"c": ([0, 1], [1, 2])}, method="pgdqp")])
    fig = figure(frame, ["f"], x="time", logy=True)
    assert [t.get_text() for t in fig.axes[0].texts] == ["not drawn: the runs of sgf share no range of time (s)"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["pgdqp"]


def test_log_y_interpolates_geometrically_and_log_x_in_log_x():
    frame = frame_of({"a": ([0, 2], [1, 100])}, x="iter")
    assert band(frame, "iter", "f", points=3)["median"][1] == pytest.approx(50.5)            # linear
    assert band(frame, "iter", "f", points=3, logy=True)["median"][1] == pytest.approx(10.0)  # geometric
    frame = frame_of({"a": ([0, 1, 100], [5, 0, 2])})           # time 0 cannot be shown on a log axis
    linear = band(frame, "time", "f", points=3)
    np.testing.assert_allclose(linear["time"], [0, 50, 100])
    np.testing.assert_allclose(linear["median"], [5, 49 / 99 * 2, 2])      # at 50: between (1, 0) and (100, 2)
    logx = band(frame, "time", "f", points=3, logx=True)
    np.testing.assert_allclose(logx["time"], [1, 10, 100])
    np.testing.assert_allclose(logx["median"], [0, 1, 2])


def test_on_a_log_axis_the_median_of_two_runs_is_their_geometric_mean():
    frame = frame_of({"a": ([0, 1], [1, 1]), "b": ([0, 1], [100, 100])}, x="iter")
    assert band(frame, "iter", "f", points=2, logy=True)["median"].tolist() == pytest.approx([10, 10])
    assert band(frame, "iter", "f", points=2)["median"].tolist() == pytest.approx([50.5, 50.5])


# ----- results directories of synthetic runs: names, legends, permissions ----------------------------------
CONFIGS = {"p1": ("pgdqp", {"step_size": 0.1}), "p2": ("pgdqp", {"step_size": 1.0}), "s": ("sgf", {})}


def synthetic_results(out):
    """OUT holding three runs of one problem, written as `bilevel run` writes them: pgdqp with
    step_size 0.1 (final f 1) and 1.0 (final f 3), sgf with its defaults."""
    finals = {"p1": 1.0, "p2": 3.0, "s": 2.0}
    for run_id, (method, options) in CONFIGS.items():
        frame = frame_of({run_id: ([0, 10, 20], [4.0, 2.5, finals[run_id]])}, x="iter", method=method,
                         problem="quadratic", problem_args="{}", title="quadratic", seed=0, status="COMPLETED",
                         config=json.dumps(options, sort_keys=True))
        frame["time"] = frame["iter"] / 10
        frame["h"] = 1 / (1 + frame["iter"])
        store.write_parquet(frame, store.run_dir(out, run_id) / "history.parquet")
        store.append_manifest(out, {"run_id": run_id, "status": "finished"})


def test_figure_names_say_problem_metrics_and_axis_and_never_collide(tmp_path, capsys):
    synthetic_results(tmp_path)
    calls = [["--metric", "f"], ["--metric", "h"], ["--metric", "f", "--x", "time"], ["--metric", "f", "--metric", "h"],
             ["--metric", "f", "--logx"]]
    for extra in calls:
        assert main(["plot", str(tmp_path), "--out", str(tmp_path / "figs"), *extra]) == 0
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["plot_quadratic_f-h_iter.png", "plot_quadratic_f_iter.png", "plot_quadratic_f_iter_logx.png",
                     "plot_quadratic_f_time.png", "plot_quadratic_h_iter.png"]
    assert capsys.readouterr().out.count("wrote ") == 5


def test_the_legend_says_which_configuration_and_by_what(tmp_path, monkeypatch):
    synthetic_results(tmp_path)
    seen = {}
    monkeypatch.setattr(cli, "plot_metrics", lambda frame, metrics, path, **kw: seen.update(kw, frame=frame) or path)
    cli._plot_dir(store.read_results(tmp_path), str(tmp_path), ["f"], "iter", "f", None, None)
    assert seen["configs"] == {"pgdqp": "step_size=0.1; best of 2 by median final f (min)"}
    assert set(seen["frame"]["run_id"]) == {"p1", "s"}
    cli._plot_dir(store.read_results(tmp_path), str(tmp_path), ["f"], "iter", "f", "max", None)
    assert seen["configs"] == {"pgdqp": "step_size=1.0; best of 2 by median final f (max)"}
    fig = figure(seen["frame"], ["f"], configs=seen["configs"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "pgdqp (step_size=1.0; best of 2 by median final f (max))", "sgf"]
    one = store.read_results(tmp_path).query("run_id != 'p2'")   # nothing to choose from: the options alone
    assert tables.configs_of(tables.select_best(one, "f"), one, "f") == {"pgdqp": "step_size=0.1"}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_files_honour_the_umask(tmp_path, umask, mode, capsys):
    old = os.umask(umask)
    try:
        out = tmp_path / "o"
        assert main(["run", "--problem", "quadratic", "--method", "pgdqp", "--max-iter", "2", "--log-every", "1",
                     "--no-progress", "--out", str(out), "--log-dir", str(tmp_path / "logs")]) == 0
        assert main(["plot", str(out), "--metric", "f"]) == 0
    finally:
        os.umask(old)
    (run,) = (out / "runs").iterdir()
    for path in (run / "history.parquet", run / "summary.json", out / "plot_quadratic_f_iter.png",
                 tmp_path / "logs" / f"{run.name}.jsonl"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


# ----- honest first: verified values lead, residuals on log axes, plain tick labels, ties to the cheaper ---------
def test_residuals_are_drawn_on_log_axes_even_with_zeros_and_f_is_labelled_as_the_iterates():
    import matplotlib.pyplot as plt
    frame = frame_of({"a": ([0, 10, 20], [1.0, 1e-3, 0.0]), "b": ([0, 10, 20], [2.0, 0.5, 0.4])}, x="iter",
                     metric="h", method="m")
    frame["kkt_stationarity"] = frame["h"]
    frame["f"] = [3.0, 2.0, 1.0, 3.0, 2.5, 2.0]
    fig = figure(frame, ["h", "kkt_stationarity", "f"])
    try:
        h, kkt, f = fig.axes[:3]
        assert (h.get_yscale(), kkt.get_yscale(), f.get_yscale()) == ("log", "log", "linear")
        assert f.get_ylabel() == "f at the iterate" and h.get_ylabel() == "h"
    finally:
        plt.close(fig)


def test_tick_labels_carry_no_offset():
    import matplotlib.pyplot as plt
    frame = frame_of({"a": ([0, 10, 20], [-15.99, -15.995, -15.998])}, x="iter", metric="verified_f", method="m")
    fig = figure(frame, ["verified_f"])
    try:
        fig.canvas.draw()
        formatter = fig.axes[0].yaxis.get_major_formatter()
        assert formatter.get_offset() == ""
        assert all(float(t.get_text().replace("\u2212", "-")) < -15.9 for t in fig.axes[0].get_yticklabels()
                   if t.get_text())
    finally:
        plt.close(fig)


def test_a_tie_between_configurations_goes_to_the_cheaper_one():
    rows = []
    for run_id, config, calls, seconds in (("a", '{"inner_steps": 50}', 900.0, 2.0), ("b", '{"inner_steps": 5}', 100.0, 3.0),
                                           ("c", '{"inner_steps": 9}', 100.0, 1.0), ("d", '{"inner_steps": 1}', 10.0, 0.1)):
        rows.append({"run_id": run_id, "iter": 10, "problem": "p", "problem_args": "{}", "method": "m",
                     "config": config, "f": 0.5 if run_id != "d" else 0.6, "oracle_calls": calls, "time": seconds})
    frame = pd.DataFrame(rows)
    chosen = tables.select_best(frame, "f")
    assert chosen["config"].tolist() == ['{"inner_steps": 9}']         # f ties at 0.5; fewest calls, then less time
    frame.loc[frame["run_id"] == "c", "f"] = 0.5 * (1 + 1e-6)            # no longer a tie: the best value wins
    assert tables.select_best(frame, "f")["config"].tolist() == ['{"inner_steps": 5}']


def test_default_columns_lead_with_the_verified_values():
    frame = pd.DataFrame({"run_id": ["a"], "iter": [5], "problem": ["coreset"], "upper_objective": [0.1],
                          "verified_upper_objective": [0.3], "distance_to_lower": [0.2], "f": [0.1],
                          "verified_f": [0.3], "h": [0.01]})
    assert tables.default_metrics(frame, count=6) == ["verified_upper_objective", "verified_f", "distance_to_lower",
                                                      "f", "h"]
    table = cli.format_table([{"method": "m", "f": 0.1, "verified_f": 0.3}], ["method", "verified_f", "f"])
    assert table.splitlines()[0] == "| method | verified_f | f at the iterate |"


def test_figure_names_are_short_readable_and_tell_builder_arguments_apart(tmp_path):
    from bilevel.cli.plot import MAX_NAME, figure_name
    assert figure_name("plot", "stackelberg:build", ["f"], "iter", problem_args='{"K": 2.0, "x0": 1.0}') == \
        "plot_stackelberg-build_K=2_x0=1_f_iter.png"
    assert figure_name("compare", "bolib/FalkLiu1995", ["solved", "F_error"], "time") == \
        "compare_bolib-FalkLiu1995_solved-F_error_time.png"
    names = {figure_name("plot", "quadratic", ["f"], "iter", problem_args={"cond": c}) for c in (1.0, 1.5, 10.0)}
    assert names == {"plot_quadratic_cond=1_f_iter.png", "plot_quadratic_cond=1.5_f_iter.png",
                     "plot_quadratic_cond=10_f_iter.png"}
    long = [figure_name("plot", "quadratic", ["distance_to_solution"] * 9, "iter", problem_args={"cond": c})
            for c in (1.0, 2.0)]
    assert len(set(long)) == 2 and all(len(n) <= MAX_NAME + 4 for n in long)
