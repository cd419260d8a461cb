r"""Every PNG figure of the application: ``memroll eval``, ``memroll demo`` and ``memroll bench``.

The only module of memroll that imports matplotlib (inside the functions that draw, so importing
this module does not load it).

The figures are drawn on :class:`matplotlib.figure.Figure` objects with an explicit Agg canvas,
never through ``pyplot``: making a figure here changes no global matplotlib state (a user's
notebook backend stays as it was) and needs no display.

==========================  ======================================================================
function                    figure
==========================  ======================================================================
:func:`comparison_figure`   one slice: the reference and every method side by side (magnitude,
                            one grey scale), each with that slice's own PSNR and SSIM, below
                            each method its error map :math:`\big||\hat x| - |x|\big|` (one
                            colour scale for all), and the sampling mask
:func:`loss_curves`         training loss against step, one line per method (log scale), every
                            line told apart by style and marker, and the validation metric
:func:`memory_bars`         peak training memory per method (MB), with the ratio to the first,
                            titled with what was measured
:func:`stage_psnr`          PSNR after every stage or module (GLEAM Fig. 9)
:func:`bars_and_curves`     the benchmark's table 1: memory and time bars, loss curves
:func:`line_panels`         panels of lines (memory or error against depth: tables 2 to 4)
:func:`grouped_bars`        panels of bars grouped by a setting (table 5)
==========================  ======================================================================
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unrolled.training import atomic_path

__all__ = [
    "Line",
    "LinePanel",
    "Panel",
    "bars_and_curves",
    "comparison_figure",
    "display_image",
    "grouped_bars",
    "line_panels",
    "loss_curves",
    "memory_bars",
    "slice_scores",
    "stage_psnr",
]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:  # a full disk leaves the previous figure, and no temporary
        fig.savefig(tmp, format="png")
    return out


def display_image(x: Tensor | np.ndarray, color: bool = False) -> np.ndarray:
    """Return a 2D float array to show for one sample's image.

    Complex images show their magnitude; a volume ``(D, H, W)`` its middle slice; with
    ``color=True`` an image ``(C, H, W)`` its channel mean (grey); a 2D image itself.
    """
    t = torch.as_tensor(x).detach().cpu()
    t = t.abs() if t.is_complex() else t
    t = t.to(torch.float64)
    if color and t.ndim >= 3:
        t = t.mean(0)
    while t.ndim > 2:
        t = t[t.shape[0] // 2]
    if t.ndim != 2:
        raise ValueError(
            f"display_image needs an image of 2 or more dimensions, got {tuple(t.shape)}"
        )
    return t.numpy()


@dataclass
class Panel:
    """One image of a figure: a title and the 2D array (see :func:`display_image`)."""

    title: str
    image: np.ndarray


def slice_scores(image: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Return the PSNR (dB) and SSIM of one 2D image against its reference.

    memroll's metrics (:func:`unrolled.psnr`, :func:`unrolled.ssim`: the reference's peak as
    data range; complex images as magnitudes), so a panel's numbers equal the sample's row in
    ``metrics_<split>.csv``.
    """
    import unrolled

    a = torch.as_tensor(np.asarray(image))[None]
    b = torch.as_tensor(np.asarray(reference))[None]
    return float(unrolled.psnr(a, b)[0]), float(unrolled.ssim(a, b)[0])


def _hide_axes(axes: Any) -> None:
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)


def _mask_cell(ax: Any, mask: np.ndarray | None, mask_title: str, error_gain: float) -> None:
    """Draw the bottom-left cell: the sampling mask (k-space) if given, else the errors' label."""
    if mask is None:
        ax.text(
            0.5,
            0.5,
            f"magnitude error\n||x̂| - |x|| x {error_gain:g}",
            ha="center",
            va="center",
            fontsize=8,
            transform=ax.transAxes,
        )
        return
    shown = np.asarray(mask, dtype=np.float64)
    while shown.ndim > 2:
        shown = shown[shown.shape[0] // 2]
    ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    fraction = float(shown.mean())
    rate = f", R = {1 / fraction:.1f}" if fraction > 0 else ""
    ax.set_title(mask_title or f"sampling mask\n{100 * fraction:.0f}% of k-space{rate}", fontsize=8)


def comparison_figure(
    path: str | os.PathLike[str],
    reference: Panel,
    methods: Sequence[Panel],
    *,
    title: str = "",
    error_gain: float | None = None,
    mask: np.ndarray | None = None,
    mask_title: str = "",
    scores: bool = True,
) -> Path:
    r"""Return the reference and each method side by side, with each method's error map below it.

    Every image uses the grey scale ``[0, max |reference|]``. With ``scores`` every method's
    title gets *this slice's* PSNR and SSIM against the reference (:func:`slice_scores`), never a
    mean over other samples; ``title`` should say which slice it is. ``mask`` (the k-space
    sampling mask, ``(H, W)``) is drawn under the reference with its sampled fraction. The error
    maps of the magnitudes :math:`\big||\hat x| - |x|\big|` (the images the metrics score) share
    one colour scale, ``[0, max |reference| / gain]``; ``error_gain`` (default: the gain that puts
    the median over the methods of each error map's 99th percentile at the top of the scale,
    rounded down to 1, 2 or 5 times a power of ten, so that a much worse method saturates rather
    than darkening the others) is printed with the scale: maps compare only at the same gain.
    """
    ref = reference.image
    peak = float(np.max(np.abs(ref))) or 1.0
    errors = [np.abs(m.image - ref) for m in methods]
    if error_gain is None:
        tops = [float(np.percentile(e, 99)) for e in errors]
        top = float(np.median(tops)) if tops else 0.0
        error_gain = _nice(peak / top) if top > 0 else 1.0
    columns = 1 + len(methods)
    fig = _figure(2.1 * columns, 4.9)
    axes = fig.subplots(2, columns, squeeze=False)
    image_args = {"cmap": "gray", "vmin": 0.0, "vmax": peak, "interpolation": "nearest"}
    axes[0][0].imshow(np.abs(ref), **image_args)
    axes[0][0].set_title(reference.title, fontsize=8)
    _mask_cell(axes[1][0], mask, mask_title, error_gain)
    shown = None
    for k, (method, error) in enumerate(zip(methods, errors), start=1):
        label = method.title
        if scores:
            psnr, ssim = slice_scores(method.image, ref)
            label += f"\n{psnr:.2f} dB, SSIM {ssim:.3f}"
        axes[0][k].imshow(np.abs(method.image), **image_args)
        axes[0][k].set_title(label, fontsize=8)
        shown = axes[1][k].imshow(
            error, cmap="magma", vmin=0.0, vmax=peak / error_gain, interpolation="nearest"
        )
    _hide_axes(axes)
    if shown is not None:
        bar = fig.colorbar(shown, ax=list(axes[1][1:]), shrink=0.8)
        bar.set_label(f"||x̂| - |x||, gain x{error_gain:g}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _nice(value: float) -> float:
    """Return the largest of 1, 2, 5 times a power of ten that is at most ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    exponent = math.floor(math.log10(value))
    for mantissa in (5, 2, 1):
        if mantissa * 10**exponent <= value:
            return float(mantissa * 10**exponent)
    return float(10**exponent)  # pragma: no cover - mantissa 1 always fits


_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def loss_curves(
    path: str | os.PathLike[str],
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    *,
    ylabel: str = "training loss",
    title: str = "",
    validation: Mapping[str, tuple[Sequence[int], Sequence[float]]] | None = None,
    validation_label: str = "validation PSNR (dB)",
) -> Path:
    """Draw the training loss against step, one line per method, and the validation metric.

    Every method has its own colour, line style and marker (markers at staggered steps), so
    methods whose curves coincide (checkpointing repeats backprop exactly) stay visible: the
    legend, outside the axes, says when lines lie on top of each other. The loss scale is
    logarithmic when every loss is > 0. ``validation`` (``{method: (steps, values)}``) draws a
    second panel.
    """
    panels = 2 if validation else 1
    fig = _figure(4.2 * panels + 1.8, 3.6)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _draw_curves(axes[0], curves, ylabel, legend=False)
    if validation:
        _draw_curves(axes[1], validation, validation_label, legend=False, log=False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _same_as(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]]) -> dict[str, str]:
    """For each method whose curve equals an earlier one's, that method's name."""
    seen: dict[tuple[tuple[int, ...], tuple[float, ...]], str] = {}
    same: dict[str, str] = {}
    for label, (steps, values) in curves.items():
        key = (tuple(int(s) for s in steps), tuple(float(v) for v in values))
        if key in seen and values:
            same[label] = seen[key]
        seen.setdefault(key, label)
    return same


def _draw_curves(
    ax: Any,
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    ylabel: str,
    *,
    legend: bool = True,
    log: bool = True,
) -> None:
    positive = True
    same = _same_as(curves)
    for k, (label, (steps, losses)) in enumerate(curves.items()):
        xs, ys = list(steps), list(losses)
        every = max(1, len(xs) // 6)
        name = label + (f" (= {same[label]})" if label in same else "")
        ax.plot(
            xs,
            ys,
            label=name,
            color=f"C{k}",
            linestyle=_STYLES[k % len(_STYLES)],
            marker=_MARKERS[k % len(_MARKERS)],
            markevery=(min(k * max(1, every // 3), max(len(xs) - 1, 0)), every),
            markersize=4,
            linewidth=1.3 + 0.5 * (len(curves) - 1 - k) / max(1, len(curves) - 1),
        )
        positive = positive and all(v > 0 for v in ys)
    if log and positive and curves:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend and curves:
        ax.legend(fontsize=8)


def memory_bars(
    path: str | os.PathLike[str],
    megabytes: Mapping[str, float],
    *,
    ylabel: str = "peak training memory (MB)",
    title: str = "",
    measured: str = "",
) -> Path:
    """One bar per method, labelled with its value (MB) and its ratio to the first method.

    ``title`` (default "peak training memory") and ``measured`` (what was measured: the model,
    its size, the image and batch size, how memory was read) head the figure.
    """
    fig = _figure(max(4.2, 1.2 + 1.1 * max(1, len(megabytes))), 3.9)
    ax = fig.subplots()
    names = list(megabytes)
    values = [float(megabytes[n]) for n in names]
    bars = ax.bar(names, values, color="#4878a8")
    first = values[0] if values and values[0] > 0 else None
    for bar, value in zip(bars, values):
        label = f"{value:.1f} MB" + (f"\n{value / first:.2f}x" if first else "")
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(values, default=1.0) * 1.3 or 1.0)
    ax.tick_params(axis="x", labelsize=8)
    heading = title or "peak training memory"
    if names and first:
        heading += f" (ratios to {names[0]})"
    width = max(40, int(14 * fig.get_figwidth()))  # characters that fit the figure's width
    note = "\n".join(textwrap.wrap(measured, width)) if measured else ""
    ax.set_title(heading + (f"\n{note}" if note else ""), fontsize=8)
    return _save(fig, path)


def stage_psnr(
    path: str | os.PathLike[str],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str = "unrolled iterations used at inference",
    title: str = "",
    references: Mapping[str, float] | None = None,
) -> Path:
    """PSNR (dB) after every stage or module, one line per method (GLEAM Fig.

    9), with optional horizontal reference lines (``{"CS": 40.5}``).
    """
    fig = _figure(5.6, 3.6)
    ax = fig.subplots()
    for label, values in series.items():
        ax.plot(range(1, len(values) + 1), list(values), marker="o", label=label, linewidth=1.2)
    for k, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value, linestyle="--", linewidth=1.0, color=f"C{len(series) + k}", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------
# the benchmark's figures
# ------------------------------------------------------------------------------------------------
def bars_and_curves(
    path: str | os.PathLike[str],
    names: Sequence[str],
    bars: Sequence[tuple[str, Sequence[float], str]],
    curves: Mapping[str, Sequence[float]],
    *,
    title: str = "",
) -> Path:
    """Draw bar panels, then a panel of curves.

    One bar panel per ``(ylabel, values, colour)`` of ``bars`` over ``names``, then the
    ``curves`` (a value per step, log scale when all are positive) in a last panel.
    """
    fig = _figure(13.0, 3.6)
    axes = fig.subplots(1, len(bars) + 1)
    for ax, (ylabel, values, color) in zip(axes, bars):
        ax.bar(list(names), list(values), color=color)
        ax.set_ylabel(ylabel)
    steps = {label: (range(1, len(v) + 1), v) for label, v in curves.items()}
    _draw_curves(axes[-1], steps, "training loss")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


@dataclass
class Line:
    """One line of a :class:`LinePanel`: ``(x, y)`` points and how it is drawn."""

    label: str | None
    points: Sequence[tuple[float, float]]
    style: str = "-"
    color: str | None = None
    alpha: float = 1.0
    marker: str | None = "o"


@dataclass
class LinePanel:
    """One panel of :func:`line_panels`."""

    xlabel: str
    ylabel: str
    lines: list[Line] = field(default_factory=list)
    title: str = ""
    xlog2: bool = False
    ylog: bool = False
    hline: float | None = None


def line_panels(
    path: str | os.PathLike[str],
    panels: Sequence[LinePanel],
    *,
    size: tuple[float, float] = (11.0, 3.8),
    legend_size: float | None = None,
) -> Path:
    """Panels side by side, each with its lines (empty lines are left out)."""
    fig = _figure(*size)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for line in panel.lines:
            if line.points:
                xs, ys = zip(*line.points)
                ax.plot(
                    xs,
                    ys,
                    line.style,
                    marker=line.marker,
                    color=line.color,
                    alpha=line.alpha,
                    label=line.label,
                )
        if panel.hline is not None:
            ax.axhline(panel.hline, color="grey", lw=0.8)
        if panel.xlog2:
            ax.set_xscale("log", base=2)
        if panel.ylog:
            ax.set_yscale("log")
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.title:
            ax.set_title(panel.title)
        ax.legend(fontsize=legend_size)
    return _save(fig, path)


def grouped_bars(
    path: str | os.PathLike[str],
    groups: Sequence[str],
    panels: Sequence[tuple[str, Mapping[str, Sequence[float | None]]]],
    *,
    xlabel: str,
    title: str = "",
) -> Path:
    """Draw panels of bars grouped by a setting.

    Per panel ``(ylabel, {method: one value per group})``, the methods' bars side by side in
    every group (a missing value draws no bar).
    """
    fig = _figure(11.0, 3.8)
    axes = fig.subplots(1, len(panels))
    for ax, (ylabel, series) in zip(axes, panels):
        width = 0.8 / max(1, len(series))
        for i, (method, values) in enumerate(series.items()):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
            ax.bar(xs, [v or 0.0 for v in values], width, label=method)
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
