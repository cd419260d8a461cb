"""
Fourier ptychography: learning the LED design with the network (MEL)
====================================================================

MEL's first experiment (Kellman et al., Sec. 5.1): a Fourier ptychographic microscope lights
the sample from an array of LEDs; each camera image is a low-resolution intensity whose
spectrum is shifted by its LED's angle. Multiplexing several LEDs per image takes fewer images;
*which* LEDs to light together (the design :math:`w`, ``M x L``, non-negative) is learned with
the reconstruction network, by backpropagating through the unrolled gradient steps on the
nonlinear data term. With many unrolls that no longer fits in memory; the ``"reversible"``
strategy inverts each gradient step by fixed-point iteration (MEL Alg. 2), which needs
:math:`\\alpha\\,\\mathrm{Lip}(\\nabla D) < 1`: :meth:`unrolled.FPMNet.certify` estimates the
Lipschitz constant and caps the steps. MEL's hybrid checkpoints (every 3 unrolls here) and a
drift check keep the recomputed states exact.
"""

import time

import matplotlib.pyplot as plt
import torch

import unrolled

torch.manual_seed(0)
train_data = unrolled.make_dataset("ptychography", "train")  # 25 LEDs, 32 px objects, 8 px images
test_data = unrolled.make_dataset("ptychography", "test")
model = unrolled.FPMNet.from_physics(train_data.acquisition, num_measurements=4, iterations=6)
initial_design = model.design.detach().clone()

batch = train_data.batch([0, 1])
lipschitz = model.certify(
    batch.physics, batch.target, iterations=10
)  # an estimate, not a certificate
print(f"estimated Lip(grad D) = {lipschitz:.3g}")

# %%
# Training the design and the steps
# ---------------------------------
start = time.perf_counter()
result = unrolled.train(
    model,
    train_data,
    strategy="reversible",
    strategy_options={"checkpoint_every": 3, "check_drift": 1e-3, "on_drift": "recompute"},
    steps=30,
    batch_size=2,
    lr=1e-2,
    progress=False,
)
print(
    f"{result.steps} steps in {time.perf_counter() - start:.1f} s, loss "
    f"{result.history[0]['loss']:.4f} -> {result.history[-1]['loss']:.4f}"
)
test = test_data.batch([0])
model.eval()
with torch.no_grad():
    x_hat = model(test.y, test.physics)
psnr = float(unrolled.psnr(x_hat, test.target))
print(f"test PSNR of the amplitude-and-phase object: {psnr:.2f} dB")

# %%
# The design before and after
# ---------------------------
# Each row is one of the M = 4 camera images; each column one of the 25 LEDs (a 5 x 5 grid),
# the brightness at which that LED is lit for that image.

fig, axes = plt.subplots(2, 5, figsize=(11, 4.6), layout="constrained")
designs = {"initial": initial_design, "learned": model.design.detach()}
for r, (name, design) in enumerate(designs.items()):
    for m in range(design.shape[0]):
        axes[r, m].imshow(design[m].reshape(5, 5), cmap="magma", vmin=0)
        axes[r, m].set_title(f"{name}: image {m + 1}", fontsize=9)
        axes[r, m].axis("off")
    axes[r, 4].axis("off")
axes[0, 4].imshow(test.target[0].abs(), cmap="gray")
axes[0, 4].set_title("amplitude", fontsize=9)
axes[1, 4].imshow(x_hat[0].abs(), cmap="gray")
axes[1, 4].set_title("reconstruction", fontsize=9)
plt.show()
