"""Configurations shared by the memroll tests (a module of its own name: ``conftest`` is taken
by the other test folders)."""

# the task and the model of a tiny run: a 2-unroll MoDL on 16 x 16 images with 4 coils
TINY_RUN = """
name = "tiny"

[task]
name = "multicoil_mri"
image_size = 16
num_coils = 4

[model]
name = "MoDL"
iterations = 2
features = 4
cg_max_iter = 5
"""


def tiny_config(
    *, steps: int, batch_size: int, checkpoint_every: int, eval_samples: int | None = None
) -> str:
    """``TINY_RUN`` trained ``steps`` steps, validated at the last one, evaluated with one figure
    (on ``eval_samples`` samples; ``None``: the default)."""
    samples = "" if eval_samples is None else f"samples = {eval_samples}\n"
    return (
        TINY_RUN
        + f"""
[train]
steps = {steps}
batch_size = {batch_size}
val_every = {steps}
checkpoint_every = {checkpoint_every}
progress = false

[eval]
{samples}figure_samples = 1
"""
    )
