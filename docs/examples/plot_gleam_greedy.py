"""
GLEAM: greedy module-wise training, PSNR after every module
===========================================================

GLEAM (Ozturkler et al., Alg. 1) splits an unrolled network of N unrolls into M modules and
trains each on its own loss against the fully sampled target, with its own optimizer, feeding
the next module the *detached* output. Training memory is that of one module, not of the
whole network, and every module learns to predict the target, so the PSNR rises module by
module and the network can stop early (GLEAM Fig. 9).

:func:`unrolled.train` with ``strategy="greedy"`` runs it through
:class:`greedytrain.GreedyTrainer`; :func:`unrolled.psnr_per_stage` measures the PSNR after
every module. We compare it with the same MoDL trained end to end by backprop, from the same
initial weights.
"""

import copy
import time

import matplotlib.pyplot as plt
import torch

import unrolled

torch.manual_seed(0)
options = {"image_size": 32, "num_coils": 4}
train_data = unrolled.make_dataset("multicoil_mri", "train", **options)
val_data = unrolled.make_dataset("multicoil_mri", "val", **options)

modules = 4
greedy = unrolled.MoDL(iterations=4, features=8, mu=1.0, **train_data.model_kwargs)
end_to_end = copy.deepcopy(greedy)
settings = {"steps": 20, "batch_size": 2, "lr": 1e-2, "progress": False}

# %%
# Train both
# ----------
start = time.perf_counter()
result = unrolled.train(
    greedy, train_data, strategy="greedy", strategy_options={"modules": modules}, **settings
)
print(f"greedy ({result.strategy}): {time.perf_counter() - start:.1f} s")
start = time.perf_counter()
unrolled.train(end_to_end, train_data, strategy="backprop", **settings)
print(f"backprop: {time.perf_counter() - start:.1f} s")
# greedy logs one loss per module; the last module's is the network's loss
print({key: round(value, 4) for key, value in result.history[-1].items() if "loss" in key})

# %%
# PSNR after every module
# -----------------------
# ``per="module"`` reads the output at the end of each of the M modules.

greedy_psnr = unrolled.psnr_per_stage(greedy, val_data, per="module", modules=modules)
backprop_psnr = unrolled.psnr_per_stage(end_to_end, val_data, per="module", modules=modules)
everything = val_data.batch(list(range(len(val_data))))
zero_filled = float(
    unrolled.psnr(everything.physics.adjoint(everything.y), everything.target).mean()
)
print(f"zero-filled: {zero_filled:.2f} dB")
for m, (g, b) in enumerate(zip(greedy_psnr, backprop_psnr), start=1):
    print(f"module {m}: greedy {g:.2f} dB, backprop {b:.2f} dB")

fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
index = range(1, modules + 1)
ax.plot(index, greedy_psnr, "o-", label="GLEAM (greedy)")
ax.plot(index, backprop_psnr, "s--", label="end-to-end backprop")
ax.axhline(zero_filled, color="gray", linestyle=":", label="zero-filled")
ax.set_xlabel("module")
ax.set_ylabel("validation PSNR (dB)")
ax.set_xticks(list(index))
ax.legend()
plt.show()
