"""The fault trial of the ``memroll`` command: bad input and faults a new user runs into.

The cases are in ``fault_cases.toml`` (one table per case: the command, the files it starts
from, the fault, the one line it must end with, and what the command did before issue 12).
``test_integration_faults_cli.py`` runs each in-process with its *simulated* fault (portable);
``python integration_tests/memroll_faults.py trial OUT.json TREE...`` runs each in a fresh process
against the source trees given (their ``packages/*/src`` on ``PYTHONPATH``), with *real* faults
where the case names one (a full or read-only tmpfs in a private mount namespace, a folder without
write permission in a user namespace, so it works as root), and prints the before/after table.

A module of its own name (``conftest`` is taken by every test folder); it imports memroll only
inside functions, so the trial can run it against another tree.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CASES_FILE = Path(__file__).with_name("fault_cases.toml")
HERE = Path(__file__).resolve()
# the run every case starts from: a 2-unroll MoDL on 16 x 16 images, 3 steps, a checkpoint
# every step (so the newest and the previous checkpoint exist), best.pt from step 3
TINY = """name = "tiny"

[task]
name = "multicoil_mri"
image_size = 16
num_coils = 4

[model]
name = "MoDL"
iterations = 2
features = 4
cg_max_iter = 5

[train]
steps = 3
batch_size = 2
val_every = 3
checkpoint_every = 1
progress = false

[eval]
samples = 2
figure_samples = 1
"""
# a crafted file's payload: creates the marker file when Python's full unpickler reads it
PAYLOAD = "touch {marker}"


@dataclass
class Case:
    """One row of the trial (see ``fault_cases.toml``)."""

    id: str
    what: str
    argv: list[str]
    expect: str
    setup: list[str] = field(default_factory=list)
    fault: str = ""
    disk: str = ""
    mount: str = "{disk}"
    status: int = 2
    absent: list[str] = field(default_factory=list)
    before: str = ""


def load_cases() -> list[Case]:
    """Read ``fault_cases.toml``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    data = tomllib.loads(CASES_FILE.read_text())
    return [Case(**row) for row in data["case"]]


# ------------------------------------------------------------------------------------------------
# the workspace of a case
# ------------------------------------------------------------------------------------------------
@dataclass
class Workspace:
    """The folders of one case: ``work`` (its own), ``run`` (a copy of the base run), ``disk``
    (where a real fault's file system is mounted), ``locked`` (a folder without write
    permission), ``marker`` (what a crafted pickle's payload would create)."""

    work: Path
    run: Path = field(init=False)
    disk: Path = field(init=False)
    locked: Path = field(init=False)
    marker: Path = field(init=False)
    tiny: Path = field(init=False)

    def __post_init__(self) -> None:
        names = ("run", "disk", "locked", "PAYLOAD_RAN", "tiny.toml")
        self.run, self.disk, self.locked, self.marker, self.tiny = (self.work / n for n in names)

    def fill(self, text: str) -> str:
        return text.format(
            run=self.run, work=self.work, disk=self.disk, locked=self.locked, tiny=self.tiny
        )


def train_base(folder: Path, env: dict[str, str] | None = None) -> Path:
    """Train the base run into ``folder/base`` (in a fresh process with ``env``, else here)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.toml").write_text(TINY)
    argv = ["train", str(folder / "tiny.toml"), "--run-dir", str(folder / "base"), "--no-eval"]
    if env is None:
        from memroll.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            assert main(argv) == 0
    else:
        command = [sys.executable, "-m", "memroll", "--threads", "1", *argv, "--no-progress"]
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    return folder / "base"


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))

    def __init__(self, command: str):
        self.command = command


def _crafted(path: Path, weights_of: Path, marker: Path, plain: bool) -> None:
    """A file that looks like a model file of unrolled (the weights of the model file
    ``weights_of``) but whose unpickling runs a command."""
    import torch

    weights = torch.load(weights_of, map_location="cpu", weights_only=True)["model"]
    content = {
        "format": "memroll-unrolled-model",
        "version": 1,
        "model_class": "MoDL",
        "step": 3,
        "model": weights,
        "buffers": {},
        "note": _Evil(PAYLOAD.format(marker=marker)),
    }
    if plain:
        path.write_bytes(pickle.dumps(content))
    else:
        torch.save(content, path)


def prepare(case: Case, ws: Workspace, base: Path) -> None:
    """Lay out the case's files: ``setup`` actions, each ``"VERB ARG..."``."""
    ws.work.mkdir(parents=True, exist_ok=True)
    ws.tiny.write_text(TINY)
    rng = random.Random(case.id)  # the same bytes every time
    for action in case.setup:
        verb, *args = ws.fill(action).split(" ", 1)
        arg = args[0] if args else ""
        target = ws.run / arg if arg and not arg.startswith("/") else Path(arg)
        if verb == "run":
            shutil.copytree(base, ws.run)
        elif verb == "remove":
            target.unlink(missing_ok=True)  # the run of another version may lack it
        elif verb == "empty":
            target.write_bytes(b"")
        elif verb == "truncate":
            data = target.read_bytes()
            target.write_bytes(data[: len(data) // 2])
        elif verb == "corrupt":
            target.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
        elif verb in ("pickle", "plain-pickle"):
            _crafted(target, ws.run / "best.pt", ws.marker, plain=verb == "plain-pickle")
        elif verb == "version":
            import torch

            weights = torch.load(ws.run / "best.pt", weights_only=True)["model"]
            data = {"format": "memroll-unrolled-train", "version": 99, "step": 3, "model": weights}
            torch.save(data, target)
        elif verb == "mkdir":
            target.mkdir(parents=True)
        elif verb == "write":
            name, text = arg.split(" ", 1)
            (ws.run / name if not name.startswith("/") else Path(name)).write_text(text + "\n")
        elif verb == "fastmri":
            from memroll_helpers import write_fastmri

            write_fastmri(target, "multicoil")
        elif verb == "luser-config":
            (target / "config.toml").write_text(_luser_config())
        else:
            raise ValueError(f"unknown setup action {action!r} in case {case.id}")


def _luser_config() -> str:
    from memroll.config import config_path

    return config_path("luser_ct").read_text()


# ------------------------------------------------------------------------------------------------
# simulated faults (in-process, for the code under test)
# ------------------------------------------------------------------------------------------------
def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _full_disk_writes(name: str, temporaries: bool = True) -> Any:
    """``os.write`` that fills the disk on the file ``name`` (and, with ``temporaries``, the
    temporary files it is written through): the first write there goes half through, the next
    raises ENOSPC."""
    real = os.write
    temporary = rf"\.{re.escape(name)}\.[0-9a-f]{{8}}\.tmp|" if temporaries else ""
    pattern = re.compile(rf"(^|/)({temporary}{re.escape(name)})$")
    state = {"half": False}

    def write(fd: int, data: Any) -> int:
        if pattern.search(_fd_path(fd)):
            if not state["half"] and len(data) > 1:
                state["half"] = True
                return real(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    return write


def _denied(code: int, folder: Path) -> dict[str, Any]:
    """Replacements of ``os.mkdir``, ``os.open``, ``os.access`` and ``open`` that fail with
    ``code`` (EROFS, EACCES) for anything written under ``folder``."""
    import builtins

    real_mkdir, real_open, real_access, real_builtin_open = os.mkdir, os.open, os.access, open
    inside = str(folder.resolve())

    def under(path: Any) -> bool:
        try:
            return str(Path(os.fspath(path)).resolve()).startswith(inside)
        except TypeError:
            return False

    def fail(path: Any) -> OSError:
        return OSError(code, os.strerror(code), os.fspath(path))

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if under(path):
            raise fail(path)
        real_mkdir(path, *args, **kwargs)

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise fail(path)
        return real_open(path, flags, *args, **kwargs)

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if under(path) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    def builtin_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if not isinstance(file, int) and under(file) and set(mode) & set("wax+"):
            raise fail(file)
        return real_builtin_open(file, mode, *args, **kwargs)

    return {
        (os, "mkdir"): mkdir,
        (os, "open"): open_,
        (os, "access"): access,
        (builtins, "open"): builtin_open,
    }


@contextlib.contextmanager
def simulated(fault: str, ws: Workspace) -> Iterator[None]:
    """Apply a simulated fault: ``no-cuda``, ``one-cuda``, ``enospc FILE`` (its writes),
    ``enospc-append FILE`` (appends only), ``enospc png``, ``enospc h5``, ``erofs DIR``,
    ``eacces DIR`` (anything written under DIR)."""
    import torch

    kind, _, arg = ws.fill(fault).partition(" ")
    patches: dict[tuple[Any, str], Any] = {}
    if kind == "no-cuda":
        patches[(torch.cuda, "is_available")] = lambda: False
    elif kind == "one-cuda":
        patches[(torch.cuda, "is_available")] = lambda: True
        patches[(torch.cuda, "device_count")] = lambda: 1
    elif kind == "enospc" and arg == "png":
        from matplotlib.figure import Figure

        def savefig(self: Any, fname: Any, *args: Any, **kwargs: Any) -> None:
            with open(fname, "wb") as handle:
                handle.write(b"\x89PNG" + b"\0" * 2044)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        patches[(Figure, "savefig")] = savefig
    elif kind == "enospc" and arg == "h5":
        import h5py

        def create_dataset(self: Any, *args: Any, **kwargs: Any) -> None:
            raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed)")

        patches[(h5py.Group, "create_dataset")] = create_dataset
    elif kind == "enospc":
        patches[(os, "write")] = _full_disk_writes(arg)
    elif kind == "enospc-append":
        patches[(os, "write")] = _full_disk_writes(arg, temporaries=False)
    elif kind in ("erofs", "eacces"):
        code = errno.EROFS if kind == "erofs" else errno.EACCES
        Path(arg).mkdir(parents=True, exist_ok=True)
        patches.update(_denied(code, Path(arg)))
    elif kind:
        raise ValueError(f"unknown fault {fault!r}")
    with contextlib.ExitStack() as stack:
        for (owner, name), value in patches.items():
            stack.enter_context(_patched(owner, name, value))
        yield


def run_in_process(case: Case, ws: Workspace) -> tuple[int, str]:
    """Run the case's command here with its simulated fault; return (status, stderr)."""
    from memroll.cli import main

    err, out = io.StringIO(), io.StringIO()
    argv = [ws.fill(a) for a in case.argv]
    with (
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(out),
        simulated(case.fault, ws),
    ):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse
            status = int(exit_.code or 0)
    return status, err.getvalue()


# ------------------------------------------------------------------------------------------------
# real faults (the trial, and the real-disk tests where the machine allows them)
# ------------------------------------------------------------------------------------------------
def real_fault_command(case: Case, ws: Workspace, python: list[str]) -> list[str]:
    """The command that runs ``python`` (``one`` mode) inside the case's real fault."""
    if case.disk == "no-permission":
        ws.locked.mkdir(exist_ok=True)
        ws.locked.chmod(0o500)
        return ["unshare", "--user", *python]  # not root in there: the mode bits apply
    return ["unshare", "--mount", *python, "--disk", case.disk]


def set_up_disk(spec: str, at: Path) -> None:
    """Mount the case's file system at ``at`` (run as root in a private mount namespace).

    A tmpfs, holding what ``at`` held; ``read-only``: remounted read-only, ``free:K``: filled up
    to ``K`` KiB of free space.
    """
    kept = at.with_name(at.name + ".kept")
    if at.is_dir():
        shutil.copytree(at, kept)
    at.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(at)], check=True)
    if kept.is_dir():
        shutil.copytree(kept, at, dirs_exist_ok=True)
    if spec == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(at)], check=True)
    elif spec.startswith("free:"):
        stat = os.statvfs(at)
        free = stat.f_bavail * stat.f_frsize - int(spec[5:]) * 1024
        with open(at / ".filler", "wb") as handle:
            handle.write(b"\0" * max(0, free))
    else:
        raise ValueError(f"unknown disk {spec!r}")


def _one(args: list[str]) -> int:
    """``one CASE_ID WORKDIR [--disk SPEC]``: run one case here (the trial's child)."""
    case = {c.id: c for c in load_cases()}[args[0]]
    ws = Workspace(Path(args[1]))
    argv = [ws.fill(a) for a in case.argv]
    if "--disk" in args:
        set_up_disk(args[args.index("--disk") + 1], Path(ws.fill(case.mount)))
        fault = ""
    else:
        fault = case.fault
    from memroll.cli import main

    with simulated(fault, ws):
        return main(argv)


def describe(status: int, stderr: str, marker: Path) -> str:
    """``one line``, ``traceback (N lines)`` or ``N lines`` (and whether a payload ran)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in stderr:
        start = next(i for i, line in enumerate(lines) if line.startswith("Traceback"))
        text = f"traceback ({len(lines) - start} lines)"
    elif len(lines) == 1:
        text = "one line"
    else:
        text = f"{len(lines)} lines"
    ran = ", the crafted file's payload RAN" if marker.exists() else ""
    return f"{text}, exit {status}{ran}"


def trial(trees: list[str], out: Path) -> dict[str, Any]:
    """Run every case against each source tree in fresh processes; write and return results."""
    results: dict[str, Any] = {"cases": {}, "trees": trees}
    root = Path(tempfile.mkdtemp(prefix="memroll-trial-"))
    for t, tree in enumerate(trees):
        src = ":".join(str(p) for p in sorted(Path(tree).glob("packages/*/src")))
        env = {**os.environ, "PYTHONPATH": f"{src}:{HERE.parent}", "MEMROLL_TRACEBACK": ""}
        base = train_base(root / f"base{t}", env)
        for case in load_cases():
            ws = Workspace(root / f"t{t}" / case.id)
            prepare(case, ws, base)
            python = [sys.executable, str(HERE), "one", case.id, str(ws.work)]
            command = real_fault_command(case, ws, python) if case.disk else python
            started = time.perf_counter()
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=600, check=False
            )
            row = results["cases"].setdefault(case.id, {"what": case.what, "argv": case.argv})
            row[f"tree{t}"] = {
                "result": describe(done.returncode, done.stderr, ws.marker),
                "stderr": done.stderr[-3000:],
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(case.id, t, row[f"tree{t}"]["result"], flush=True)
            with contextlib.suppress(OSError):
                ws.locked.chmod(0o700)
        out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    if sys.argv[1] == "one":
        sys.exit(_one(sys.argv[2:]))
    if sys.argv[1] == "trial":
        trial(sys.argv[3:], Path(sys.argv[2]))
