"""Checkpoints: atomic writes, and a killed run resumes bit-identically."""

from __future__ import annotations

import copy
import errno
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _greedy_helpers import flat_parameters, make_batch, make_stages, mse

import greedytrain._checkpoint as checkpoint_module
from greedytrain import GreedyTrainer, atomic_save

HELPERS = str(Path(__file__).parent)


def _command(checkpoint: Path, out: Path, total: int, mode: str) -> list[str]:
    code = (
        f"import sys; sys.path.insert(0, {HELPERS!r}); from _greedy_helpers import resume_main; "
        f"resume_main({str(checkpoint)!r}, {str(out)!r}, {total}, {mode!r})"
    )
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(tmp_path: Path) -> None:
    total = 6
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        _command(tmp_path / "a.pt", tmp_path / "a.out", total, "fresh"),
        check=True,
        timeout=120,
        env=env,
    )
    victim = subprocess.Popen(
        _command(tmp_path / "b.pt", tmp_path / "b.out", total, "victim"),
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert victim.stdout is not None
        for line in victim.stdout:
            if line.strip() == "saved 3":
                victim.send_signal(signal.SIGKILL)
                break
    finally:
        victim.kill()
        victim.wait(30)
        if victim.stdout is not None:
            victim.stdout.close()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "b.out").exists()  # it really died before finishing
    subprocess.run(
        _command(tmp_path / "b.pt", tmp_path / "b.out", total, "resume"),
        check=True,
        timeout=120,
        env=env,
    )
    straight, resumed = torch.load(tmp_path / "a.out"), torch.load(tmp_path / "b.out")
    assert torch.equal(straight["params"], resumed["params"])
    assert resumed["history"] == straight["history"]
    assert sorted(resumed["history"]) == list(range(total))


def test_state_dict_round_trip_continues_identically(tmp_path: Path) -> None:
    schedule = lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)  # noqa: E731
    a = GreedyTrainer(make_stages(4), mse, modules=2, scheduler_factory=schedule)
    a.train_step(*make_batch(seed=1))
    a.save(tmp_path / "ckpt.pt", extra={"epoch": 7})
    b = GreedyTrainer(copy.deepcopy(list(a.stages)), mse, modules=2, scheduler_factory=schedule)
    b.train_step(*make_batch(seed=5))  # diverge first: load must overwrite everything
    assert b.load(tmp_path / "ckpt.pt") == {"epoch": 7}
    assert b.step == 1
    for trainer in (a, b):
        torch.manual_seed(3)
        trainer.train_step(*make_batch(seed=2))
    assert torch.equal(flat_parameters(a.stages), flat_parameters(b.stages))
    assert [o.param_groups[0]["lr"] for o in a.optimizers] == [
        o.param_groups[0]["lr"] for o in b.optimizers
    ]


def test_a_crash_while_saving_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_save({"version": "old"}, path)

    def torn_save(obj: object, handle) -> None:
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        GreedyTrainer(make_stages(2), mse).save(path)
    monkeypatch.undo()
    assert torch.load(path) == {"version": "old"}
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def test_rng_state_is_restored(tmp_path: Path) -> None:
    trainer = GreedyTrainer(make_stages(2), mse)
    trainer.save(tmp_path / "ckpt.pt")
    expected = torch.rand(3)
    torch.rand(5)
    trainer.load(tmp_path / "ckpt.pt")
    assert torch.equal(torch.rand(3), expected)


def test_loading_into_a_different_split_is_refused(tmp_path: Path) -> None:
    GreedyTrainer(make_stages(4), mse, modules=2).save(tmp_path / "ckpt.pt")
    other = GreedyTrainer(make_stages(4), mse, modules=4)
    with pytest.raises(
        ValueError, match=r"holds 2 modules of sizes \[2, 2\], but this trainer has 4"
    ):
        other.load(tmp_path / "ckpt.pt")


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    torch.save({"model": 1}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="is not a greedytrain checkpoint"):
        GreedyTrainer(make_stages(2), mse).load(tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        GreedyTrainer(make_stages(2), mse).load(tmp_path / "missing.pt")


# ---------------------------------------------------------------------- files that cannot run code
class _Payload:
    """Unpickling this calls open(marker, "w"): a stand-in for a pickle that runs a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_crafted_pickle_is_refused_and_does_not_run(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "ckpt.pt"
    data = {"format": checkpoint_module.FORMAT, "version": 2, "extra": _Payload(marker)}
    if writer == "torch.save":
        torch.save(data, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(data, handle, protocol=4)
    with pytest.raises(ValueError, match=r"refers to \S*open.*nothing in this one was run"):
        GreedyTrainer(make_stages(2), mse).load(path)
    assert not marker.exists()


def test_every_saved_part_loads_without_the_full_unpickler(tmp_path: Path) -> None:
    import numpy  # noqa: F401  (so that the NumPy RNG state is saved too)

    trainer = GreedyTrainer(
        make_stages(2, dtype=torch.float32),
        mse,
        modules=2,
        scheduler_factory=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5),
        amp=True,
        amp_dtype=torch.float16,
    )
    trainer.train_step(*make_batch(dtype=torch.float32))
    trainer.save(tmp_path / "ckpt.pt", extra={"epoch": 3, "note": "plain", "seen": [1, 2]})
    data = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert data["format"] == "memroll-greedytrain-checkpoint"
    assert data["version"] == 2
    assert set(data["rng"][0]) >= {"torch", "python", "numpy"}
    assert all(unit["scaler"] is not None for unit in data["units"])  # fp16: one per module
    assert all(unit["scheduler"] is not None for unit in data["units"])


def test_a_file_of_another_format_version_is_refused_naming_it(tmp_path: Path) -> None:
    trainer = GreedyTrainer(make_stages(2), mse)
    data = trainer.state_dict()
    data["version"] = 3
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(
        ValueError, match=r"has checkpoint format version 3; this greedytrain reads version 2"
    ):
        trainer.load(tmp_path / "future.pt")


def _version_1(trainer: GreedyTrainer) -> dict:
    """What greedytrain 0.1 wrote: RNG states as a Python tuple and a NumPy array."""
    import random

    import numpy as np

    data = trainer.state_dict()
    data["version"] = 1
    data["rng"] = [
        {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),  # noqa: NPY002
        }
    ]
    return data


def test_a_version_1_file_is_refused_naming_its_version(tmp_path: Path) -> None:
    trainer = GreedyTrainer(make_stages(2), mse)
    torch.save(_version_1(trainer), tmp_path / "old.pt")
    with pytest.raises(
        ValueError,
        match=r"is a greedytrain checkpoint of format version 1; this greedytrain reads version 2",
    ):
        trainer.load(tmp_path / "old.pt")


def test_a_version_1_state_dict_loaded_by_its_owner_still_resumes() -> None:
    import random

    trainer = GreedyTrainer(make_stages(2), mse)
    old = _version_1(trainer)
    expected = random.random()
    random.random()
    trainer.load_state_dict(old)
    assert random.random() == expected


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 half a zip", os.urandom(512)])
def test_an_empty_truncated_or_random_file_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "ckpt.pt").write_bytes(content)
    with pytest.raises(ValueError, match=r"ckpt\.pt.* (truncated or corrupt|is not a checkpoint)"):
        GreedyTrainer(make_stages(2), mse).load(tmp_path / "ckpt.pt")


def test_extra_that_needs_the_unpickler_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    trainer = GreedyTrainer(make_stages(2), mse)
    trainer.save(path, extra={"epoch": 1})
    with pytest.raises(TypeError, match=r"the object\['extra'\]\['when'\] is a pathlib\.\w*Path"):
        trainer.save(path, extra={"when": tmp_path})
    assert trainer.load(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


# ---------------------------------------------------------------------- a full disk
@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    """``ckpt.pt``, alone in its folder, holding ``{"version": "old"}``."""
    path = tmp_path / "ckpt.pt"
    atomic_save({"version": "old"}, path)
    return path


def assert_old_file_kept(path: Path) -> None:
    assert torch.load(path) == {"version": "old"}
    assert os.listdir(path.parent) == ["ckpt.pt"]


def test_a_full_disk_while_writing_keeps_the_previous_file_and_says_how_much(
    old_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = old_file

    def full_disk(obj: object, handle) -> None:
        handle.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"No space left on device while writing .*4096 bytes") as err:
        GreedyTrainer(make_stages(2), mse).save(path)
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC
    assert_old_file_kept(path)


def test_a_full_disk_at_the_rename_keeps_the_previous_file(
    old_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = old_file

    def no_space(src: str, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.os, "replace", no_space)
    with pytest.raises(OSError, match=r"while renaming .* \((\d+) bytes written") as err:
        atomic_save({"version": "new", "weights": torch.ones(1000)}, path)
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC
    written = int(re.search(r"\((\d+) bytes written", str(err.value)).group(1))
    assert written > 4000  # the whole file was written before the rename failed
    assert_old_file_kept(path)


def test_atomic_save_checks_plainness_by_default(tmp_path: Path) -> None:
    import numpy as np

    for options in ({"weights_only": True}, {}):  # the default checks too (0.2)
        with pytest.raises(TypeError, match=r"the object\['a'\] is a numpy\.ndarray"):
            atomic_save({"a": np.zeros(2)}, tmp_path / "plain.pt", **options)
    assert not os.listdir(tmp_path)
    atomic_save({"a": np.zeros(2)}, tmp_path / "any.pt", weights_only=False)  # asked for
    assert os.listdir(tmp_path) == ["any.pt"]
