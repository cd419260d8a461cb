"""i-RIM's masked NMSE (Eq. 18): the hand computation for a known mask, the kept fraction, the
seeding and its restoration on resume, and gradients through the kept pixels only."""

from __future__ import annotations

import pytest
import torch

import unrolled


def _pair(shape=(3, 10, 12), dtype=torch.complex128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=dtype, generator=g)
    x_hat = x + 0.3 * torch.randn(shape, dtype=dtype, generator=g)
    return x_hat, x


def test_equals_the_hand_computation_for_the_mask_it_draws():
    x_hat, x = _pair()
    mask = unrolled.MaskedNMSE(fraction=0.1, seed=7).mask(x)  # a twin draws the same mask
    loss = unrolled.get_loss("masked_nmse", seed=7, fraction=0.1)(x_hat, x)
    per_sample = []
    for b in range(x.shape[0]):
        num = den = 0.0
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                if mask[b, i, j]:
                    num += abs(complex(x_hat[b, i, j] - x[b, i, j])) ** 2
                    den += abs(complex(x[b, i, j])) ** 2
        per_sample.append(num / den)
    assert float(loss) == pytest.approx(sum(per_sample) / len(per_sample), rel=1e-12)


@pytest.mark.parametrize(
    ("fraction", "shape"), [(0.01, (2, 64, 64)), (0.25, (3, 2, 9, 7)), (1.0, (2, 5, 5))]
)
def test_the_kept_fraction_per_sample(fraction, shape):
    loss = unrolled.MaskedNMSE(fraction=fraction, seed=0)
    x = torch.randn(shape)
    pixels = x[0].numel()
    for _ in range(3):
        kept = loss.mask(x).reshape(shape[0], -1).sum(dim=1)
        assert kept.tolist() == [round(fraction * pixels)] * shape[0]


def test_at_least_one_pixel_however_small_the_fraction():
    mask = unrolled.MaskedNMSE(fraction=0.01, seed=0).mask(torch.randn(2, 3, 3))
    assert mask.reshape(2, -1).sum(dim=1).tolist() == [1, 1]


def test_default_fraction_is_the_papers():
    assert unrolled.get_loss("masked_nmse").fraction == 0.01


def test_masks_are_new_every_step_and_reproducible_with_the_seed():
    x = torch.randn(2, 32, 32)
    a, b, c = (unrolled.MaskedNMSE(0.05, seed=s) for s in (3, 3, 4))
    masks_a = [a.mask(x) for _ in range(3)]
    masks_b = [b.mask(x) for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(masks_a, masks_b))
    assert not torch.equal(masks_a[0], masks_a[1])  # drawn anew at every call
    assert not torch.equal(c.mask(x), masks_a[0])
    torch.manual_seed(0)  # the global generator plays no part
    state = a.state_dict()
    resumed = unrolled.MaskedNMSE(0.05, seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.mask(x), a.mask(x))


def test_gradients_flow_only_through_kept_pixels():
    x_hat, x = _pair(dtype=torch.float64)
    x_hat.requires_grad_(True)
    mask = unrolled.MaskedNMSE(0.2, seed=1).mask(x)
    unrolled.get_loss("masked_nmse", seed=1, fraction=0.2)(x_hat, x).backward()
    assert x_hat.grad is not None
    assert torch.equal(x_hat.grad != 0, mask)


def test_masked_nmse_bad_inputs():
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\].*got 0"):
        unrolled.get_loss("masked_nmse", fraction=0)
    with pytest.raises(ValueError, match=r"loss 'l1' takes no options, got fraction"):
        unrolled.get_loss("l1", fraction=0.1)
    with pytest.raises(
        ValueError, match=r"unknown loss 'l3'; valid names: l1, mse, nmse, ssim, masked_nmse"
    ):
        unrolled.get_loss("l3")
    with pytest.raises(ValueError, match=r"loss_options .*'frac'.* for loss 'masked_nmse'"):
        unrolled.TrainOptions.from_kwargs({"loss": "masked_nmse", "loss_options": {"frac": 0.1}})
    with pytest.raises(ValueError, match=r"compares tensors of one shape"):
        unrolled.get_loss("masked_nmse")(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))


def test_training_resume_draws_the_same_masks(tmp_path):
    data = unrolled.make_dataset("singlecoil_mri", "train", image_size=16)
    options = {
        "steps": 4, "batch_size": 2, "loss": "masked_nmse", "loss_options": {"fraction": 0.1},
        "checkpoint_every": 2, "progress": False, "seed": 5,
    }  # fmt: skip

    def model():
        torch.manual_seed(0)
        return unrolled.MoDL(iterations=1, features=4, cg_max_iter=5)

    straight = unrolled.train(model(), data, run_dir=str(tmp_path / "a"), **options)

    def stop(row):
        if row["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        unrolled.train(model(), data, run_dir=str(tmp_path / "b"), callback=stop, **options)
    resumed = unrolled.train(model(), data, run_dir=str(tmp_path / "b"), resume=True, **options)
    assert resumed.resumed_from == 2
    assert resumed.losses == straight.losses
    other_seed = unrolled.train(model(), data, **{**options, "checkpoint_every": None, "seed": 6})
    assert other_seed.losses != straight.losses
