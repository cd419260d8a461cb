"""
LUSER on Gaussian deblurring, with implicit gradients
=====================================================

LUSER (Guan et al., "Loop Unrolled Shallow Equilibrium Regularizer") unrolls K proximal-gradient
stages whose prox is a *shallow equilibrium*: a small block iterated to its fixed point by
Anderson acceleration. The ``"implicit"`` strategy differentiates that fixed point by the implicit
function theorem (:func:`fixedpoint.implicit`), so memory does not depend on how many solver
iterations the forward pass took.

The ``deblur`` task blurs real-anatomy slices with LUSER's 9 x 9 Gaussian kernel of variance 5
and adds noise of standard deviation 0.01; the reconstruction starts from the blurred image
(``init="measurements"``, as in the paper).
"""

import time

import matplotlib.pyplot as plt
import torch

import unrolled

torch.manual_seed(0)
train_data = unrolled.make_dataset("deblur", "train", image_size=32)
test_data = unrolled.make_dataset("deblur", "test", image_size=32)

model = unrolled.LUSER(
    iterations=3, features=8, groups=4, init="measurements", **train_data.model_kwargs
)
print(f"LUSER-DW, {sum(p.numel() for p in model.parameters()):,} parameters")
test = test_data.batch([0, 1])


def test_psnr():
    model.eval()
    with torch.no_grad():
        x_hat = model(test.y, test.physics)
    model.train()
    return x_hat, float(unrolled.psnr(x_hat, test.target).mean())


# untrained, each stage's prox adds an image of its own (random weights): far worse than the input
print(
    f"test PSNR: blurred input {float(unrolled.psnr(test.y, test.target).mean()):.1f} dB, "
    f"untrained LUSER {test_psnr()[1]:.1f} dB"
)

# %%
# Training with implicit gradients
# --------------------------------
start = time.perf_counter()
result = unrolled.train(
    model,
    train_data,
    strategy="implicit",
    steps=40,
    batch_size=2,
    lr=2e-3,
    loss="mse",
    progress=False,
)
print(
    f"{result.steps} steps in {time.perf_counter() - start:.1f} s, loss "
    f"{result.history[0]['loss']:.5f} -> {result.history[-1]['loss']:.5f}"
)

# %%
# The equilibrium solves
# ----------------------
# Every stage reports its last forward solve (and, after ``backward``, the backward solve):
# iterations and convergence per sample.

x_hat, psnr = test_psnr()
print(f"test PSNR after training: {psnr:.1f} dB")
for k, diagnostics in enumerate(model.equilibrium_diagnostics(), start=1):
    forward = diagnostics.forward
    print(
        f"stage {k}: {forward.iterations.tolist()} Anderson iterations, "
        f"converged {forward.converged.tolist()}"
    )

fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), layout="constrained")
images = {"blurred and noisy": test.y, "LUSER": x_hat, "target": test.target}
for ax, (title, image) in zip(axes, images.items()):
    ax.imshow(image[0].abs().squeeze(), cmap="gray", vmin=0, vmax=1)
    if title != "target":
        title += f"\n{float(unrolled.psnr(image[:1], test.target[:1])):.1f} dB"
    ax.set_title(title)
    ax.axis("off")
plt.show()
