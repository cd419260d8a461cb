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
