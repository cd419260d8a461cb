"""
Your own operator and your own network, checked
===============================================

memroll's models take any :class:`physops.LinearOperator`: a forward model is a
:class:`torch.nn.Module` with ``forward`` (:math:`A x`) and ``adjoint`` (:math:`A^H y`).
A wrong adjoint does not crash anything: CG, gradient steps and the reversible inverses all
quietly compute something else. So check it before training, with the same checks memroll's own
operators pass:

* :func:`physops.check_adjoint`: :math:`\\langle A x, y\\rangle = \\langle x, A^H y\\rangle` on
  random inputs, and ``normal(x) == adjoint(forward(x))``;
* :func:`physops.check_gradients`: float64 ``gradcheck`` of ``forward``, ``adjoint`` and
  ``normal``, including the operator's own learnable parameters;
* :func:`revlayers.check_inverse`: ``inverse(forward(x)) == x`` for an invertible network.

The operator here is 2x super-resolution: a learnable blur (a per-pixel weight here, to keep it
short) followed by averaging each 2 x 2 block.
"""

import matplotlib.pyplot as plt
import torch
from torch import nn

import physops
import revlayers
import unrolled


class Downsample(physops.LinearOperator):
    """y = D (w * x): a learnable pixel weight w, then the mean of every 2 x 2 block."""

    def __init__(self, size, wrong_adjoint=False):
        super().__init__(in_shape=(size, size), out_shape=(size // 2, size // 2))
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(size, size))
        self.wrong_adjoint = wrong_adjoint

    def forward(self, x):
        return nn.functional.avg_pool2d((self.weight * x)[:, None], 2)[:, 0]

    def adjoint(self, y):
        # the adjoint of a 2 x 2 mean spreads each value over its block *divided by 4*
        up = y.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        return self.weight * (up if self.wrong_adjoint else up / 4)


x_like = torch.zeros(2, 32, 32)
try:
    physops.check_adjoint(Downsample(32, wrong_adjoint=True), x_like)
except AssertionError as error:  # the check names the operator and the figure
    print(error)

A = Downsample(32)
print(f"adjointness error: {physops.check_adjoint(A, x_like):.1e}")
# gradcheck costs two applications per input element: check a small instance
print(
    "gradients (input and weight) pass:",
    physops.check_gradients(Downsample(6), torch.zeros(1, 6, 6)),
)

# %%
# Your own invertible network
# ---------------------------
# An additive coupling updates one half of the channels from the other with *any* network, so
# it is invertible whatever that network is; :class:`revlayers.ReversibleSequence` then trains a
# stack of them without storing activations. ``check_inverse`` measures the reconstruction.


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))


network = revlayers.ReversibleSequence([revlayers.AdditiveCoupling(small_cnn()) for _ in range(4)])
print(
    f"inverse(forward(x)) error: {revlayers.check_inverse(network, torch.randn(2, 2, 32, 32)):.1e}"
)

# %%
# The operator in a model
# -----------------------
# A MoDL on real images (``complex=False``; one channel, so an i-ResNet prior rather than
# couplings, which split the channels in two) with the new operator, trained for a few steps on
# the embedded brain slices: every strategy works with any checked operator.

images = physops.real_anatomy_images("train", image_size=32)
test = physops.real_anatomy_images("test", image_size=32)[:1]
A.weight.requires_grad_(False)  # the physics is known here; leave it learnable to calibrate it
model = unrolled.MoDL(iterations=3, prior="iresnet", features=8, mu=1.0, complex=False)
model.set_strategy("reversible")  # the i-ResNet prior (one channel) is inverted by fixed point
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
steps = 12
for step in range(steps):
    batch = images[2 * step % len(images) :][:2]
    loss = (model(A(batch), A) - batch).abs().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"training loss after {steps} steps: {loss.item():.4f}")

with torch.no_grad():
    x_hat = model(A(test), A)
nearest = A.adjoint(A(test)) * 4  # the low-resolution image, upsampled
fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), layout="constrained")
for ax, title, image in zip(axes, ["low resolution", "MoDL", "target"], [nearest, x_hat, test]):
    ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
    if title != "target":
        title += f"\n{float(unrolled.psnr(image, test)):.1f} dB"
    ax.set_title(title)
    ax.axis("off")
plt.show()
