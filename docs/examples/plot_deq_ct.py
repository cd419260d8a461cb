"""
A deep equilibrium model (DEQ4IP) for sparse-view CT
====================================================

DEQ4IP (Gilton et al.) does not unroll a fixed number of iterations: it looks for the fixed
point of one whole iteration, :math:`x^* = \\mathrm{prox}(x^* - \\alpha A^T(A x^* - y))`, with a
spectrally normalised DnCNN as the prox, and differentiates that fixed point implicitly
(``strategy="implicit"``, :func:`fixedpoint.implicit`): training memory is that of one
iteration, whatever the number of solver iterations.

The ``ct`` task is LUSER's sparse-view parallel-beam CT (:class:`physops.Radon`, every fifth of
1000 uniformly spaced angles, 1% noise) on real-anatomy slices. To run in seconds on a CPU this
example keeps the same one-in-five ratio with 50 of 250 angles on 32 x 32 images.
"""

import time

import matplotlib.pyplot as plt
import torch

import unrolled

torch.manual_seed(0)
options = {"image_size": 32, "num_angles": 250, "keep_angles": 50}
train_data = unrolled.make_dataset("ct", "train", **options)
test_data = unrolled.make_dataset("ct", "test", **options)

model = unrolled.DEQ(
    features=8, depth=3, solver={"max_iter": 20, "on_failure": "ignore"}, **train_data.model_kwargs
)

# %%
# Training with implicit gradients
# --------------------------------
start = time.perf_counter()
result = unrolled.train(
    model,
    train_data,
    strategy="implicit",
    steps=10,
    batch_size=2,
    lr=1e-3,
    loss="mse",
    progress=False,
)
seconds = time.perf_counter() - start
losses = [f"{h['loss']:.4f}" for h in result.history]
print(f"{result.steps} steps in {seconds:.1f} s; loss per step: {', '.join(losses)}")

# %%
# Did the solver reach the fixed point?
# -------------------------------------
# A fixed point exists, and Anderson finds it, only where the iteration is a contraction. A
# spectrally normalised DnCNN ``x - f(x)`` is 2-Lipschitz, not 1, and sparse-view CT leaves a
# large null space that the gradient step does not contract, so the solve can stop at its
# ``max_iter`` with a residual well above ``tol``. The model reports it per sample:
# ``on_failure="ignore"`` above lets training go on; the default ``"warn"`` says so, and
# ``"raise"`` stops. Read the diagnostics before trusting the implicit gradients, which assume
# the fixed point was reached.

test = test_data.batch([0, 1])
model.eval()
with torch.no_grad():
    x_hat = model(test.y, test.physics)
solve = model.equilibrium_diagnostics()[0].forward
print(
    f"iterations {solve.iterations.tolist()}, converged {solve.converged.tolist()}, "
    f"relative residuals {[f'{r:.1e}' for r in solve.residuals.tolist()]}"
)

# %%
# Reconstructions
# ---------------
# Against the back-projection :math:`A^T y` the model starts from and filtered back-projection
# of the same views (the task's ``init="fbp"`` gives it as ``x0``).

fbp = unrolled.make_dataset("ct", "test", init="fbp", **options).batch([0, 1]).x0
images = {"A^T y": test.physics.adjoint(test.y), "FBP": fbp, "DEQ": x_hat, "target": test.target}
fig, axes = plt.subplots(1, 4, figsize=(11, 3.2), layout="constrained")
for ax, (title, image) in zip(axes, images.items()):
    ax.imshow(image[0].squeeze(), cmap="gray")
    if title != "target":
        title += f"\n{float(unrolled.psnr(image[:1], test.target[:1])):.1f} dB"
    ax.set_title(title)
    ax.axis("off")
plt.show()
