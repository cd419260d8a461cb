"""
MoDL trained reversibly on real brain anatomy
=============================================

A small MoDL (Aggarwal et al.; GLEAM's and MEL's model) on the real-anatomy multi-coil task that
installs with :mod:`physops`: 8 simulated coils on real brain slices, 4x Poisson-disc
undersampling. The ``"reversible"`` strategy (MEL) stores no activation per unroll: the
backward pass rebuilds each unroll's input from its output (the coupling prior is inverted
exactly, MoDL's CG step algebraically) and recomputes that unroll alone.

First we check on one batch that the reversible gradient equals plain backprop's, then train
for a few steps and look at a test slice.
"""

import time

import matplotlib.pyplot as plt
import torch

import unrolled

torch.manual_seed(0)
train_data = unrolled.make_dataset("multicoil_mri", "train", image_size=32, num_coils=4)
test_data = unrolled.make_dataset("multicoil_mri", "test", image_size=32, num_coils=4)
print(len(train_data), "training slices,", len(test_data), "test slices")

# %%
# The same gradient as backprop
# -----------------------------
# ``set_strategy`` changes only how the model is differentiated. The exact state is stored
# every 2 unrolls (MEL's hybrid checkpoints, Sec. 4), because CG's algebraic inverse divides
# by the learned weight ``mu`` and amplifies rounding (:doc:`../guide/strategies`).

model = unrolled.MoDL(iterations=6, features=8, mu=1.0, **train_data.model_kwargs)
batch = train_data.batch([0, 1])


def gradient(strategy, **options):
    model.zero_grad()
    model.set_strategy(strategy, **options)
    loss = (model(batch.y, batch.physics) - batch.target).abs().mean()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


g_backprop = gradient("backprop")
g_reversible = gradient("reversible", checkpoint_every=2)
error = float((g_reversible - g_backprop).norm() / g_backprop.norm())
print(f"relative gradient difference, reversible vs backprop: {error:.1e}")

# %%
# Training
# --------
# :func:`unrolled.train` runs Adam and records the median time of a step and the peak memory
# of its loop (``result.peak_memory_bytes``; meaningful in a fresh process, as ``memroll
# bench`` measures it, not inside this documentation build).

start = time.perf_counter()
result = unrolled.train(
    model,
    train_data,
    strategy="reversible",
    strategy_options={"checkpoint_every": 2},
    steps=24,
    batch_size=2,
    lr=3e-3,
    progress=False,
)
print(f"trained {result.steps} steps in {time.perf_counter() - start:.1f} s")
print(f"median time per step: {result.median_step_time_s:.2f} s")
print(f"loss: {result.history[0]['loss']:.4f} -> {result.history[-1]['loss']:.4f}")
summary = unrolled.evaluate(model, test_data).summary()
print(f"test PSNR {summary['psnr']['mean']:.2f} dB, SSIM {summary['ssim']['mean']:.3f}")

# %%
# A test slice
# ------------
test = test_data.batch([0])
model.eval()
with torch.no_grad():
    x_hat = model(test.y, test.physics)
zero_filled = test.physics.adjoint(test.y)
images = {"zero-filled": zero_filled, "MoDL (reversible)": x_hat, "target": test.target}
fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), layout="constrained")
for ax, (title, image) in zip(axes, images.items()):
    ax.imshow(image[0].abs(), cmap="gray", vmin=0, vmax=float(test.target.abs().max()))
    if title != "target":
        title = f"{title}\n{float(unrolled.psnr(image, test.target)):.1f} dB"
    ax.set_title(title)
    ax.axis("off")
plt.show()
