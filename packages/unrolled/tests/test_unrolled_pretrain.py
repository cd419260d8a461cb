"""DEQ4IP's paper baseline: BatchNorm (parameter count of LUSER Table 3), its policy inside the
fixed-point map, and the denoiser pretraining stage."""

from __future__ import annotations

import pytest
import torch

import physops
import unrolled

TINY = {"features": 8, "depth": 4, "complex": False, "init": "measurements"}


@pytest.fixture(scope="module")
def deblur():
    return (
        unrolled.make_dataset("deblur", "train", image_size=24),
        unrolled.make_dataset("deblur", "val", image_size=24),
    )


def _denoising_error(model, data, noise=0.05):
    g = torch.Generator().manual_seed(9)
    clean = model.adapter.to_net(data.batch(list(range(4))).target)
    noisy = clean + noise * torch.randn(clean.shape, generator=g)
    stage = model.stages[0]
    model.eval()
    with torch.no_grad():
        return float((stage.prox(noisy) * stage.prox_scale - clean).square().mean())


def test_deq_with_batchnorm_has_the_papers_parameter_count():
    model = unrolled.DEQ(complex=False, batchnorm=True)
    assert unrolled.count_parameters(model) == 556_033  # LUSER Table 3, DEQ4IP on CT
    norms = [m for m in model.modules() if isinstance(m, unrolled.nn.EquilibriumBatchNorm)]
    assert len(norms) == 15
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None for c in convs)


def test_batchnorm_map_does_not_couple_the_samples_and_updates_statistics_once():
    torch.manual_seed(0)
    model = unrolled.DEQ(batchnorm=True, solver={"max_iter": 4, "on_failure": "ignore"}, **TINY)
    model = model.double().train()
    A = physops.Blur(physops.gaussian_kernel(9, 5.0).double())
    y = torch.rand(3, 16, 16, dtype=torch.float64)
    norms = [m.norm for m in model.modules() if isinstance(m, unrolled.nn.EquilibriumBatchNorm)]
    with torch.no_grad():
        norms[0].running_var.fill_(2.0)  # statistics other than the identity's
    stage, context = model.stages[0], unrolled.StageContext(y, A)
    z = model.adapter.to_net(y)
    with torch.no_grad():
        together = stage.iteration(z, context)
        alone = stage.iteration(z[:1], unrolled.StageContext(y[:1], A))
    torch.testing.assert_close(together[:1], alone)  # no batch statistics in the map
    assert all(int(n.num_batches_tracked) == 0 for n in norms)  # the map alone updates nothing
    with torch.no_grad():
        model(y, A, y)
    assert all(int(n.num_batches_tracked) == 1 for n in norms)  # once, at the fixed point
    model.eval()
    with torch.no_grad():
        model(y, A, y)
    assert all(int(n.num_batches_tracked) == 1 for n in norms)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_pretraining_reduces_the_denoising_error(deblur, batchnorm):
    train, val = deblur
    torch.manual_seed(0)
    model = unrolled.DEQ(batchnorm=batchnorm, **TINY)
    before = _denoising_error(model, val)
    losses = unrolled.pretrain_denoiser(model, train, steps=STEPS[batchnorm], noise=0.05, lr=1e-3)
    after = _denoising_error(model, val)
    assert len(losses) == STEPS[batchnorm]
    assert after < 0.8 * before  # measured: see STEPS
    assert model.training is False  # left in the mode it was in


STEPS = {False: 100, True: 150}


def test_pretraining_leaves_the_step_size_and_is_seeded(deblur):
    train, _ = deblur
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = unrolled.DEQ(**TINY)
        step = [p.clone() for p in model.stages[0].step.parameters()]
        losses = unrolled.pretrain_denoiser(model, train, steps=3, seed=4)
        assert all(torch.equal(a, b) for a, b in zip(step, model.stages[0].step.parameters()))
        models.append((model, losses))
    assert models[0][1] == models[1][1]


def test_pretrain_denoiser_bad_inputs(deblur):
    train, _ = deblur
    with pytest.raises(TypeError, match=r"pretrain_denoiser takes an unrolled.DEQ, got MoDL"):
        unrolled.pretrain_denoiser(unrolled.MoDL(iterations=1, features=4), train)
    with pytest.raises(TypeError, match=r"dataset must have batch\(indices\) and len\(\)"):
        unrolled.pretrain_denoiser(unrolled.DEQ(**TINY), [1, 2])
    with pytest.raises(ValueError, match=r"steps must be a positive"):
        unrolled.pretrain_denoiser(unrolled.DEQ(**TINY), train, steps=0)
    with pytest.raises(ValueError, match=r"noise must be"):
        unrolled.pretrain_denoiser(unrolled.DEQ(**TINY), train, noise=-1.0)
