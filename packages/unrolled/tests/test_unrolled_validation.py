"""Every public entry point validates its arguments through the one ``_validate`` module: a
boolean or a fraction where an integer is expected is refused with a message naming the argument,
what was expected and what was received (as ``LUSER`` always did)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import unrolled
from unrolled import _validate


# --------------------------------------------------------------------------------------------
# the models refuse what LUSER refuses
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [unrolled.MoDL, unrolled.UnrolledPGD, unrolled.lu_dncnn])
def test_iterations_true_is_refused(model):
    with pytest.raises(ValueError, match=r"iterations must be a positive integer, got True"):
        model(iterations=True)


@pytest.mark.parametrize("model", [unrolled.MoDL, unrolled.UnrolledPGD, unrolled.lu_dncnn])
def test_iterations_fraction_is_refused(model):
    with pytest.raises(ValueError, match=r"iterations must be a positive integer, got 2\.5"):
        model(iterations=2.5)


@pytest.mark.parametrize("model", [unrolled.MoDL, unrolled.UnrolledPGD])
def test_iterations_zero_is_refused(model):
    with pytest.raises(ValueError, match=r"iterations must be a positive integer, got 0"):
        model(iterations=0)


def test_luser_refuses_the_same_way():
    with pytest.raises(ValueError, match=r"iterations must be a positive integer, got True"):
        unrolled.LUSER(iterations=True)
    with pytest.raises(ValueError, match=r"iterations must be a positive integer, got 2\.5"):
        unrolled.LUSER(iterations=2.5)


def test_modl_features_zero():
    with pytest.raises(ValueError, match=r"features must be a positive integer, got 0"):
        unrolled.MoDL(iterations=1, features=0)


def test_modl_features_true():
    with pytest.raises(ValueError, match=r"features must be a positive integer, got True"):
        unrolled.MoDL(iterations=1, features=True)


def test_modl_mu_infinite():
    with pytest.raises(ValueError, match=r"mu \(MoDL's data-consistency weight\) must be positive"):
        unrolled.MoDL(iterations=1, mu=float("inf"))


def test_modl_cg_max_iter_fraction():
    with pytest.raises(ValueError, match=r"cg_max_iter must be a positive integer, got 2\.5"):
        unrolled.MoDL(iterations=1, cg_max_iter=2.5)


def test_modl_couplings_zero():
    with pytest.raises(ValueError, match=r"couplings must be a positive integer, got 0"):
        unrolled.MoDL(iterations=1, couplings=0)


def test_pgd_step_nan():
    with pytest.raises(ValueError, match=r"step \(the gradient step size alpha\) must be positive"):
        unrolled.UnrolledPGD(iterations=1, step=float("nan"))


def test_rim_steps_true():
    with pytest.raises(ValueError, match=r"steps must be a positive integer, got True"):
        unrolled.RIM(steps=True)


def test_irim_blocks_fraction():
    with pytest.raises(ValueError, match=r"blocks must be a positive integer, got 1\.5"):
        unrolled.IRIM(blocks=1.5)


def test_deq_depth_true():
    with pytest.raises(ValueError, match=r"depth must be at least 2, got True"):
        unrolled.DEQ(depth=True)


def test_dncnn_features_zero():
    with pytest.raises(ValueError, match=r"features must be a positive integer, got 0"):
        unrolled.DnCNN(1, features=0)


def test_luser_groups_zero():
    with pytest.raises(ValueError, match=r"groups must be a positive integer, got 0"):
        unrolled.LUSERProx(2, groups=0)


def test_color_channels_true():
    with pytest.raises(ValueError, match=r"color_channels must be a positive integer or None"):
        unrolled.ImageAdapter(complex=False, color_channels=True)


def test_dims_four():
    with pytest.raises(ValueError, match=r"dims must be one of 2, 3 \(2D images"):
        unrolled.ImageAdapter(dims=4)


def test_prior_layers_zero():
    with pytest.raises(ValueError, match=r"layers must be a positive integer, got 0"):
        unrolled.build_prior("coupling", 2, layers=0)


# --------------------------------------------------------------------------------------------
# strategies and training options
# --------------------------------------------------------------------------------------------
def test_strategy_modules_true():
    with pytest.raises(ValueError, match=r"modules must be a positive integer or None, got True"):
        unrolled.Strategy("greedy", modules=True)


def test_strategy_checkpoint_every_fraction():
    with pytest.raises(
        ValueError, match=r"checkpoint_every must be a positive integer or None, got 1\.5"
    ):
        unrolled.Strategy("checkpoint", checkpoint_every=1.5)


def test_strategy_check_drift_infinite():
    with pytest.raises(ValueError, match=r"check_drift must be a positive tolerance or None"):
        unrolled.Strategy("reversible", check_drift=float("inf"))


def test_strategy_on_drift():
    with pytest.raises(ValueError, match=r"on_drift must be 'raise' or 'recompute', got 'skip'"):
        unrolled.Strategy("reversible", on_drift="skip")  # type: ignore[arg-type]


def test_train_option_batch_size_true():
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got True"):
        unrolled.TrainOptions.from_kwargs({"batch_size": True})


def test_train_option_seed_negative():
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0, got -1"):
        unrolled.TrainOptions.from_kwargs({"seed": -1})


# --------------------------------------------------------------------------------------------
# the helpers themselves
# --------------------------------------------------------------------------------------------
def test_positive_int_refuses_booleans_and_fractions():
    assert _validate.positive_int("n", 3) == 3
    assert _validate.positive_int("n", None, optional=True) is None
    for bad in (True, 2.5, 0, "3"):
        with pytest.raises(ValueError, match=rf"n must be a positive integer, got {bad!r}"):
            _validate.positive_int("n", bad)


def test_finite_number_ranges():
    assert _validate.finite_number("x", 1, low=0, low_open=True) == 1.0
    with pytest.raises(ValueError, match=r"x must be a finite number in \(0, 2\), got 2"):
        _validate.finite_number("x", 2, low=0, high=2, low_open=True, high_open=True)
    with pytest.raises(ValueError, match=r"x must be a finite number >= 0, got nan"):
        _validate.finite_number("x", float("nan"), low=0)
    with pytest.raises(ValueError, match=r"x must be a finite number, got True"):
        _validate.finite_number("x", True)


def test_one_of_lists_or_says_the_choices():
    assert _validate.one_of("m", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"m must be one of 'a', 'b', got 'c'"):
        _validate.one_of("m", "c", ("a", "b"))
    with pytest.raises(ValueError, match=r"m must be 'a', 'b' or 'c', got 'd'"):
        _validate.one_of("m", "d", ("a", "b", "c"), listing=False)


def test_check_split():
    assert _validate.check_split("val") == "val"
    with pytest.raises(ValueError, match=r"split must be one of 'train', 'val', 'test', got 1"):
        _validate.check_split(1)


def test_count_parameters_counts_shared_weights_once():
    shared = unrolled.MoDL(iterations=3, features=4, share_weights=True)
    single = unrolled.MoDL(iterations=1, features=4)
    assert unrolled.count_parameters(shared) == unrolled.count_parameters(single)
    frozen = unrolled.MoDL(iterations=1, features=4, learn_mu=False)
    assert unrolled.count_parameters(single) - unrolled.count_parameters(frozen) == 1


# --------------------------------------------------------------------------------------------
# the library loads no application
# --------------------------------------------------------------------------------------------
def test_import_unrolled_loads_no_plotting_no_file_writing_no_app():
    code = (
        "import sys, unrolled; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'matplotlib', 'h5py', 'memroll', 'sigpy', 'tomllib', 'tomli'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_every_name_of_0_1_stays():
    names_0_1 = {
        "CS_EXTRA", "DARKFIELD_FLOOR", "DEQ", "EQUILIBRIUM_MODES", "INVERTIBLE_PRIORS", "IRIM",
        "LUSER", "METRICS", "PRIORS", "RIM", "SCHEDULERS", "STRATEGIES", "TASKS", "Batch",
        "CGStep", "CompressedSensing", "ConvGRUCell", "DEQStage", "DnCNN", "EquilibriumSolver",
        "FPMGradientStep", "FPMNet", "GradientStep", "ImageAdapter", "InvertibleStage",
        "LUSERProx", "LUSERStage", "MetricsTable", "MoDL", "PtychographyDataset",
        "ResBlockProx", "ResidualCNN", "SpectralNorm", "Stage", "StageContext", "Strategy",
        "TaskDataset", "TaskSpec", "TrainOptions", "TrainResult", "UnrolledModel",
        "UnrolledPGD", "__version__", "as_strategy", "batch_indices", "build_prior",
        "cs_reconstruct", "cs_reconstruct_cine", "design_scale", "evaluate",
        "fanned_downsampling", "get_loss", "get_task", "gradient_lipschitz", "load_model",
        "lu_dncnn", "make_dataset", "nrmse", "psnr", "psnr_per_stage", "ptychography",
        "register_task", "save_model", "spectral_norm", "ssim", "ssim_torch", "train",
    }  # fmt: skip
    assert names_0_1 <= set(unrolled.__all__)
    for name in names_0_1:
        assert getattr(unrolled, name) is not None, name
