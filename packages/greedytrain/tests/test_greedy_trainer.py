"""GreedyTrainer against a hand-written GLEAM (Alg. 1), end-to-end backprop and P-GLEAM."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from _greedy_helpers import (
    ComplexStage,
    RIMStage,
    flat_parameters,
    gleam_reference,
    make_batch,
    make_stages,
    mse,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from greedytrain import GreedyTrainer, StageSequence, split_stages


def batches(k: int, batch: int = 2) -> list:
    return [make_batch(batch=batch, seed=10 + i) for i in range(k)]


def same_parameters(stages: Sequence[nn.Module], reference: Sequence[nn.Module]) -> None:
    """The two stage lists hold the same parameters, to 1e-12."""
    torch.testing.assert_close(
        flat_parameters(stages), flat_parameters(reference), rtol=0, atol=1e-12
    )


def same_losses_as_gleam(
    modules: int, rel: float, **options: Any
) -> tuple[list[nn.Module], list[nn.Module]]:
    """Train 4 stages with ``options`` and a copy with plain GLEAM (same ``modules``) on the same
    2 batches, the losses equal to ``rel``; return both stage lists."""
    stages = make_stages(4)
    reference = copy.deepcopy(stages)
    data = batches(2)
    trainer = GreedyTrainer(stages, mse, modules=modules, **options)
    gleam = GreedyTrainer(reference, mse, modules=modules)
    for b in data:
        assert trainer.train_step(*b) == pytest.approx(gleam.train_step(*b), rel=rel)
    return stages, reference


def close(got: list[list[float]], want: list[list[float]]) -> None:
    torch.testing.assert_close(
        torch.tensor(got, dtype=torch.float64),
        torch.tensor(want, dtype=torch.float64),
        rtol=1e-12,
        atol=0,
    )


@pytest.mark.parametrize(
    ("n", "modules", "split"), [(4, 4, "even"), (4, 2, "even"), (5, 2, "balanced")]
)
def test_updates_equal_hand_written_alg1(n: int, modules: int, split: str) -> None:
    stages = make_stages(n)
    reference = copy.deepcopy(stages)
    data = batches(3)
    trainer = GreedyTrainer(stages, mse, None, modules=modules, split=split)
    got = [trainer.train_step(*b) for b in data]
    want = gleam_reference(reference, trainer.module_sizes, data)
    assert trainer.step == 3
    close(got, want)
    same_parameters(stages, reference)


def test_modules_1_is_end_to_end_backprop() -> None:
    stages = make_stages(3)
    reference = copy.deepcopy(stages)
    data = batches(2)
    trainer = GreedyTrainer(stages, mse, None, modules=1)
    opt = torch.optim.Adam([p for s in reference for p in s.parameters()], lr=1e-3)
    for b in data:
        (loss,) = trainer.train_step(*b)
        x, context, target = b
        for stage in reference:
            x = stage(x, context)
        ref_loss = mse(x, target)
        opt.zero_grad()
        ref_loss.backward()
        opt.step()
        assert loss == pytest.approx(float(ref_loss.detach()), rel=1e-12)
    same_parameters(stages, reference)


def test_per_module_losses_weights_scheduler_and_clipping_match_reference() -> None:
    stages = make_stages(3)
    reference = copy.deepcopy(stages)
    data = batches(3)
    l1 = lambda p, t: (p - t).abs().mean()  # noqa: E731
    schedule = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
    trainer = GreedyTrainer(
        stages,
        [mse, l1, mse],
        lambda params: torch.optim.Adam(params, lr=1e-2),
        modules=3,
        loss_weights=[1.0, 2.0, 0.5],
        scheduler_factory=schedule,
        clip_grad_norm=0.05,
    )
    got = [trainer.train_step(*b) for b in data]
    want = gleam_reference(
        reference,
        [1, 1, 1],
        data,
        losses=[mse, l1, mse],
        weights=[1.0, 2.0, 0.5],
        lr=1e-2,
        clip=0.05,
        scheduler=schedule,
    )
    close(got, want)
    same_parameters(stages, reference)
    assert [o.param_groups[0]["lr"] for o in trainer.optimizers] == [1e-2 * 0.5**3] * 3


def test_default_optimizer_is_adam_per_module() -> None:
    trainer = GreedyTrainer(make_stages(4), mse, modules=2)
    assert [type(o) for o in trainer.optimizers] == [torch.optim.Adam, torch.optim.Adam]
    owned = [{id(p) for g in o.param_groups for p in g["params"]} for o in trainer.optimizers]
    assert not owned[0] & owned[1]
    assert trainer.module_sizes == [2, 2]
    assert trainer.module_ranges == [range(0, 2), range(2, 4)]


def test_modules_default_is_one_per_stage_and_split_is_stated() -> None:
    trainer = GreedyTrainer(make_stages(3), mse)
    assert trainer.num_modules == 3
    assert trainer.module_sizes == [1, 1, 1]
    uneven = GreedyTrainer(make_stages(8), mse, modules=3, split="balanced")
    assert uneven.module_sizes == [3, 3, 2] == split_stages(8, 3, "balanced")
    assert "module_sizes=[3, 3, 2]" in repr(uneven)
    assert GreedyTrainer(make_stages(5), mse, modules=2, split=[1, 4]).module_sizes == [1, 4]


class _SavedBytes:
    """Live bytes of tensors saved for backward, and their peak (saved_tensors_hooks)."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def pack(self, tensor: torch.Tensor) -> object:
        holder = _Holder(tensor)
        size = tensor.numel() * tensor.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._free, size)
        return holder

    def _free(self, size: int) -> None:
        self.live -= size

    @staticmethod
    def unpack(holder: object) -> torch.Tensor:
        return holder.tensor  # type: ignore[attr-defined]


class _Holder:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def _saved_peak(trainer: GreedyTrainer) -> int:
    counter = _SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        trainer.train_step(*make_batch())
    assert counter.live == 0  # every graph was freed by the end of the step
    return counter.peak


@pytest.mark.parametrize("modules", [8, 4, 2])
def test_saved_activations_are_one_modules_worth(modules: int) -> None:
    """The previous module's graph is freed before the next forward: the peak of activations
    saved for backward equals that of training one module alone, about 1/M of end-to-end."""
    stages = make_stages(8)
    end_to_end = _saved_peak(GreedyTrainer(copy.deepcopy(stages), mse, modules=1))
    greedy = _saved_peak(GreedyTrainer(copy.deepcopy(stages), mse, modules=modules))
    one_module = _saved_peak(GreedyTrainer(copy.deepcopy(stages[: 8 // modules]), mse, modules=1))
    assert greedy == one_module
    # each module also keeps its own loss's saved tensors, hence not exactly 1/M
    assert greedy * modules <= 1.2 * end_to_end


@pytest.mark.parametrize("devices", [["cpu", "cpu"], ["cpu", "cpu", "cpu"]])
def test_multi_device_schedule_equals_gleam(devices: list[str]) -> None:
    """P-GLEAM's block schedule (Alg. 2) on simulated CPU devices: the same updates as GLEAM."""
    stages = make_stages(4)
    reference = copy.deepcopy(stages)
    data = batches(3)
    pgleam = GreedyTrainer(stages, mse, modules=4, devices=devices)
    gleam = GreedyTrainer(reference, mse, modules=4)
    for b in data:
        assert pgleam.train_step(*b) == gleam.train_step(*b)
    assert torch.equal(flat_parameters(stages), flat_parameters(reference))


def test_multi_device_holds_one_graph_per_device() -> None:
    one = _saved_peak(GreedyTrainer(make_stages(4), mse, modules=4))
    two = _saved_peak(GreedyTrainer(make_stages(4), mse, modules=4, devices=["cpu", "cpu"]))
    assert two == 2 * one


@pytest.mark.gpu
def test_multi_device_on_cuda_equals_gleam_on_cpu() -> None:
    count = torch.cuda.device_count()
    devices = ["cuda:0", "cuda:1"] if count > 1 else ["cuda:0", "cuda:0"]
    stages, reference = same_losses_as_gleam(4, 1e-9, devices=devices)
    assert [next(s.parameters()).device.type for s in stages] == ["cuda"] * 4
    torch.testing.assert_close(
        flat_parameters(stages), flat_parameters(reference), rtol=1e-9, atol=1e-9
    )


def test_tuple_state_with_output_fn() -> None:
    """i-RIM's machine state (eta, s): detached as a whole, the loss sees eta."""
    torch.manual_seed(3)
    stages = [RIMStage() for _ in range(4)]
    reference = copy.deepcopy(stages)
    y, truth = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    state0 = (y.clone(), torch.zeros_like(y))
    trainer = GreedyTrainer(stages, mse, modules=2, output_fn=lambda s: s[0])
    got = [trainer.train_step(state0, {"y": y}, truth) for _ in range(2)]
    want = gleam_reference(
        reference, [2, 2], [(state0, {"y": y}, truth)] * 2, output_fn=lambda s: s[0]
    )
    close(got, want)
    same_parameters(stages, reference)


def test_dict_state_and_complex_state() -> None:
    torch.manual_seed(4)
    stages = [ComplexStage() for _ in range(2)]
    _, context, _ = make_batch(size=6)
    truth = torch.randn(2, 6, 6, dtype=torch.complex128)
    trainer = GreedyTrainer(stages, mse, modules=2)
    before = flat_parameters(stages).clone()
    losses = trainer.train_step(torch.zeros_like(truth), context, truth)
    assert len(losses) == 2
    assert not torch.equal(before, flat_parameters(stages))

    class DictStage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, state: dict, context: object) -> dict:
            return {"x": state["x"] * self.w, "it": state["it"] + 1}

    dict_trainer = GreedyTrainer(
        [DictStage(), DictStage()], mse, modules=2, output_fn=lambda s: s["x"]
    )
    x = torch.ones(3, dtype=torch.float64)
    dict_trainer.train_step(
        {"x": x, "it": torch.zeros(())}, None, torch.zeros(3, dtype=torch.float64)
    )
    assert dict_trainer.evaluate(
        {"x": x, "it": torch.zeros(())}, None, x, metric=lambda p, t: p.sum()
    ) == [
        pytest.approx(3 * float(dict_trainer.stages[0].w.detach())),
        pytest.approx(
            3 * float(dict_trainer.stages[0].w.detach()) * float(dict_trainer.stages[1].w.detach())
        ),
    ]


def _checkpointed(stages):  # a module_wrapper as unrolled would write it
    chain = StageSequence(stages)

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.chain = chain

        def forward(self, state, context):
            return checkpoint(self.chain, state, context, use_reentrant=False)

    return Wrapped()


def test_module_wrapper_with_activation_checkpointing_gives_the_same_updates() -> None:
    stages, reference = same_losses_as_gleam(2, 1e-12, module_wrapper=_checkpointed)
    same_parameters(stages, reference)


def test_predict_early_exit_and_per_module_metric() -> None:
    stages = make_stages(4)
    trainer = GreedyTrainer(stages, mse, modules=2)
    x0, context, target = make_batch()
    with torch.no_grad():
        states = [x0]
        for stage in stages:
            states.append(stage(states[-1], context))
    for n in range(1, 5):
        torch.testing.assert_close(
            trainer.predict(x0, context, n_stages=n), states[n], rtol=0, atol=0
        )
    torch.testing.assert_close(trainer.predict(x0, context), states[4], rtol=0, atol=0)
    assert trainer.evaluate(x0, context, target) == pytest.approx(
        [float(mse(states[2], target)), float(mse(states[4], target))], rel=1e-12
    )
    assert trainer.evaluate(x0, context, target, per="stage") == pytest.approx(
        [float(mse(s, target)) for s in states[1:]], rel=1e-12
    )
    psnr = lambda p, t: -10 * torch.log10(mse(p, t))  # noqa: E731
    assert trainer.evaluate(x0, context, target, metric=psnr) == pytest.approx(
        [float(psnr(states[2], target)), float(psnr(states[4], target))], rel=1e-12
    )


def test_inference_runs_in_eval_mode_and_restores_training_mode() -> None:
    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.modes: list[bool] = []

        def forward(self, x, context):
            self.modes.append(self.training)
            return self.lin(x)

    probe = Probe()
    trainer = GreedyTrainer([probe], mse)
    trainer.predict(torch.randn(2, 3), None)
    trainer.train_step(torch.randn(2, 3), None, torch.randn(2, 3))
    assert probe.modes == [False, True]


def test_amp_runs_stages_under_autocast_on_cpu() -> None:
    seen = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x, context):
            seen.append(torch.is_autocast_enabled("cpu"))
            return self.lin(x)

    trainer = GreedyTrainer([Probe(), Probe()], mse, modules=2, amp=True)
    before = flat_parameters(trainer.stages).clone()
    losses = trainer.train_step(torch.randn(2, 4), None, torch.randn(2, 4))
    assert seen == [True, True]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, flat_parameters(trainer.stages))
    assert trainer.scalers == [None, None]  # bfloat16 needs no loss scaling


@pytest.mark.gpu
def test_amp_float16_on_cuda_uses_a_scaler_per_module() -> None:
    stages = make_stages(2, dtype=torch.float32)
    trainer = GreedyTrainer(stages, mse, modules=2, devices=["cuda"], amp=True)
    x0, context, target = make_batch(dtype=torch.float32)
    losses = [trainer.train_step(x0, context, target) for _ in range(3)]
    assert all(isinstance(s, torch.amp.GradScaler) for s in trainer.scalers)
    assert all(torch.isfinite(torch.tensor(step)).all() for step in losses)


def test_module_without_parameters_is_evaluated_not_trained() -> None:
    class DataConsistency(nn.Module):
        def forward(self, x, context):
            return x - 0.5 * (x - context)

    stages = [DataConsistency(), _Scale()]
    trainer = GreedyTrainer(stages, mse, modules=2)
    assert trainer.optimizers[0] is None
    assert trainer.optimizers[1] is not None
    y = torch.randn(2, 3, dtype=torch.float64)
    losses = trainer.train_step(torch.zeros_like(y), y, y)
    assert losses[0] == pytest.approx(float(mse(0.5 * y, y)))


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, x, context):
        return self.w * x


def test_nested_states_travel_in_pieces_and_come_back_whole() -> None:
    from collections import namedtuple

    from greedytrain._comm import flatten_tree, unflatten_tree, unwire, wire

    Pair = namedtuple("Pair", ["eta", "s"])
    state = {
        "pair": Pair(torch.randn(2, 3, dtype=torch.complex64), torch.randn(2, 3)),
        "list": [torch.arange(4), 7, "note"],
    }
    layout, tensors = flatten_tree(state)
    wired = [wire(t) for t in tensors]
    assert not any(w.is_complex() for w in wired)  # complex tensors travel as real views
    slots = [layout["pair"].eta, layout["pair"].s, layout["list"][0]]
    back = unflatten_tree(layout, [unwire(w.clone(), slot) for w, slot in zip(wired, slots)])
    assert isinstance(back["pair"], Pair)
    assert back["list"][1:] == [7, "note"]
    for a, b in zip(flat_leaves(back), flat_leaves(state)):
        assert torch.equal(a, b)


def flat_leaves(tree):
    from greedytrain._tree import tree_leaves

    return tree_leaves(tree)


# ---------------------------------------------------------------------- memory between modules
class _KeepOnCtx(torch.autograd.Function):
    """Identity whose ctx holds a tensor as a plain attribute (not save_for_backward), as solvers
    that keep closures or states on ctx do: it lives as long as the graph's nodes."""

    @staticmethod
    def forward(ctx, x, held):
        ctx.held = held
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _HoldingStage(nn.Module):
    def __init__(self, log: list) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.log = log
        self.held: weakref.ref | None = None

    def forward(self, x, context):
        if self.log:  # what the previous module left behind when this one starts
            previous = self.log[-1]
            self.seen = (previous.held() is None, previous.w.grad is None)
        self.log.append(self)
        held = torch.ones(1000, dtype=torch.float64)
        self.held = weakref.ref(held)
        return _KeepOnCtx.apply(x * self.w, held)


@pytest.mark.parametrize("devices", [None, ["cpu", "cpu"]])
def test_nothing_of_a_module_graph_survives_into_the_next_block(devices) -> None:
    """Before the next block's forward, the previous modules' graphs (with whatever their nodes
    hold) are gone and their gradients are None; each optimizer holds state for its own module's
    parameters only."""
    log: list = []
    stages = [_HoldingStage(log) for _ in range(4)]
    trainer = GreedyTrainer(stages, mse, modules=4, devices=devices)
    target = torch.zeros(3, dtype=torch.float64)
    for _ in range(2):
        log.clear()
        trainer.train_step(torch.randn(3, dtype=torch.float64), None, target)
        block = 1 if devices is None else 2
        for stage in stages[block::block]:
            assert stage.seen == (True, True)
    for stage, optimizer in zip(stages, trainer.optimizers):
        assert optimizer is not None
        assert set(optimizer.state) == {stage.w}


# ---------------------------------------------------------------------- mixed precision
def test_amp_float16_on_cpu_uses_a_scaler_per_module() -> None:
    trainer = GreedyTrainer(
        make_stages(2, dtype=torch.float32),
        mse,
        modules=2,
        amp=True,
        amp_dtype=torch.float16,
        loss_weights=[1.0, 1e35],  # module 1's scaled loss overflows: only its scaler backs off
    )
    scalers = trainer.scalers
    assert all(isinstance(s, torch.amp.GradScaler) for s in scalers)
    assert scalers[0] is not scalers[1]
    before = [p.detach().clone() for p in trainer.runners.parameters()]
    losses = trainer.train_step(*make_batch(dtype=torch.float32))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert scalers[0].get_scale() == 2.0**16  # untouched by module 1's overflow
    assert scalers[1].get_scale() == 2.0**15  # backed off, and its update skipped
    after = list(trainer.runners.parameters())
    n0 = len(list(trainer.runners[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before[:n0], after[:n0]))
    assert all(torch.equal(a, b) for a, b in zip(before[n0:], after[n0:]))


def test_amp_bfloat16_needs_no_scaler_and_spreads_over_devices() -> None:
    """bf16 autocast on CPU, modules spread over two (CPU) devices: no scaler, and the block
    schedule of P-GLEAM gives exactly the updates of GLEAM under the same autocast."""
    stages = make_stages(4, dtype=torch.float32)
    reference = copy.deepcopy(stages)
    options = {"modules": 4, "amp": True, "amp_dtype": torch.bfloat16}
    pgleam = GreedyTrainer(stages, mse, devices=["cpu", "cpu"], **options)
    gleam = GreedyTrainer(reference, mse, **options)
    assert pgleam.scalers == [None] * 4
    assert [unit.device for unit in pgleam.units] == [torch.device("cpu")] * 4
    for b in [make_batch(dtype=torch.float32, seed=s) for s in range(2)]:
        assert pgleam.train_step(*b) == gleam.train_step(*b)
    assert torch.equal(flat_parameters(stages), flat_parameters(reference))
