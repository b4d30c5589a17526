"""Figures are built and written; the CLI writes the PNGs (compare and plot)."""

import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from bayes_simfluence import attributions as at
from bayes_simfluence.cli import main
from bayes_simfluence.compare import compare
from bayes_simfluence.plots import plot_comparison, plot_effects, plot_scores, plot_trajectories
from bayes_simfluence.simulators import SimfluenceLinear
from bayes_simfluence.synthetic import synthetic_runs
from effect_posterior import GaussianEffects

PNG_MAGIC = b"\x89PNG"


@pytest.fixture(scope="module")
def posterior():
    rng = np.random.default_rng(0)
    return GaussianEffects(rng.normal(-0.01, 0.005, (3, 8)), rng.normal(0, 0.01, (3, 8)), 0.002, 0.004, noise=0.02)


def _is_png(path) -> bool:
    return path.read_bytes()[:4] == PNG_MAGIC


def test_library_figures(posterior, tmp_path):
    curricula = np.tile(np.arange(8).reshape(4, 2), (2, 3, 1))  # [2 runs, 12 steps, 2]
    draws = posterior.simulate_draws(curricula, np.full((2, 3), 2.0), 100)
    observed = draws[7]
    figures = {
        "trajectories": plot_trajectories(draws, observed, runs=[0, 1], tests=[0, 2], point=draws.mean(0)),
        "comparison": plot_comparison(compare(posterior, [curricula[0], curricula[0, :6]], np.full(3, 2.0),
                                              n_draws=100)),
        "effects": plot_effects(at.final_loss_effects(posterior, curricula[0], np.full(3, 2.0), n_draws=100), k=3),
        "scores": plot_scores({"mean": {"mse": 1.0}, "bayes": {"mse": 0.5, "crps": 0.1}}, ["mse", "crps"]),
    }
    for name, figure in figures.items():
        assert isinstance(figure, Figure)
        figure.savefig(tmp_path / f"{name}.png", dpi=60)
        assert _is_png(tmp_path / f"{name}.png")
    assert len(figures["trajectories"].axes) == 4
    with pytest.raises(ValueError, match="out of range"):
        plot_trajectories(draws, observed, runs=[2])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    runs, _ = synthetic_runs(n_train=10, n_tests=3, n_runs=12, n_steps=15, batch_size=2, effect_scale=0.05, seed=3)
    runs.save(folder / "runs.npz")
    SimfluenceLinear(ridge=0.01).fit(runs).save(folder / "linear.npz")
    (folder / "mine.json").write_text(json.dumps([[0, 1], [2], [3, 4]]))
    return folder


def test_compare_cli_writes_the_png_and_json(saved, capsys):
    png = saved / "out" / "compare.png"
    assert main(["compare", "--simulator", str(saved / "linear.npz"), "--curricula", f"{saved / 'runs.npz'}:0",
                 "--curricula", str(saved / "mine.json"), "--tests", "0,2", "--plot", str(png), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["label"] for c in report["candidates"]] == ["runs:0", "mine"] and report["tests"] == [0, 2]
    assert _is_png(png)
    assert main(["compare", "--simulator", str(saved / "linear.npz"), "--curricula", f"{saved / 'runs.npz'}:1",
                 "--leave-out", "3,4"]) == 0
    assert "without 3,4" in capsys.readouterr().out


def test_compare_cli_errors_exit_2(saved, capsys):
    args = ["compare", "--simulator", str(saved / "linear.npz")]
    assert main(args + ["--curricula", str(saved / "mine.json"), "--curricula", str(saved / "mine.json")]) == 2
    assert "initial losses" in capsys.readouterr().err
    assert main(args + ["--curricula", f"{saved / 'runs.npz'}:0", "--leave-out", "3", "--tests", "7"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(args + ["--curricula", f"{saved / 'runs.npz'}:0"]) == 2


def test_plot_cli_writes_trajectories_and_attributions(saved, capsys):
    for kind, extra in (("trajectories", ["--runs", str(saved / "runs.npz"), "--run", "0,1", "--test", "1"]),
                        ("attributions", ["--curricula", f"{saved / 'runs.npz'}:0", "--top", "4"])):
        png = saved / f"{kind}.png"
        assert main(["plot", kind, "--simulator", str(saved / "linear.npz"), "--plot", str(png)] + extra) == 0
        assert _is_png(png)
    assert "top helpful" in capsys.readouterr().out


def test_score_bars_carry_their_intervals_as_whiskers():
    from matplotlib.container import ErrorbarContainer

    results = {"mean": {"mse": 1.0, "mse_interval": [0.8, 1.3]}, "linear": {"mse": 0.5}, "bayes": {"mse": 0.4,
               "mse_interval": [0.3, 0.45]}}
    axis = plot_scores(results, ["mse"]).axes[0]
    (container,) = [c for c in axis.containers if isinstance(c, ErrorbarContainer)]
    (segments,) = container.lines[2]  # one LineCollection of whiskers, one segment per bar with an interval
    extents = sorted((float(s[0][0]), float(s[1][0])) for s in segments.get_segments())
    assert extents == [(0.3, 0.45), (0.8, 1.3)]


def test_evaluate_plot_writes_the_figure(saved, capsys):
    png = saved / "scores" / "evaluate.png"
    assert main(["evaluate", "--runs", str(saved / "runs.npz"), "--heldout-runs", "4", "-m", "mean", "-m", "linear",
                 "--random-subsets", "--plot", str(png)]) == 0
    assert _is_png(png) and "linear" in capsys.readouterr().out
    assert main(["evaluate", "--runs", str(saved / "runs.npz"), "--heldout-runs", "4", "-m", "mean",
                 "--plot", str(saved / "evaluate.txt")]) == 2
    assert "--plot" in capsys.readouterr().err


def _integer_steps_and_legend_off_the_data(figure: Figure) -> None:
    figure.draw_without_rendering()
    steps = [axis for axis in figure.axes if axis.get_xlabel() == "step"]
    assert steps
    for axis in steps:
        ticks = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    legend = figure.legends[0].get_window_extent()
    assert not any(legend.overlaps(axis.get_window_extent()) for axis in figure.axes)


def test_the_demo_figure_ticks_whole_steps_and_keeps_its_legend_off_the_data():
    from bayes_simfluence.commands import demo

    runs, _ = synthetic_runs(n_train=10, n_tests=4, n_runs=10, n_steps=18, batch_size=2, effect_scale=0.05, seed=3)
    train, heldout = runs.split(2)  # 18 steps: the default ticks were 0, 2.5, 5, ...
    _integer_steps_and_legend_off_the_data(demo.trajectories_figure(heldout, {"linear": SimfluenceLinear().fit(train)}))


def test_trajectory_bands_tick_whole_steps(posterior):
    curricula = np.tile(np.arange(8).reshape(4, 2), (1, 5, 1))[:, :18]  # [1 run, 18 steps, 2]
    draws = posterior.simulate_draws(curricula, np.full((1, 3), 2.0), 50)
    _integer_steps_and_legend_off_the_data(plot_trajectories(draws, draws[0], runs=[0], tests=[0, 1]))
