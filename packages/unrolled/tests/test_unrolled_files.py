"""The files of a run: weights-only reading (corrupt, truncated, crafted, other versions),
RNG states as plain values, atomic writes that follow the umask and survive a full disk, appends
cut back, two rotated checkpoints and the fallbacks of resume and of a run's weights."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import unrolled
from unrolled.training import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    RunFileError,
    RunFolder,
    append_text,
    atomic_path,
    atomic_save,
    atomic_write_text,
    load_run_weights,
    read_file,
    rng_state,
    save_model,
    set_rng_state,
    to_plain,
)

FAST = {"progress": False}


@pytest.fixture(scope="module")
def train_data():
    return unrolled.make_dataset("multicoil_mri", "train", image_size=16, num_coils=4)


def _modl():
    torch.manual_seed(0)
    return unrolled.MoDL(iterations=2, features=4, cg_max_iter=5)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _assert_same_as_straight(result, resumed, train_data, options):
    """A resumed run's losses and weights equal those of one run straight through."""
    straight = _modl()
    expected = unrolled.train(straight, train_data, **{**options, "checkpoint_every": None})
    assert result.losses == expected.losses
    assert torch.equal(_params(resumed), _params(straight))


@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


class _Payload:
    """Unpickled by Python's full unpickler, it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_through(manager, write):
    with manager as tmp:
        write(tmp)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def _temporaries(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------------
# reading: weights only, and why a file is refused
# --------------------------------------------------------------------------------------------
@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "best.pt"
    save_model(_modl(), path, step=3, metrics={"nrmse": 0.5})
    return path


def test_model_files_load_with_weights_only(model_file):
    data = torch.load(model_file, weights_only=True)
    assert data["format"] == unrolled.training.MODEL_FORMAT
    assert data["version"] == unrolled.training.MODEL_VERSION
    model = unrolled.MoDL(iterations=2, features=4, cg_max_iter=5)
    info = unrolled.load_model(model, model_file)
    assert info["step"] == 3
    assert torch.equal(_params(model), _params(_modl()))


@pytest.mark.parametrize("plain", [False, True], ids=["torch-save", "plain-pickle"])
def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path, model_file, plain):
    marker = tmp_path / "PAYLOAD_RAN"
    content = {**torch.load(model_file, weights_only=True), "note": _Payload(marker)}
    path = tmp_path / "shared.pt"
    if plain:
        path.write_bytes(pickle.dumps(content))
    else:
        torch.save(content, path)
    with pytest.raises(RunFileError, match=r"needs Python's full unpickler \(it refers to posix"):
        unrolled.load_model(_modl(), path)
    with pytest.raises(RunFileError, match="nothing in it was run"):
        read_file(path)
    assert not marker.exists()


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(b"")
    with pytest.raises(RunFileError, match=r"best.pt' is empty \(0 bytes\)"):
        unrolled.load_model(_modl(), path)


def test_a_truncated_file_is_refused(model_file):
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunFileError, match="is truncated or corrupt: its zip archive ends early"):
        read_file(model_file)


def test_random_bytes_are_refused(model_file):
    model_file.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    with pytest.raises(RunFileError, match=r"is truncated or corrupt \(torch.load: "):
        read_file(model_file)


def test_a_file_of_another_version_names_both(tmp_path, model_file):
    data = torch.load(model_file, weights_only=True)
    torch.save({**data, "version": 7}, model_file)
    with pytest.raises(
        RunFileError, match="is a model file of format version 7; this unrolled reads version 1"
    ):
        unrolled.load_model(_modl(), model_file)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1}, checkpoint)
    with pytest.raises(
        RunFileError, match=f"version 1; this unrolled reads version {CHECKPOINT_VERSION}"
    ):
        read_file(checkpoint, (CHECKPOINT_FORMAT,))


def test_a_file_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(RunFileError, match="is not a model file or a training checkpoint"):
        read_file(path)


def test_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        unrolled.load_model(_modl(), tmp_path / "nope.pt")
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(tmp_path / "nope.pt")


def test_weights_of_other_shapes_are_refused_in_one_line(model_file):
    with pytest.raises(ValueError, match=r"does not fit this MoDL \(Error\(s\) in loading") as info:
        unrolled.load_model(unrolled.MoDL(iterations=2, features=8), model_file)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# plain state
# --------------------------------------------------------------------------------------------
def test_rng_states_survive_a_weights_only_file(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)  # noqa: NPY002 - the global generator the loop saves
    random.gauss(0, 1)  # a cached Gaussian in Python's state
    np.random.standard_normal()  # noqa: NPY002
    path = tmp_path / "rng.pt"
    atomic_save({"rng": rng_state()}, path)
    expected = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(2))  # noqa: NPY002
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)  # noqa: NPY002
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(2))  # noqa: NPY002
    assert torch.equal(expected[0], again[0])
    assert expected[1:3] == again[1:3]
    np.testing.assert_array_equal(expected[3], again[3])


def test_to_plain_converts_numpy_and_refuses_objects():
    plain = to_plain({"a": np.arange(3, dtype=np.uint32), "b": (np.float64(1.5), [np.int64(2)])})
    assert torch.equal(plain["a"], torch.tensor([0, 1, 2]))
    assert plain["b"] == (1.5, [2])
    assert type(plain["b"][0]) is float
    with pytest.raises(TypeError, match=r"the object\['x'\]\[1\] is a pathlib.PosixPath"):
        to_plain({"x": [1, Path("/")]})


@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("backprop", {"scheduler": "cosine"}),
        ("greedy", {"strategy_options": {"modules": 2}, "scheduler": "step"}),
    ],
)
def test_checkpoints_load_with_weights_only(tmp_path, train_data, strategy, options):
    run = tmp_path / "run"
    unrolled.train(
        _modl(), train_data, steps=2, batch_size=2, run_dir=str(run), strategy=strategy,
        **options, **FAST,
    )  # fmt: skip
    data = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (data["format"], data["version"], data["step"]) == (CHECKPOINT_FORMAT, 2, 2)
    assert isinstance(data["rng"]["numpy"]["keys"], torch.Tensor)


# --------------------------------------------------------------------------------------------
# writing: umask, a full disk, a read-only folder, appends
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, train_data, mask, mode):
    with _umask(mask):
        unrolled.train(
            _modl(), train_data, train_data, steps=2, batch_size=2, checkpoint_every=1,
            run_dir=str(tmp_path / "run"), **FAST,
        )  # fmt: skip
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"x")
    files = [p for p in (tmp_path / "run").iterdir()] + [tmp_path / "out.bin"]
    names = sorted(p.name for p in files)
    assert "checkpoint.prev.pt" in names
    assert "log.csv" in names
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(mode) for p in files}


def _full_disk_after(monkeypatch, limit, on=lambda path: True):
    """``os.write`` that accepts ``limit`` bytes in all on matching files, then raises ENOSPC."""
    real = os.write
    budget = {"left": limit}

    def write(fd, data):
        if not on(os.readlink(f"/proc/self/fd/{fd}")):
            return real(fd, data)
        if budget["left"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = real(fd, bytes(data)[: budget["left"]])
        budget["left"] -= count
        return count

    monkeypatch.setattr(os, "write", write)


def test_a_full_disk_keeps_the_previous_file_and_says_how_much_was_written(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    atomic_save({"x": torch.arange(10)}, path)
    _full_disk_after(monkeypatch, 1000)
    with pytest.raises(
        OSError,
        match=(
            r"No space left on device while writing .*state.pt' \(1,000 bytes written to a "
            r"temporary file, which was removed; the previous state.pt is unchanged\)"
        ),
    ) as info:
        atomic_save({"x": torch.zeros(10_000)}, path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(10))
    assert _temporaries(tmp_path) == []


def test_a_read_only_folder_writes_nothing(tmp_path, monkeypatch):
    real = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(
        OSError,
        match=(
            r"Read-only file system: cannot create a file in .* to write a.txt "
            r"\(nothing was written\)"
        ),
    ) as info:
        atomic_write_text(tmp_path / "a.txt", "text")
    assert info.value.errno == errno.EROFS
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_fails_leaves_nothing(tmp_path):
    (tmp_path / "out.h5").write_text("old")

    def write(tmp):
        tmp.write_text("hello")
        raise OSError(errno.ENOSPC, "HDF5 said: a long story\nover lines")

    with pytest.raises(OSError, match=r"No space left on device while writing .*out.h5' \(5 b"):
        _write_through(atomic_path(tmp_path / "out.h5"), write)
    assert (tmp_path / "out.h5").read_text() == "old"
    assert _temporaries(tmp_path) == []


def test_an_append_on_a_full_disk_is_cut_back(tmp_path, monkeypatch):
    log = tmp_path / "log.csv"
    log.write_text("step,loss\n1,0.5\n")
    _full_disk_after(monkeypatch, 3, on=lambda path: path.endswith("log.csv"))
    with pytest.raises(
        OSError,
        match=(
            r"while appending to .*log.csv' \(3 of 7 bytes written, then cut off: the file "
            r"keeps its previous 16 bytes\)"
        ),
    ):
        append_text(log, "2,0.25\n")
    monkeypatch.undo()
    assert log.read_text() == "step,loss\n1,0.5\n"


def test_a_full_disk_mid_training_keeps_the_last_checkpoints(tmp_path, train_data, monkeypatch):
    run = tmp_path / "run"

    def fill_the_disk(row):
        if row["step"] == 3:
            _full_disk_after(monkeypatch, 500, on=lambda path: ".checkpoint.pt." in path)

    options = {"steps": 5, "batch_size": 2, "checkpoint_every": 1, **FAST}
    with pytest.raises(OSError, match=r"No space left on device while writing .*checkpoint.pt"):
        unrolled.train(_modl(), train_data, run_dir=str(run), callback=fill_the_disk, **options)
    monkeypatch.undo()
    assert _temporaries(run) == []
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3
    assert torch.load(run / "checkpoint.prev.pt", weights_only=True)["step"] == 2
    resumed = _modl()
    result = unrolled.train(resumed, train_data, run_dir=str(run), resume=True, **options)
    _assert_same_as_straight(result, resumed, train_data, options)


# --------------------------------------------------------------------------------------------
# two checkpoints and the fallbacks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "empty", "random", "crafted", "missing"])
def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, train_data, damage):
    run = tmp_path / "run"
    options = {"steps": 5, "batch_size": 2, "checkpoint_every": 1, **FAST}
    unrolled.train(_modl(), train_data, run_dir=str(run), **{**options, "steps": 3})
    newest = run / "checkpoint.pt"
    marker = tmp_path / "PAYLOAD_RAN"
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:1000])
    elif damage == "empty":
        newest.write_bytes(b"")
    elif damage == "random":
        newest.write_bytes(os.urandom(3000))
    elif damage == "crafted":
        torch.save({"format": CHECKPOINT_FORMAT, "x": _Payload(marker)}, newest)
    else:
        newest.unlink()
    (run / ".checkpoint.pt.0123abcd.tmp").write_bytes(b"left by a killed writer")
    resumed = _modl()
    result = unrolled.train(resumed, train_data, run_dir=str(run), resume=True, **options)
    assert not marker.exists()
    assert (result.resumed_from, result.resumed_file) == (2, "checkpoint.prev.pt")
    assert result.unusable[0].startswith("checkpoint.pt ")
    events = (run / "events.log").read_text().splitlines()
    assert len(events) == 1
    assert "resumed at step 2 from checkpoint.prev.pt (checkpoint.pt " in events[0]
    assert events[0].endswith(
        "removed the temporary files of an interrupted write: .checkpoint.pt.0123abcd.tmp"
    )
    assert _temporaries(run) == []
    _assert_same_as_straight(result, resumed, train_data, options)


def test_resume_with_no_usable_checkpoint_names_each_file(tmp_path, train_data):
    run = tmp_path / "run"
    options = {"steps": 3, "batch_size": 2, "checkpoint_every": 1, **FAST}
    unrolled.train(_modl(), train_data, run_dir=str(run), **options)
    (run / "checkpoint.pt").write_bytes(b"")
    (run / "checkpoint.prev.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(
        RunFileError,
        match=(
            r"has no usable checkpoint: checkpoint.pt is empty \(0 bytes\).*; "
            r"checkpoint.prev.pt is truncated or corrupt"
        ),
    ) as info:
        unrolled.train(_modl(), train_data, run_dir=str(run), resume=True, **options)
    assert "\n" not in str(info.value)


def test_run_weights_fall_back_from_a_corrupt_best(tmp_path, train_data):
    run = tmp_path / "run"
    result = unrolled.train(
        _modl(), train_data, train_data, steps=3, batch_size=2, checkpoint_every=1,
        run_dir=str(run), **FAST,
    )  # fmt: skip
    model = unrolled.MoDL(iterations=2, features=4, cg_max_iter=5)
    assert load_run_weights(model, run)["file"] == "best.pt"
    (run / "best.pt").write_bytes(b"")
    info = load_run_weights(model, run)
    assert info["file"] == "checkpoint.pt"
    assert info["skipped"] == ["best.pt is empty (0 bytes): the write that made it was cut short"]
    assert info["step"] == result.steps
    last = unrolled.MoDL(iterations=2, features=4, cg_max_iter=5)
    unrolled.load_model(last, run / "checkpoint.pt")
    assert torch.equal(_params(model), _params(last))
    (run / "checkpoint.pt").unlink()
    assert load_run_weights(model, run, "last")["file"] == "checkpoint.prev.pt"
    (run / "checkpoint.prev.pt").write_bytes(b"junk")
    with pytest.raises(
        RunFileError,
        match=(
            r"has no usable weights: best.pt is empty .*; checkpoint.pt does not exist; "
            r"checkpoint.prev.pt is truncated or corrupt"
        ),
    ):
        load_run_weights(model, run)


def test_run_folder_reads_without_creating(tmp_path):
    folder = RunFolder(tmp_path / "nope", create=False)
    assert not folder.has_checkpoint()
    assert not (tmp_path / "nope").exists()
    with pytest.raises(ValueError, match="weights must be one of"):
        load_run_weights(_modl(), tmp_path, "newest")
