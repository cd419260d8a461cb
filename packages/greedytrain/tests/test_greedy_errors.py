"""Every bad configuration or input gets a clear error naming what was received and expected."""

from __future__ import annotations

import pytest
import torch
from _greedy_helpers import make_batch, make_stages, mse
from torch import nn

from greedytrain import GreedyTrainer, split_stages


class Shrink(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, context):
        return self.w * x[..., :-1]


class Tied(nn.Module):
    def __init__(self, shared: nn.Linear) -> None:
        super().__init__()
        self.lin = shared

    def forward(self, x, context):
        return self.lin(x)


def test_more_modules_than_stages() -> None:
    with pytest.raises(ValueError, match=r"modules=5 is more than the 4 stages.*use modules <= 4"):
        GreedyTrainer(make_stages(4), mse, modules=5)


def test_modules_not_dividing_stages_with_even_split() -> None:
    with pytest.raises(
        ValueError,
        match=r'split="even" needs modules=3 to divide the 8 stages; '
        r'use split="balanced" \(sizes \[3, 3, 2\]\)',
    ):
        GreedyTrainer(make_stages(8), mse, modules=3)


def test_empty_stage_list() -> None:
    with pytest.raises(ValueError, match="the stage list is empty"):
        GreedyTrainer([], mse)


def test_stage_changing_the_state_shape() -> None:
    trainer = GreedyTrainer([Shrink(), Shrink()], mse, modules=1)
    with pytest.raises(
        ValueError, match=r"stage 0 returned a state tensor\(2, 3\) from the state tensor\(2, 4\)"
    ):
        trainer.train_step(torch.ones(2, 4), None, torch.ones(2, 4))


def test_wrapped_module_changing_the_state_shape() -> None:
    trainer = GreedyTrainer([Shrink(), Shrink()], mse, modules=2, module_wrapper=lambda s: s[0])
    with pytest.raises(ValueError, match=r"module 0 \(stage 0\) returned a state tensor\(2, 3\)"):
        trainer.train_step(torch.ones(2, 4), None, torch.ones(2, 4))


def test_shape_check_can_be_disabled() -> None:
    trainer = GreedyTrainer([Shrink()], lambda p, t: p.sum(), check_shapes=False)
    assert len(trainer.train_step(torch.ones(2, 4), None, None)) == 1


def test_modules_not_an_int() -> None:
    with pytest.raises(
        TypeError, match=r"modules must be an int \(the number M of modules\), got 2.0"
    ):
        GreedyTrainer(make_stages(4), mse, modules=2.0)  # type: ignore[arg-type]


def test_modules_zero() -> None:
    with pytest.raises(
        ValueError, match=r"modules must be >= 1 \(1 = end-to-end training\), got 0"
    ):
        GreedyTrainer(make_stages(4), mse, modules=0)


def test_unknown_split_name() -> None:
    with pytest.raises(
        ValueError, match=r"unknown split 'uneven'; valid names: 'even', 'balanced'"
    ):
        split_stages(4, 2, "uneven")


def test_bad_split_sizes() -> None:
    with pytest.raises(
        ValueError,
        match=r"split=\[1, 2\] must be 2 positive module sizes .* summing to the 4 stages",
    ):
        GreedyTrainer(make_stages(4), mse, modules=2, split=[1, 2])


def test_split_sizes_not_ints() -> None:
    with pytest.raises(TypeError, match=r"split sizes must be ints, got \[2.0, 2\]"):
        split_stages(4, 2, [2.0, 2])  # type: ignore[list-item]


def test_a_single_module_instead_of_a_list() -> None:
    with pytest.raises(
        TypeError, match=r"got a single PGDStage: pass \[stage_0, \.\.\., stage_\{N-1\}\]"
    ):
        GreedyTrainer(make_stages(1)[0], mse)  # type: ignore[arg-type]


def test_a_stage_that_is_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"stage 1 is a function, not an nn\.Module"):
        GreedyTrainer([make_stages(1)[0], lambda x, c: x], mse)  # type: ignore[list-item]


def test_per_module_list_of_the_wrong_length() -> None:
    with pytest.raises(
        ValueError, match="loss_fn was given as a sequence of 3 entries, but there are 2 modules"
    ):
        GreedyTrainer(make_stages(2), [mse, mse, mse])


def test_loss_fn_not_callable() -> None:
    with pytest.raises(TypeError, match="loss_fn for module 0 must be callable"):
        GreedyTrainer(make_stages(2), "mse")  # type: ignore[arg-type]


def test_optimizer_factory_not_callable() -> None:
    with pytest.raises(TypeError, match="optimizer_factory for module 0 must be callable"):
        GreedyTrainer(make_stages(2), mse, torch.optim.Adam([nn.Parameter(torch.ones(1))]))  # type: ignore[arg-type]


def test_optimizer_factory_returning_something_else() -> None:
    with pytest.raises(
        TypeError, match=r"optimizer_factory must return a torch\.optim\.Optimizer, got list"
    ):
        GreedyTrainer(make_stages(2), mse, lambda params: list(params))  # type: ignore[arg-type,return-value]


def test_scheduler_factory_not_callable() -> None:
    with pytest.raises(TypeError, match="scheduler_factory for module 0 must be callable"):
        GreedyTrainer(make_stages(2), mse, scheduler_factory=0.5)  # type: ignore[arg-type]


def test_scheduler_factory_returning_something_else() -> None:
    with pytest.raises(
        TypeError, match=r"scheduler_factory must return an LR scheduler \(.*\), got float"
    ):
        GreedyTrainer(make_stages(2), mse, scheduler_factory=lambda opt: 0.5)


def test_negative_loss_weight() -> None:
    with pytest.raises(ValueError, match=r"loss_weights\[1\] must be finite and >= 0, got -1.0"):
        GreedyTrainer(make_stages(2), mse, loss_weights=[1.0, -1.0])


def test_loss_weight_not_a_number() -> None:
    with pytest.raises(TypeError, match=r"loss_weights\[0\] must be a number, got 'big'"):
        GreedyTrainer(make_stages(2), mse, loss_weights="big")  # type: ignore[arg-type]


def test_non_positive_clip() -> None:
    with pytest.raises(ValueError, match="clip_grad_norm for module 0 must be a finite number > 0"):
        GreedyTrainer(make_stages(2), mse, clip_grad_norm=0.0)


def test_clip_not_a_number() -> None:
    with pytest.raises(
        TypeError, match="clip_grad_norm for module 1 must be a number or None, got 'x'"
    ):
        GreedyTrainer(make_stages(2), mse, clip_grad_norm=[1.0, "x"])  # type: ignore[list-item]


def test_amp_dtype_other_than_half() -> None:
    with pytest.raises(
        ValueError, match=r"amp_dtype must be torch\.float16 or torch\.bfloat16, got torch\.float64"
    ):
        GreedyTrainer(make_stages(2), mse, amp=True, amp_dtype=torch.float64)


def test_output_fn_not_callable() -> None:
    with pytest.raises(TypeError, match=r"output_fn must be callable \(state -> prediction\)"):
        GreedyTrainer(make_stages(2), mse, output_fn=0)  # type: ignore[arg-type]


def test_module_wrapper_not_callable() -> None:
    with pytest.raises(TypeError, match=r"module_wrapper must be callable \(stages -> nn.Module\)"):
        GreedyTrainer(make_stages(2), mse, module_wrapper="checkpoint")  # type: ignore[arg-type]


def test_module_wrapper_not_returning_a_module() -> None:
    with pytest.raises(TypeError, match="module_wrapper returned a list for module 0"):
        GreedyTrainer(make_stages(2), mse, module_wrapper=lambda stages: list(stages))  # type: ignore[arg-type,return-value]


def test_weights_shared_across_modules() -> None:
    shared = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="a parameter is shared by modules 0 and 1"):
        GreedyTrainer([Tied(shared), Tied(shared)], mse, modules=2)
    assert GreedyTrainer([Tied(shared), Tied(shared)], mse, modules=1).num_modules == 1


def test_devices_not_devices() -> None:
    with pytest.raises(ValueError, match="devices holds 'gpu0', which is not a torch device"):
        GreedyTrainer(make_stages(2), mse, devices=["gpu0"])


def test_empty_devices() -> None:
    with pytest.raises(ValueError, match="devices is empty"):
        GreedyTrainer(make_stages(2), mse, devices=[])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_device_without_cuda() -> None:
    with pytest.raises(ValueError, match="devices holds 'cuda:0' but CUDA is not available"):
        GreedyTrainer(make_stages(2), mse, devices=["cuda:0"])


def test_loss_that_is_not_a_scalar() -> None:
    trainer = GreedyTrainer(make_stages(2), lambda p, t: (p - t) ** 2)
    with pytest.raises(
        ValueError,
        match=r"loss_fn of module 0 \(stage 0\) returned \(2, 2, 8, 8\); it must return a scalar",
    ):
        trainer.train_step(*make_batch())


def test_loss_not_depending_on_the_parameters() -> None:
    trainer = GreedyTrainer(make_stages(2), mse, output_fn=lambda s: s.detach())
    with pytest.raises(
        ValueError, match=r"the loss of module 0 \(stage 0\) does not depend on its parameters"
    ):
        trainer.train_step(*make_batch())


def test_early_exit_out_of_range() -> None:
    trainer = GreedyTrainer(make_stages(2), mse)
    x0, context, _ = make_batch()
    with pytest.raises(ValueError, match="n_stages must be between 1 and the 2 stages, got 3"):
        trainer.predict(x0, context, n_stages=3)


def test_early_exit_not_an_int() -> None:
    trainer = GreedyTrainer(make_stages(2), mse)
    with pytest.raises(TypeError, match=r"n_stages must be an int or None, got 1\.5"):
        trainer.predict(None, None, n_stages=1.5)  # type: ignore[arg-type]


def test_evaluate_per_unknown() -> None:
    trainer = GreedyTrainer(make_stages(2), mse)
    x0, context, target = make_batch()
    with pytest.raises(ValueError, match="per must be 'module' or 'stage', got 'layer'"):
        trainer.evaluate(x0, context, target, per="layer")


def test_step_counter_set_to_a_bad_value() -> None:
    trainer = GreedyTrainer(make_stages(2), mse)
    trainer.step = 5  # e.g. to continue a count kept elsewhere
    assert trainer.step == 5
    with pytest.raises(ValueError, match=r"step must be an int >= 0, got -1"):
        trainer.step = -1
    with pytest.raises(TypeError, match=r"step must be an int >= 0, got True"):
        trainer.step = True
