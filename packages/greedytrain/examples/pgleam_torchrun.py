"""P-GLEAM on two CPU processes: ``torchrun --nproc-per-node=2 pgleam_torchrun.py``.

Eight stages of a toy unrolled network (a data-consistency step for single-coil Cartesian MRI,
then a small residual CNN) are trained as eight GLEAM modules, four per process (round robin).
Every rank draws the same mini-batches from a seeded generator (``data="per_rank"``). A checkpoint
is written at the end; a single-process ``GreedyTrainer`` loads it for early-exit inference.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from greedytrain import GreedyTrainer
from greedytrain.distributed import DistributedGreedyTrainer


class Stage(nn.Module):
    """x <- x - t A^H(A x - y), then x + CNN(x); x holds real and imaginary channels."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, context: dict[str, torch.Tensor]) -> torch.Tensor:
        image = torch.complex(x[:, 0], x[:, 1])
        residual = context["mask"] * torch.fft.fft2(image, norm="ortho") - context["y"]
        grad = torch.fft.ifft2(context["mask"] * residual, norm="ortho")
        x = x - 0.5 * torch.stack([grad.real, grad.imag], dim=1)
        return x + self.cnn(x)


def batch(generator: torch.Generator) -> tuple[torch.Tensor, dict, torch.Tensor]:
    truth = torch.randn(4, 32, 32, dtype=torch.complex64, generator=generator)
    mask = (torch.rand(32, 32, generator=generator) < 0.3).float()
    y = mask * torch.fft.fft2(truth, norm="ortho")
    channels = lambda z: torch.stack([z.real, z.imag], dim=1)  # noqa: E731
    return channels(torch.fft.ifft2(y, norm="ortho")), {"y": y, "mask": mask}, channels(truth)


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same initial stages on every rank
    trainer = DistributedGreedyTrainer([Stage() for _ in range(8)], nn.functional.l1_loss)
    data = torch.Generator().manual_seed(1)  # the same mini-batches on every rank
    for step in range(5):
        losses = trainer.train_step(*batch(data))
        if dist.get_rank() == 0:
            print(f"step {step}: " + " ".join(f"{loss:.3f}" for loss in losses))
    trainer.save("pgleam-example.pt")
    if dist.get_rank() == 0:
        torch.manual_seed(0)
        single = GreedyTrainer([Stage() for _ in range(8)], nn.functional.l1_loss)
        single.load("pgleam-example.pt")
        x0, context, target = batch(data)
        print(
            "loss after each module:", [round(v, 3) for v in single.evaluate(x0, context, target)]
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
