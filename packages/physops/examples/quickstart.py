"""physops quickstart: multi-coil MRI with a Sense operator, checked and reconstructed by CG.

Run: ``python packages/physops/examples/quickstart.py`` (``nox -s demo`` runs it until the models
exist). It takes a real brain slice (physops' embedded anatomy), simulates 8 birdcage coils and a
4x Poisson-disc mask, checks the operator's adjoint and gradients, estimates the Lipschitz constant
of the data term, reconstructs by CG-SENSE (MoDL's data-consistency solve with z = 0), trains the
regularisation weight mu by one gradient step through the implicit CG backward, and prints the
figures.
"""

from __future__ import annotations

import time

import torch

import physops


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = (x.abs() - ref.abs()).square().mean()
    return float(10 * torch.log10(ref.abs().max() ** 2 / mse))


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)

    # data: a real slice, simulated coils, a 4x Poisson-disc mask with a 16x16 calibration region
    image = physops.real_anatomy_images("test", image_size=128)[:2]  # (2, 128, 128) magnitude
    x_true = image.to(torch.complex64) * torch.exp(1j * torch.linspace(0, 1, 128))  # add phase
    maps = physops.birdcage_maps((128, 128), 8)[None]  # (1, 8, 128, 128): shared by the batch
    mask = physops.poisson_disc_mask((128, 128), 4, calibration=16, seed=0)  # (128, 128)
    op = physops.Sense(maps, mask)
    print(op)

    # the operator is right: adjointness in single and double precision, float64 gradcheck
    err32 = physops.check_adjoint(op, x_true)
    err64 = physops.check_adjoint(op, x_true.to(torch.complex128))
    physops.check_gradients(physops.Sense(maps[..., :6, :6], mask[:6, :6]), x_true[:1, :6, :6])
    print(f"adjointness error: complex64 {err32:.1e}, complex128 {err64:.1e}; gradcheck passed")

    # measurements with noise, and the Lipschitz constant L = ||A||^2 of the data term
    y = op(x_true)
    y = y + 0.002 * torch.randn_like(y) * mask
    lipschitz = float(physops.power_iteration(op, x_true))
    print(
        f"largest eigenvalue of A^H A: {lipschitz:.4f} "
        f"(gradient steps need a step size < {1 / lipschitz:.3f})"
    )

    # CG-SENSE: argmin ||Ax - y||^2 + mu ||x||^2, batched with per-sample stopping
    zero_filled = op.adjoint(y)
    start = time.perf_counter()
    result = physops.least_squares(op, y, 1e-3, max_iter=50, tol=1e-4)
    elapsed = time.perf_counter() - start
    print(
        f"CG: iterations {result.iterations.tolist()}, relative residual "
        f"{[f'{r:.1e}' for r in result.residuals.tolist()]}, "
        f"converged {result.converged.tolist()}, "
        f"{elapsed:.2f} s"
    )
    for i in range(x_true.shape[0]):
        print(
            f"slice {i}: PSNR zero-filled {psnr(zero_filled[i], x_true[i]):.1f} dB, "
            f"CG-SENSE {psnr(result.x[i], x_true[i]):.1f} dB"
        )

    # mu is learnable: one gradient step through cg's implicit backward (memory independent of the
    # iteration count: one more CG solve in the backward pass)
    raw_mu = torch.nn.Parameter(torch.tensor(-4.0))
    optimizer = torch.optim.Adam([raw_mu], lr=0.1)
    mu = torch.nn.functional.softplus(raw_mu)
    loss = (physops.least_squares(op, y, mu, max_iter=20).x - x_true).abs().square().mean()
    loss.backward()
    optimizer.step()
    print(
        f"learnable mu: {float(mu.detach()):.4f} -> "
        f"{float(torch.nn.functional.softplus(raw_mu.detach())):.4f} "
        f"(d loss / d raw_mu = {float(raw_mu.grad):.3e})"
    )

    # layouts for networks: (B, 2, H, W) real channels and back
    channels = physops.complex_to_channels(result.x)
    print(f"network layout: {tuple(channels.shape)} {channels.dtype}")
    torch.testing.assert_close(physops.channels_to_complex(channels), result.x)


if __name__ == "__main__":
    main()
