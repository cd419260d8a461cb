"""physops' quickstart data load in an environment without pytest (issue 13, item 5).

Each test runs a fresh interpreter in which a ``sys.meta_path`` finder, installed before physops
is imported, makes some modules unimportable, as if they were not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

BLOCKER = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder

    BLOCKED = {blocked!r}

    class Block(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED or name in BLOCKED:
                raise ImportError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED or name in BLOCKED:
            del sys.modules[name]
    sys.meta_path.insert(0, Block())
    """
)


def run_blocked(blocked: set[str], body: str) -> subprocess.CompletedProcess[str]:
    code = BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(body)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )


def test_real_anatomy_images_work_without_pytest() -> None:
    proc = run_blocked(
        {"pytest", "_pytest"},
        """
        try:
            import pytest
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker let pytest through")
        import physops
        images = physops.real_anatomy_images("test", image_size=32)
        ds = physops.RealAnatomyDataset("val", image_size=32, num_coils=2)
        assert images.shape == (8, 32, 32), images.shape
        assert ds[0]["kspace"].shape == (2, 32, 32)
        assert "pytest" not in sys.modules and "_pytest" not in sys.modules
        print("ok", 0 < float(images.max()) <= 1)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "True"]


@pytest.mark.parametrize(
    ("blocked", "message"),
    [
        ({"nibabel"}, "need nibabel, which is not installed: pip install nibabel"),
        (
            {"nibabel.loadsave"},
            "need nibabel, which is installed but failed to import: No module named "
            "'nibabel.loadsave'",
        ),
    ],
)
def test_a_missing_nibabel_is_named_for_what_it_is(blocked: set[str], message: str) -> None:
    proc = run_blocked(
        blocked,
        """
        import physops
        try:
            physops.real_anatomy_images("test", image_size=32)
        except ImportError as error:
            print(error)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert message in proc.stdout, proc.stdout
