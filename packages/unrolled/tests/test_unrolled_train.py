"""The training loop: loss goes down, greedy equals GLEAM Alg. 1, exact resume after a kill,
atomic checkpoints, the run folder, evaluation, and one test per bad option."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import unrolled

SIZE = 16
FAST = {"progress": False}


@pytest.fixture(scope="module")
def train_data():
    return unrolled.make_dataset("multicoil_mri", "train", image_size=SIZE, num_coils=4)


@pytest.fixture(scope="module")
def val_data():
    return unrolled.make_dataset("multicoil_mri", "val", image_size=SIZE, num_coils=4)


def _modl(**kwargs):
    torch.manual_seed(0)
    return unrolled.MoDL(iterations=2, features=4, cg_max_iter=10, **kwargs)


def _l1(x_hat, x):
    """Complex L1 (GLEAM), written out: mean absolute value of real and imaginary parts."""
    d = x_hat - x
    if not d.is_complex():
        return d.abs().mean()
    return (d.real.abs().sum() + d.imag.abs().sum()) / (2 * d.numel())


def _rows(path):
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# --------------------------------------------------------------------------------------------
# training lowers the loss
# --------------------------------------------------------------------------------------------
# a few steps from random weights need not reach the equilibrium solvers' tolerance: these tests
# check the loss, not convergence, so unconverged solves are accepted silently
_LOOSE = {"tol": 1e-3, "max_iter": 30, "on_failure": "ignore"}
MODELS = {  # name: (factory, strategy)
    "MoDL": (lambda: unrolled.MoDL(iterations=2, features=4, cg_max_iter=10), "backprop"),
    "UnrolledPGD": (lambda: unrolled.UnrolledPGD(iterations=2, features=4), "backprop"),
    "RIM": (lambda: unrolled.RIM(steps=2, hidden=4), "backprop"),
    "IRIM": (
        lambda: unrolled.IRIM(steps=2, channels=8, blocks=2, hidden=4, downsampling=(1, 2)),
        "reversible",
    ),
    "LUSER": (
        lambda: unrolled.LUSER(
            iterations=2, features=8, groups=4, aux_loss_weight=0.5, solver=_LOOSE
        ),
        "implicit",
    ),
    "DEQ": (lambda: unrolled.DEQ(features=8, depth=3, solver=_LOOSE), "implicit"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_training_lowers_the_loss_on_real_anatomy(name, train_data):
    if not hasattr(unrolled, name):
        pytest.skip(f"unrolled.{name} does not exist yet")
    factory, strategy = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    fixed = train_data.batch([0, 1, 2, 3])
    with torch.no_grad():
        before = float(_l1(model(fixed.y, fixed.physics), fixed.target))
    unrolled.train(model, train_data, strategy=strategy, steps=10, batch_size=2, lr=1e-2, **FAST)
    with torch.no_grad():
        after = float(_l1(model(fixed.y, fixed.physics), fixed.target))
    assert after < 0.95 * before


def test_training_on_real_images_deblurring():
    data = unrolled.make_dataset("deblur", "train", image_size=SIZE)
    torch.manual_seed(0)
    model = unrolled.UnrolledPGD(iterations=2, features=4, **data.model_kwargs)
    fixed = data.batch([0, 1, 2, 3])
    with torch.no_grad():
        before = float(_l1(model(fixed.y, fixed.physics, fixed.x0), fixed.target))
    unrolled.train(model, data, steps=10, batch_size=2, lr=1e-2, **FAST)
    with torch.no_grad():
        after = float(_l1(model(fixed.y, fixed.physics, fixed.x0), fixed.target))
    assert after < 0.95 * before


# --------------------------------------------------------------------------------------------
# strategies through train
# --------------------------------------------------------------------------------------------
def test_checkpoint_trains_exactly_like_backprop(train_data):
    runs = {}
    for strategy in ("backprop", "checkpoint"):
        model = _modl(prior="resnet")
        result = unrolled.train(model, train_data, strategy=strategy, steps=3, batch_size=2, **FAST)
        runs[strategy] = (_params(model), result.losses)
    assert torch.equal(runs["backprop"][0], runs["checkpoint"][0])
    assert runs["backprop"][1] == runs["checkpoint"][1]


def test_reversible_pgd_is_certified_by_train(train_data):
    torch.manual_seed(0)
    model = unrolled.UnrolledPGD(iterations=2, prior="coupling", features=4)
    result = unrolled.train(model, train_data, strategy="reversible", steps=2, batch_size=2, **FAST)
    assert result.strategy == "reversible"
    bounds = [float(g.lipschitz) for g in model.gradient_steps()]
    assert all(0 < b < 2 for b in bounds)  # Sense with normalised maps: L <= 1 (times a margin)


@pytest.mark.parametrize(
    ("factory", "inner"),
    [
        (lambda: unrolled.UnrolledPGD(iterations=4, features=4), "backprop"),
        (lambda: unrolled.MoDL(iterations=4, prior="resnet", features=4), "checkpoint"),
        (lambda: unrolled.MoDL(iterations=4, features=4), "reversible"),
    ],
    ids=["pgd", "modl-checkpoint", "modl-reversible"],
)
def test_greedy_equals_gleam_algorithm_1(factory, inner):
    """``train(strategy="greedy")`` against GLEAM Alg. 1 written out by hand, in float64."""
    data = unrolled.make_dataset(
        "multicoil_mri", "train", image_size=SIZE, num_coils=4, dtype="float64"
    )
    torch.manual_seed(0)
    model = factory().double()
    reference = copy.deepcopy(model)
    steps, batch_size, seed, lr = 3, 2, 5, 1e-2
    options = {"modules": 2, "inner": inner}
    unrolled.train(
        model, data, strategy="greedy", strategy_options=options, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, **FAST,
    )  # fmt: skip

    modules = [list(reference.stages[0:2]), list(reference.stages[2:4])]
    optimizers = [
        torch.optim.Adam([p for s in m for p in s.parameters()], lr=lr, betas=(0.9, 0.999))
        for m in modules
    ]
    for step in range(steps):
        batch = data.batch(unrolled.batch_indices(step, len(data), batch_size, seed))
        context = unrolled.StageContext(batch.y, batch.physics)
        x = reference.adapter.to_net(batch.physics.adjoint(batch.y))  # x^(0) = A^H y
        for stages, optimizer in zip(modules, optimizers):
            optimizer.zero_grad()
            out = x.detach()  # each module starts from the detached output of the previous one
            for stage in stages:
                out = stage(out, context)
            _l1(reference.readout(out), batch.target).backward()
            optimizer.step()
            x = out.detach()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-12), name
    assert not torch.equal(_params(model), _params(factory().double()))  # it did train


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import unrolled

    torch.set_num_threads(1)
    run_dir, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
    options = dict(
        steps=8, batch_size=2, lr=1e-2, scheduler="cosine", checkpoint_every=3, val_every=4,
        val_samples=2, seed=3, progress=False,
    )
    train = unrolled.make_dataset("multicoil_mri", "train", image_size=16, num_coils=4)
    val = unrolled.make_dataset("multicoil_mri", "val", image_size=16, num_coils=4)

    def model():
        torch.manual_seed(0)
        return unrolled.MoDL(iterations=2, features=4, cg_max_iter=10)

    def die(row):
        if row["step"] == 5:  # after the step-3 checkpoint and the step-4 validation
            os.kill(os.getpid(), signal.SIGKILL)

    def dump(m, result, path):
        torch.save({"params": [p.detach() for p in m.parameters()], "losses": result.losses,
                    "val": result.val_history, "rng": torch.rand(4)}, path)

    if mode == "killed":
        unrolled.train(model(), train, val, run_dir=run_dir, callback=die, **options)
    else:
        m = model()
        dump(m, unrolled.train(m, train, val, run_dir=run_dir, resume=True, **options), out)
        m = model()
        dump(m, unrolled.train(m, train, val, run_dir=run_dir + "-straight", **options),
             out + "-straight")
    """
)


def _child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_resume_after_a_kill_is_bit_identical(tmp_path):
    run_dir, out = str(tmp_path / "run"), str(tmp_path / "out.pt")
    killed = _child(run_dir, "killed", out)
    assert killed.returncode == -9, killed.stderr  # SIGKILL, mid-run
    assert torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)["step"] == 3
    rows = _rows(Path(run_dir) / "log.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5"]  # logged past the checkpoint

    resumed = _child(run_dir, "resume", out)
    assert resumed.returncode == 0, resumed.stderr
    a, b = torch.load(out), torch.load(out + "-straight")
    assert len(a["losses"]) == 8
    assert a["losses"] == b["losses"]
    assert all(torch.equal(p, q) for p, q in zip(a["params"], b["params"]))
    assert a["val"] == b["val"]
    assert torch.equal(a["rng"], b["rng"])
    rows = _rows(Path(run_dir) / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 9))  # no duplicated rows
    assert [float(r["loss"]) for r in rows] == pytest.approx(b["losses"], rel=1e-12)


class _Stop(Exception):
    pass


def _stop_at(step):
    def callback(row):
        if row["step"] == step:
            raise _Stop

    return callback


def test_greedy_resume_is_bit_identical(tmp_path, train_data):
    options = {
        "strategy": "greedy",
        "strategy_options": {"modules": 2},
        "steps": 5,
        "batch_size": 2,
        "scheduler": "step",
        "scheduler_step": 2,
        "checkpoint_every": 2,
        **FAST,
    }
    straight = _modl()
    expected = unrolled.train(straight, train_data, run_dir=str(tmp_path / "a"), **options)
    with pytest.raises(_Stop):
        unrolled.train(
            _modl(), train_data, run_dir=str(tmp_path / "b"), callback=_stop_at(3), **options
        )
    resumed = _modl()
    result = unrolled.train(
        resumed, train_data, run_dir=str(tmp_path / "b"), resume=True, **options
    )
    assert result.resumed_from == 2
    assert result.losses == expected.losses
    assert [r["loss_module_0"] for r in result.history] == [
        r["loss_module_0"] for r in expected.history
    ]
    assert torch.equal(_params(resumed), _params(straight))


def test_checkpoints_are_written_atomically(tmp_path, train_data, monkeypatch):
    """A crash while a checkpoint is written leaves the previous one whole (and no temp file),
    and the run resumes from it to the same result as an uninterrupted run."""
    options = {"steps": 4, "batch_size": 2, "checkpoint_every": 2, **FAST}
    real_save = torch.save

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    def break_saving(row):
        if row["step"] == 3:
            monkeypatch.setattr(torch, "save", crash)

    run_dir = tmp_path / "run"
    with pytest.raises(OSError, match="disk full"):
        unrolled.train(_modl(), train_data, run_dir=str(run_dir), callback=break_saving, **options)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "log.csv", "val.csv"]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 2

    resumed = _modl()
    result = unrolled.train(resumed, train_data, run_dir=str(run_dir), resume=True, **options)
    straight = _modl()
    expected = unrolled.train(straight, train_data, **{**options, "checkpoint_every": None})
    assert result.losses == expected.losses
    assert torch.equal(_params(resumed), _params(straight))


def test_training_with_workers_matches_in_process(train_data):
    losses = []
    for workers in (0, 2):
        result = unrolled.train(
            _modl(), train_data, steps=3, batch_size=2, num_workers=workers, **FAST
        )
        losses.append(result.losses)
    assert losses[0] == losses[1]


# --------------------------------------------------------------------------------------------
# the run folder, the result, evaluation
# --------------------------------------------------------------------------------------------
def test_run_folder_layout_and_best_model(tmp_path, train_data, val_data):
    run_dir = tmp_path / "run"
    model = _modl()
    result = unrolled.train(
        model, train_data, val_data, steps=4, batch_size=2, lr=1e-2, val_every=2, log_every=2,
        run_dir=str(run_dir), **FAST,
    )  # fmt: skip
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["best.pt", "checkpoint.pt", "log.csv", "train_result.json", "val.csv"]
    log = _rows(run_dir / "log.csv")
    assert [r["step"] for r in log] == ["2", "4"]
    assert list(log[0]) == ["step", "epoch", "loss", "lr", "time_s"]
    val = _rows(run_dir / "val.csv")
    assert [r["step"] for r in val] == ["2", "4"]
    summary = json.loads((run_dir / "train_result.json").read_text())
    assert summary["steps"] == 4
    assert summary["best"] == result.best
    assert summary["memory_kind"] == "cpu_peak_rss"
    assert result.peak_memory_bytes > 0
    assert result.median_step_time_s > 0

    # best.pt holds the model that scored result.best on the validation data
    best = min(result.val_history, key=lambda r: r["nrmse"])
    assert result.best["step"] == best["step"]
    fresh = _modl()
    info = unrolled.load_model(fresh, run_dir / "best.pt")
    assert info["step"] == best["step"]
    table = unrolled.evaluate(fresh, val_data, batch_size=2)  # as validated: val_batch_size = 2
    assert table.mean()["nrmse"] == pytest.approx(best["nrmse"], rel=1e-12)


def test_best_state_in_memory_without_run_dir(train_data, val_data):
    model = _modl()
    result = unrolled.train(model, train_data, val_data, steps=2, batch_size=2, val_every=1, **FAST)
    fresh = result.load_best(_modl())
    table = unrolled.evaluate(fresh, val_data, batch_size=2)
    assert table.mean()["nrmse"] == pytest.approx(result.best["nrmse"], rel=1e-12)


def test_evaluate_table(val_data, tmp_path):
    model = _modl()
    table = unrolled.evaluate(model, val_data, batch_size=3, max_samples=5)
    assert len(table) == 5
    assert [r["sample"] for r in table.rows] == [0, 1, 2, 3, 4]
    batch = val_data.batch([3])
    with torch.no_grad():
        x_hat = model(batch.y, batch.physics)
    assert table.rows[3]["psnr"] == pytest.approx(float(unrolled.psnr(x_hat, batch.target)[0]))
    assert table.rows[3]["ssim"] == pytest.approx(float(unrolled.ssim(x_hat, batch.target)[0]))
    psnrs = table.column("psnr")
    mean = sum(psnrs) / 5
    assert table.summary()["psnr"] == {
        "mean": pytest.approx(mean),
        "std": pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in psnrs) / 5)),
    }
    table.to_csv(tmp_path / "m.csv")
    assert len(_rows(tmp_path / "m.csv")) == 5


def test_psnr_per_stage_and_module(val_data):
    model = unrolled.MoDL(iterations=4, features=4, cg_max_iter=10)
    stages = unrolled.psnr_per_stage(model, val_data, max_samples=2)
    modules = unrolled.psnr_per_stage(model, val_data, per="module", modules=2, max_samples=2)
    assert len(stages) == 4
    assert modules == [stages[1], stages[3]]
    final = unrolled.evaluate(model, val_data, max_samples=2).mean()["psnr"]
    assert stages[-1] == pytest.approx(final)


def test_progress_bar(train_data, capsys):
    unrolled.train(_modl(), train_data, steps=1, batch_size=2, progress=True)
    assert "train backprop" in capsys.readouterr().err


def test_ready_batches_as_data(train_data):
    batches = [train_data.batch([0, 1]), train_data.batch([2, 3])]
    result = unrolled.train(_modl(), batches, steps=3, **FAST)
    assert len(result.losses) == 3


def test_loss_over_stages_and_auxiliary_loss(train_data):
    batch = train_data.batch([0, 1])
    l1 = unrolled.get_loss("l1")
    model = _modl()
    model.aux_loss_weight = 0.5  # LUSER's auxiliary loss on intermediate reconstructions
    with torch.no_grad():
        outs = model.intermediates(batch.y, batch.physics)
    mse = torch.view_as_real(outs[0] - batch.target).square().mean()
    expected = l1(outs[-1], batch.target) + 0.5 * mse
    from unrolled.training import model_loss

    with torch.no_grad():
        assert float(model_loss(model, batch, l1)) == pytest.approx(float(expected), rel=1e-6)
    rim = unrolled.RIM(steps=3, hidden=4)
    with torch.no_grad():
        expected = sum(l1(o, batch.target) for o in rim.intermediates(batch.y, batch.physics))
        assert float(model_loss(rim, batch, l1)) == pytest.approx(float(expected), rel=1e-6)


def test_batch_indices_cover_every_sample_once_per_epoch():
    epoch = [i for s in range(5) for i in unrolled.batch_indices(s, 11, 2, seed=7)]
    assert sorted(epoch) == sorted(set(epoch))
    assert len(epoch) == 10
    assert unrolled.batch_indices(5, 11, 2, seed=7) != unrolled.batch_indices(0, 11, 2, seed=7)
    assert unrolled.batch_indices(3, 11, 2, seed=7) == unrolled.batch_indices(3, 11, 2, seed=7)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
BAD_OPTIONS = [
    ({"stepz": 3}, "unknown training option 'stepz'; valid options: steps, batch_size"),
    ({"loss": "l3"}, "unknown loss 'l3'; valid names: l1, mse, nmse, ssim"),
    ({"scheduler": "linear"}, "unknown scheduler 'linear'; valid schedulers: none, cosine, step"),
    ({"steps": -1}, "steps must be a positive integer, got -1"),
    ({"steps": 2.5}, "steps must be a positive integer, got 2.5"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
    ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
    ({"clip_grad_norm": -1.0}, "clip_grad_norm must be a finite number > 0"),
    ({"num_workers": -1}, "num_workers must be an integer >= 0, got -1"),
    ({"checkpoint_every": 2}, "checkpoint_every needs run_dir"),
    ({"resume": True}, "resume=True needs run_dir"),
    ({"val_every": 2}, "val_every=2 needs val_data"),
    ({"batch_size": 29}, "batch_size=29 is larger than the 28 training samples"),
    ({"strategy_options": {"modulez": 2}}, "invalid option for strategy 'backprop'"),
    ({"device": "gpu"}, "device must name a torch device"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_options(options, message, train_data):
    with pytest.raises(ValueError, match=message):
        unrolled.train(_modl(), train_data, **{"steps": 1, **FAST, **options})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda(train_data):
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        unrolled.train(_modl(), train_data, steps=1, device="cuda", **FAST)


def test_unknown_strategy(train_data):
    with pytest.raises(ValueError, match="unknown strategy 'magic'; valid strategies"):
        unrolled.train(_modl(), train_data, strategy="magic", steps=1, **FAST)


def test_strategy_the_model_cannot_use(train_data):
    with pytest.raises(ValueError, match="prior='resnet' is not invertible"):
        unrolled.train(_modl(prior="resnet"), train_data, strategy="reversible", steps=1, **FAST)


def test_reversible_with_a_loss_over_stages(train_data):
    model = _modl()
    model.aux_loss_weight = 0.1
    with pytest.raises(ValueError, match="which strategy 'reversible' does not keep"):
        unrolled.train(model, train_data, strategy="reversible", steps=1, **FAST)


def test_bad_auxiliary_weight(train_data):
    model = _modl()
    model.aux_loss_weight = -1.0
    with pytest.raises(ValueError, match=r"MoDL.aux_loss_weight must be a number >= 0, got -1.0"):
        unrolled.train(model, train_data, steps=1, **FAST)


def test_model_must_be_an_unrolled_model(train_data):
    with pytest.raises(TypeError, match=r"model must be an unrolled.UnrolledModel"):
        unrolled.train(torch.nn.Linear(2, 2), train_data, steps=1, **FAST)


def test_data_must_be_a_dataset():
    with pytest.raises(TypeError, match="train_data must be a map-style dataset"):
        unrolled.train(_modl(), iter([]), steps=1, **FAST)


def test_data_without_collate(train_data):
    samples = [train_data[0], train_data[1]]
    with pytest.raises(TypeError, match="has no collate method and its items are dict"):
        unrolled.train(_modl(), samples, steps=1, **FAST)


def test_ready_batches_need_batch_size_one(train_data):
    with pytest.raises(ValueError, match="holds ready Batch objects, used one per step"):
        unrolled.train(_modl(), [train_data.batch([0])] * 2, steps=1, batch_size=2, **FAST)


def test_non_finite_loss_stops_before_the_update(train_data):
    batch = train_data.batch([0, 1])
    batch.target = batch.target * float("nan")
    model = _modl()
    before = _params(model)
    with pytest.raises(FloatingPointError, match="the training loss is nan at step 1"):
        unrolled.train(model, [batch], steps=1, **FAST)
    assert torch.equal(_params(model), before)


def test_existing_run_is_not_overwritten(tmp_path, train_data):
    unrolled.train(_modl(), train_data, steps=1, run_dir=str(tmp_path), **FAST)
    with pytest.raises(ValueError, match=r"already holds a run .* pass resume=True"):
        unrolled.train(_modl(), train_data, steps=1, run_dir=str(tmp_path), **FAST)


def test_resume_without_checkpoint(tmp_path, train_data):
    with pytest.raises(ValueError, match=r"resume=True but .*checkpoint.pt' does not exist"):
        unrolled.train(_modl(), train_data, steps=1, run_dir=str(tmp_path), resume=True, **FAST)


def test_resume_with_other_options(tmp_path, train_data):
    unrolled.train(_modl(), train_data, steps=1, run_dir=str(tmp_path), **FAST)
    with pytest.raises(ValueError, match=r"option lr=0.01 differs from the run's lr=0.001"):
        unrolled.train(
            _modl(), train_data, steps=2, lr=1e-2, run_dir=str(tmp_path), resume=True, **FAST
        )
    with pytest.raises(
        ValueError, match=r"strategy 'checkpoint.*' differs from the run's 'backprop'"
    ):
        unrolled.train(
            _modl(), train_data, strategy="checkpoint", steps=2, run_dir=str(tmp_path),
            resume=True, **FAST,
        )  # fmt: skip


@pytest.mark.slow
def test_readme_example_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Tasks and training", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "modl-greedy" / "best.pt").is_file()


@pytest.mark.gpu
def test_training_on_cuda_records_cuda_memory(train_data, val_data):
    result = unrolled.train(
        _modl(), train_data, val_data, steps=2, batch_size=2, device="cuda", val_samples=2, **FAST
    )
    assert result.memory_kind == "cuda_max_allocated"
    assert result.peak_memory_bytes > 0
    assert result.best is not None


@pytest.mark.parametrize("strategy", ["backprop", "greedy"])
def test_schedulers(train_data, strategy):
    cosine = unrolled.train(
        _modl(), train_data, strategy=strategy, steps=4, batch_size=2, scheduler="cosine",
        min_lr=1e-4, **FAST,
    )  # fmt: skip
    lrs = [row["lr"] for row in cosine.history]
    expected = [1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert lrs == pytest.approx(expected)
    step = unrolled.train(
        _modl(), train_data, strategy=strategy, steps=5, batch_size=2, scheduler="step",
        scheduler_step=2, scheduler_gamma=0.1, **FAST,
    )  # fmt: skip
    assert [row["lr"] for row in step.history] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])


@pytest.mark.parametrize(("strategy", "calls"), [("backprop", 2), ("greedy", 4)])
def test_gradient_clipping(train_data, monkeypatch, strategy, calls):
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        seen.append((max_norm, sum(p.numel() for p in params)))
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    model = _modl()
    unrolled.train(
        model, train_data, strategy=strategy, steps=2, batch_size=2, clip_grad_norm=0.5, **FAST
    )
    assert [m for m, _ in seen] == [0.5] * calls  # once per step (greedy: per module and step)
    assert sum(n for _, n in seen[: calls // 2]) == sum(p.numel() for p in model.parameters())
