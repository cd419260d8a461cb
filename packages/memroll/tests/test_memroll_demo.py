"""The pieces of ``memroll demo``: its table, its progress counting, its figures (the whole
pipeline runs in integration_tests/test_demo.py, in fresh processes)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import unrolled
from memroll import config as _config
from memroll import demo as _demo
from memroll import plots as _plots

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------
def test_rows_give_value_and_ratio_to_backprop():
    reference = {"psnr": 40.0, "ssim": 0.8, "nrmse": 0.02, "memory": 50.0, "time": 200.0}
    metrics = {"psnr": 42.0, "ssim": 0.84, "nrmse": 0.01}
    row = _demo.table_row("reversible", metrics, 25e6, 0.3, reference)
    assert row == [
        "reversible",
        "42.00 (1.05x)",
        "0.8400 (1.05x)",
        "0.0100 (0.50x)",
        "25.0 (0.50x)",
        "300 (1.50x)",
    ]


def test_rows_without_training_leave_memory_and_time_blank():
    reference = {"psnr": 40.0, "ssim": 0.8, "nrmse": 0.02, "memory": 50.0, "time": 200.0}
    row = _demo.table_row("CS", {"psnr": 20.0, "ssim": 0.4, "nrmse": 0.1}, None, None, reference)
    assert row[-2:] == ["-", "-"]
    assert row[1] == "20.00 (0.50x)"


def test_table_is_aligned_and_markdown_has_every_row():
    rows = [["a", "1.0", "2", "3", "4", "5"], ["longer name", "10.00", "2", "3", "4", "5"]]
    header, rule, *lines = _demo.format_table(rows).splitlines()
    column = header.index("PSNR (dB)")
    assert rule[column - 2 : column] == "  "  # the rule breaks between columns
    assert [line[column:].split()[0] for line in lines] == ["1.0", "10.00"]
    markdown = _demo.markdown_table(rows).splitlines()
    assert markdown[0].startswith("| method | PSNR (dB)")
    assert len(markdown) == 2 + len(rows)


def test_logged_steps_counts_complete_rows(tmp_path):
    log = tmp_path / "log.csv"
    assert _demo.logged_steps(log) == 0  # not written yet
    log.write_text("step,loss\n1,0.5\n2,0.4\n3,0.")  # the third row is being written
    assert _demo.logged_steps(log) == 2


def test_quick_overrides_are_valid_config_keys():
    config = _config.load_config(_demo.CONFIG, _demo.QUICK)
    assert config.train.steps == 3
    assert config.model.options["iterations"] == 2


def test_the_demo_trains_one_network_with_every_strategy():
    config = _config.load_config(_demo.CONFIG)
    assert config.model.name == "MoDL"
    assert config.model.options["prior"] in unrolled.INVERTIBLE_PRIORS
    for strategy in _demo.STRATEGIES:
        assert config.strategy.resolve(strategy).name == strategy


def _args(*flags: str, **options) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _demo.add_arguments(parser)
    return parser.parse_args([*flags, *(f"--{k}={v}" for k, v in options.items())])


def test_bad_steps(tmp_path):
    with pytest.raises(ValueError, match="--steps must be a positive integer, got 0"):
        _demo.run(_args(steps=0, out=tmp_path))


def test_bad_jobs(tmp_path):
    with pytest.raises(ValueError, match="--jobs must be a positive integer, got 0"):
        _demo.run(_args("--quick", jobs=0, out=tmp_path))


# --------------------------------------------------------------------------------------------
# the figures
# --------------------------------------------------------------------------------------------
def test_display_image_of_every_image_type():
    x = torch.randn(8, 6, dtype=torch.complex64)
    np.testing.assert_allclose(_plots.display_image(x), x.abs().numpy(), rtol=1e-6)
    volume = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)
    np.testing.assert_array_equal(_plots.display_image(volume), volume[2].numpy())
    rgb = torch.rand(3, 5, 5)
    np.testing.assert_allclose(
        _plots.display_image(rgb, color=True), rgb.mean(0).numpy(), rtol=1e-6
    )


def test_display_image_of_a_vector():
    with pytest.raises(ValueError, match=r"needs an image of 2 or more dimensions, got \(5,\)"):
        _plots.display_image(torch.zeros(5))


@pytest.mark.parametrize(
    ("value", "nice"), [(0.3, 1.0), (1.0, 1.0), (3.7, 2.0), (5.0, 5.0), (99.0, 50.0), (120, 100)]
)
def test_error_gain_is_rounded_down_to_1_2_5(value, nice):
    assert _plots._nice(value) == nice


def test_comparison_figure(tmp_path):
    target = np.ones((8, 8))
    panels = [_plots.Panel("a", target + 0.01), _plots.Panel("b", target + 0.5)]
    path = _plots.comparison_figure(tmp_path / "f.png", _plots.Panel("ref", target), panels)
    assert _is_png(path)
    explicit = _plots.comparison_figure(
        tmp_path / "g.png", _plots.Panel("ref", target), panels, title="t", error_gain=10.0
    )
    assert _is_png(explicit)


def test_line_and_bar_figures(tmp_path):
    curves = {"backprop": ([1, 2, 3], [0.3, 0.2, 0.1]), "zero": ([1, 2], [0.0, 0.1])}
    assert _is_png(_plots.loss_curves(tmp_path / "loss.png", curves, title="x"))
    memory = {"backprop": 60.0, "reversible": 25.0}
    assert _is_png(_plots.memory_bars(tmp_path / "mem.png", memory, title="x"))
    series = {"greedy": [30.0, 35.0, 36.0]}
    path = _plots.stage_psnr(tmp_path / "psnr.png", series, references={"CS": 34.0}, title="x")
    assert _is_png(path)


def test_figures_leave_pyplot_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    _plots.memory_bars(tmp_path / "mem.png", {"a": 1.0})
    assert matplotlib.get_backend() == backend
