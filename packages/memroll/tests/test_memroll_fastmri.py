"""memroll on fastMRI-format files: ``recon`` writes fastMRI's submission layout (the header's
recon matrix, with and without the file's mask, brain-like and knee-like headers), several files
in one call, ``--evaluate`` and ``eval`` score by fastMRI's metrics, ``prepare`` fills the cache,
a flat folder is refused and an explicit split is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from memroll_test_configs import tiny_config

import physops
import unrolled
from memroll import config as _config
from memroll.cli import main

h5py = pytest.importorskip("h5py")

CONFIG = tiny_config(steps=2, batch_size=1, checkpoint_every=2)
HEADER = (
    '<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
    "<encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize></encodedSpace>"
    "<reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize></reconSpace>"
    "<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{m}</maximum>"
    "<center>{c}</center></kspace_encoding_step_1></encodingLimits></encoding></ismrmrdHeader>"
)
# (image rows, k-space columns, recon matrix); knee-like: more columns than the recon matrix
BRAIN = (19, 19, (19, 19))
KNEE = (18, 25, (18, 18))


def write_file(
    path: Path,
    geometry: tuple[int, int, tuple[int, int]] = BRAIN,
    *,
    slices: int = 2,
    mask: bool = False,
    seed: int = 0,
) -> None:
    """A 4-coil fastMRI-format file with the readout oversampled twice; ``mask``: test-style."""
    rows, cols, recon = geometry
    anatomy = physops.real_anatomy_images("test", image_size=max(rows, cols))[seed : seed + slices]
    images = unrolled.fastmri_center_crop(anatomy, (rows, cols)).to(torch.complex64)
    padded = torch.nn.functional.pad(images, (0, 0, rows // 2, rows - rows // 2))
    kspace = physops.fftc(physops.birdcage_maps((2 * rows, cols), 4)[None] * padded[:, None])
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        header = HEADER.format(
            ex=2 * rows, ey=cols, rx=recon[0], ry=recon[1], m=cols - 1, c=cols // 2
        )
        f.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
        if mask:
            columns = (np.arange(cols) % 2 == 0) | (np.abs(np.arange(cols) - cols // 2) < 4)
            f.create_dataset("kspace", data=(kspace * torch.from_numpy(columns)).numpy())
            f.create_dataset("mask", data=columns.astype(np.float32))
        else:
            f.create_dataset("kspace", data=kspace.numpy())
            coil_images = unrolled.fastmri_center_crop(physops.ifftc(kspace), recon)
            f.create_dataset("reconstruction_rss", data=physops.rss(coil_images).numpy())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MoDL trained on the embedded data (the model is convolutional: any image size)."""
    folder = tmp_path_factory.mktemp("fastmri")
    (folder / "tiny.toml").write_text(CONFIG)
    run = folder / "run"
    assert main(["train", str(folder / "tiny.toml"), "--run-dir", str(run), "--no-eval"]) == 0
    return run


def _model(run: Path, data: unrolled.TaskDataset) -> torch.nn.Module:
    config = _config.load_config(run / "config.toml")
    model = _config.build_model(config, data)
    unrolled.load_model(model, run / "best.pt")
    return model.eval()


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("geometry", "mask"), [(BRAIN, False), (BRAIN, True), (KNEE, False), (KNEE, True)]
)
def test_recon_writes_the_header_recon_matrix(trained, tmp_path, geometry, mask):
    source, output = tmp_path / "in.h5", tmp_path / "out.h5"
    write_file(source, geometry, mask=mask)
    assert main(["recon", str(trained), str(source), str(output), "--no-progress"]) == 0
    with h5py.File(output, "r") as f:
        assert list(f.keys()) == ["reconstruction"]
        recon = np.asarray(f["reconstruction"])
        assert list(f.attrs["recon_matrix"]) == list(geometry[2])
        assert bool(f.attrs["retrospective_undersampling"]) is not mask
    assert recon.shape == (2, *geometry[2])
    assert recon.dtype == np.float32
    assert (recon >= 0).all()
    assert np.isfinite(recon).all()


def test_a_test_style_file_is_the_model_applied_then_cropped(trained, tmp_path):
    """The model sees every measured column; the image is then cut to the recon matrix."""
    source, output = tmp_path / "test_file.h5", tmp_path / "out.h5"
    write_file(source, KNEE, mask=True)
    assert main(["recon", str(trained), str(source), str(output), "--no-progress"]) == 0
    with h5py.File(output, "r") as f:
        recon = np.asarray(f["reconstruction"])
    data = unrolled.make_dataset("multicoil_mri", "test", root=str(source))
    model = _model(trained, data)
    for i in range(2):
        sample = data[i]
        batch = data.collate([sample])
        assert tuple(batch.y.shape[-2:]) == (18, 25)
        with torch.no_grad():
            image = model(batch.y, batch.physics).abs()[0] / float(sample["scale"])
        expected = unrolled.fastmri_center_crop(image, (18, 18))
        np.testing.assert_allclose(recon[i], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_recon_of_several_files_and_a_folder_with_evaluate(trained, tmp_path, capsys):
    folder = tmp_path / "scans"
    write_file(folder / "a.h5", BRAIN, seed=0)
    write_file(folder / "b.h5", KNEE, seed=2)
    write_file(tmp_path / "c.h5", KNEE, mask=True)
    out = tmp_path / "submission"
    argv = ["recon", str(trained), str(folder), str(tmp_path / "c.h5"), str(out), "--evaluate"]
    assert main([*argv, "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.h5")) == ["a.h5", "b.h5", "c.h5"]
    assert "fastMRI metrics against reconstruction_rss" in said
    assert "--evaluate: c.h5 has no reconstruction_rss: not scored" in said
    assert "mean over 2 volumes" in said
    for name in ("a.h5", "b.h5"):
        with h5py.File(out / name, "r") as f, h5py.File(folder / name, "r") as g:
            recon, target = np.asarray(f["reconstruction"]), np.asarray(g["reconstruction_rss"])
        scores = unrolled.fastmri_metrics(target, recon)
        line = next(row for row in said.splitlines() if row.startswith(name))
        assert f"{scores['psnr']:9.2f}" in line
        assert f"{scores['ssim']:.4f}" in line


def test_recon_bad_outputs(trained, tmp_path, capsys):
    write_file(tmp_path / "a.h5", slices=1)
    write_file(tmp_path / "b.h5", slices=1)
    err = _fails(["recon", str(trained), str(tmp_path / "a.h5")], capsys)
    assert "give the INPUT file(s) and the OUTPUT" in err
    argv = ["recon", str(trained), str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]
    argv += [str(tmp_path / "o.h5")]
    assert "2 inputs need an output folder" in _fails(argv, capsys)
    argv = ["recon", str(trained), str(tmp_path), str(tmp_path)]
    assert "OUTPUT must differ from INPUT" in _fails(argv, capsys)


def test_prepare_fills_the_cache_once(tmp_path, capsys):
    for split in ("train", "val", "test"):
        write_file(tmp_path / split / f"{split}.h5")
    argv = ["prepare", str(tmp_path), "--no-progress", "--image-size", "16"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "coil maps of 3 volumes (6 slices, espirit on cpu): 3 computed" in said
    assert len(list((tmp_path / "train" / ".coil_maps").glob("*.16x16.*.h5"))) == 1
    assert main(argv) == 0
    assert "0 computed in 0.0 s, 3 already up to date" in capsys.readouterr().out


def test_prepare_of_a_missing_folder(tmp_path, capsys):
    err = _fails(["prepare", str(tmp_path / "nope"), "--no-progress"], capsys)
    assert "does not exist: pass a fastMRI .h5 file or folder" in err


def test_train_refuses_a_flat_folder(tmp_path, capsys):
    write_file(tmp_path / "flat" / "a.h5")
    (tmp_path / "tiny.toml").write_text(CONFIG)
    argv = ["train", str(tmp_path / "tiny.toml"), "--fastmri", str(tmp_path / "flat")]
    err = _fails([*argv, "--run-dir", str(tmp_path / "run")], capsys)
    assert "is a flat folder (1 .h5 files) without a split rule" in err
    assert "--split-by-file 0.8,0.1,0.1" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_split_by_file_is_recorded_and_eval_scores_volumes(tmp_path, capsys):
    for i in range(4):
        write_file(tmp_path / "flat" / f"v{i}.h5", seed=i)
    (tmp_path / "tiny.toml").write_text(CONFIG)
    run = tmp_path / "run"
    argv = ["train", str(tmp_path / "tiny.toml"), "--fastmri", str(tmp_path / "flat")]
    argv += ["--split-by-file", "0.5,0.25,0.25", "--split-seed", "7", "--run-dir", str(run)]
    assert main([*argv, "--no-progress"]) == 0
    config = _config.load_config(run / "config.toml")
    assert config.task.options["split_by_file"] == (0.5, 0.25, 0.25)
    assert config.task.options["split_seed"] == 7
    report = json.loads((run / "metrics_test.json").read_text())
    test = unrolled.make_dataset(
        "multicoil_mri", "test", root=str(tmp_path / "flat"), **_split(config)
    )
    rows = report["fastmri"]["model"]["volumes"]
    assert [r["file"] for r in rows] == [v.path.name for v in test.volumes]
    assert rows[0]["scored"] == [16, 16]  # the run's image_size, inside the 19 x 19 reference
    assert report["fastmri"]["reference"] == "reconstruction_rss"
    assert set(report["fastmri"]["zero-filled"]["mean"]) == {"nmse", "psnr", "ssim"}
    said = capsys.readouterr().out
    assert "fastMRI metrics against reconstruction_rss" in said
    assert "zero-filled (mean)" in said
    train = unrolled.make_dataset(
        "multicoil_mri", "train", root=str(tmp_path / "flat"), **_split(config)
    )
    assert not {v.path for v in train.volumes} & {v.path for v in test.volumes}


def _split(config: _config.RunConfig) -> dict[str, object]:
    return {k: config.task.options[k] for k in ("split_by_file", "split_seed", "image_size")}


def test_bad_split_option(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(CONFIG)
    argv = ["train", str(tmp_path / "tiny.toml"), "--split-by-file", "0.8,0.2"]
    assert "--split-by-file takes three fractions" in _fails(argv, capsys)
