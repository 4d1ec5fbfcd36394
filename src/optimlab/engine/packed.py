"""Packed trials: K trials of one model shape trained together, one vectorised step for all.

Each trial keeps what ``fit`` gives it: its own model (whose parameters stay the leaves
its own torch.optim optimizer updates), its own scheduler, scaler, history and callbacks.
Per step, the trials' parameters are stacked (``torch.stack`` is differentiable, so each
trial's gradient lands in its own leaves' ``.grad``), one ``torch.func.vmap`` of
``functional_call`` runs forward and loss for all K at once, the K mean losses are summed
(the trials share no parameter, so the sum's gradient w.r.t. a trial's parameters is that
trial's own gradient) and one backward pass fills every trial's gradients. Then each trial
takes its own ``optimizer.step()`` and scheduler step, exactly as ``train_one_epoch`` does.
Everything else a step or an epoch does (the step losses, batch hooks and divergence check,
the epoch's clock, scheduler step, EpochResult and callbacks) is ``engine.training``'s own
code, called per trial: a pack supplies only the stacked forward/backward and the steps.

Buffers (BatchNorm running statistics) are stacked once per epoch, updated in place by the
vmapped forward (only a batched buffer can be written under vmap) and written back to each
trial's model before anything outside the loop looks at it: a callback, the evaluation,
the end of the epoch, or a trial leaving the pack. A trial's checkpoint is therefore a
solo trial's checkpoint.

Data: trials with the same seed see the same batches, so when all seeds agree one batch is
shared (``in_dims=None``); otherwise each trial gets its own seed's batch.

A trial leaves the pack when its loss becomes non-finite (the same ``Diverged`` a solo run
raises, at the same epoch and step) or when one of its callbacks raises (``Pruned``, a
stop); its exception is returned in its slot. KeyboardInterrupt and SystemExit propagate.

Packs train in fp32 or bf16; fp16 (a GradScaler per trial) is refused for now. A compiled
model is run uncompiled in a pack.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vmap

from optimlab.engine.data import DeviceData
from optimlab.engine.training import (
    BatchHook, Callback, EpochClock, LoopConfig, StepLosses, TrainState, autocast, batch_hooks, end_epoch, evaluate,
)  # fmt: skip

log = logging.getLogger(__name__)

# LoopConfig fields every trial of a pack must share: they fix the step's shapes and kernels.
SHARED_LOOP_KEYS = ("epochs", "batch_size", "precision", "eval_batch_size", "compile")
PACKED_PRECISIONS = ("fp32", "bf16")
# packed_evaluate runs at most this many images (trials x eval batch) through one vmapped forward
EVAL_IMAGES_PER_CALL = 16384


# --------------------------------------------------------------------------- packability


def _describe_tensor(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


def check_packable(states: Sequence[TrainState], cfgs: Sequence[LoopConfig]) -> None:
    """Raise ValueError naming the first thing that keeps these trials from one pack: their
    count, fp16 precision (not packed), the model class, a parameter's or buffer's name, shape,
    dtype or device, the epoch they start at, or a loop setting that must be shared (batch
    size, epochs, ...)."""
    if len(states) == 0:
        raise ValueError("a pack needs at least one trial")
    if len(states) != len(cfgs):
        raise ValueError(f"a pack needs one LoopConfig per trial: {len(states)} states, {len(cfgs)} configs")
    ref, ref_cfg = states[0], cfgs[0]
    if ref_cfg.precision not in PACKED_PRECISIONS:
        raise ValueError(
            f"precision {ref_cfg.precision!r} cannot be packed (packs train in {' or '.join(PACKED_PRECISIONS)}): "
            f"an fp16 trial's GradScaler is not tested in a pack yet; run fp16 trials solo"
        )
    ref_params = dict(ref.model.named_parameters())
    ref_buffers = dict(ref.model.named_buffers())
    for k, (state, cfg) in enumerate(zip(states, cfgs)):
        if k == 0:
            continue
        what = f"trials 0 and {k} cannot be packed"
        if type(state.model) is not type(ref.model):
            raise ValueError(f"{what}: model {type(ref.model).__name__} vs {type(state.model).__name__}")
        for kind, mine, theirs in (
            ("parameter", ref_params, dict(state.model.named_parameters())),
            ("buffer", ref_buffers, dict(state.model.named_buffers())),
        ):
            if mine.keys() != theirs.keys():
                diff = sorted(set(mine) ^ set(theirs))
                raise ValueError(f"{what}: their models' {kind}s differ ({', '.join(diff[:3])})")
            for name, t in mine.items():
                u = theirs[name]
                if (t.shape, t.dtype, t.device) != (u.shape, u.dtype, u.device):
                    raise ValueError(f"{what}: {kind} {name} {_describe_tensor(t)} vs {_describe_tensor(u)}")
        for key in SHARED_LOOP_KEYS:
            a, b = getattr(ref_cfg, key), getattr(cfg, key)
            if a != b:
                raise ValueError(f"{what}: {key} {a!r} vs {b!r} (a pack shares {', '.join(SHARED_LOOP_KEYS)})")
        if state.epoch != ref.epoch:
            raise ValueError(f"{what}: they start at epoch {ref.epoch} vs {state.epoch} (a pack starts together)")


# --------------------------------------------------------------------------- memory


# share of the device's free memory a pack may plan to use (the rest: allocator slack, the eval)
PACK_MEMORY_SHARE = 0.8


def trial_bytes(state: TrainState, image_shape: Sequence[int], batch_size: int, precision: str = "fp32") -> int:
    """An estimate of the device memory one more trial of a pack needs at its peak: parameters,
    their gradients and up to two optimizer buffers each (Adam's moments: 4x the parameters),
    the stacked copies of its parameters and buffers (+1x), and one step's activations, counted
    as the sizes of every module output of a forward pass on one batch, twice (what autograd
    saves, and the gradients of the same size the backward pass makes)."""
    model = state.model
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    buffers = sum(t.numel() * t.element_size() for t in model.buffers())
    template = template_of(model).eval()  # eval: BatchNorm statistics are not touched
    seen = [0]

    def count(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            seen[0] += output.numel() * output.element_size()

    leaves = [m for m in template.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), autocast(device, precision):
            template(torch.zeros((batch_size, *image_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
    return 5 * weights + 2 * buffers + 2 * seen[0]


def free_bytes(device: torch.device) -> int:
    """The memory free for new tensors on ``device`` (host memory for cpu and mps)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def pack_limit(per_trial: int, free: int) -> int:
    """How many such trials fit in ``free`` bytes at once (at least 1: a lone trial trains anyway)."""
    return max(1, int(PACK_MEMORY_SHARE * free) // max(1, per_trial))


# --------------------------------------------------------------------------- the stacked model


def template_of(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` to run ``functional_call`` on: the trials' own modules are
    never re-parametrised, and a ``model.compile()``'d model is copied (and run) uncompiled."""
    compiled = model.__dict__.get("_compiled_call_impl")
    model._compiled_call_impl = None
    try:
        template = copy.deepcopy(model)
    finally:
        model._compiled_call_impl = compiled
    for p in template.parameters():
        p.requires_grad_(False)
    return template


class Pack:
    """The active trials' models seen as one stacked model: a template module to run
    ``functional_call`` on, and the trials' buffers stacked along a new leading dim."""

    def __init__(self, states: Sequence[TrainState]):
        self.states = list(states)
        self.template = template_of(states[0].model)
        self.param_names = [n for n, _ in states[0].model.named_parameters()]
        self.buffer_names = [n for n, _ in states[0].model.named_buffers()]
        self.buffers: dict[str, torch.Tensor] = {}
        self.stack_buffers()

    def stack_buffers(self) -> None:
        """Stack the trials' buffers afresh (their models hold the truth between epochs); also
        note, per parameter name, the trials' parameters in pack order."""
        self.columns = list(zip(*([p for _, p in s.model.named_parameters()] for s in self.states)))
        self.buffers = {}
        models = [s.model for s in self.states]
        per_model = [dict(m.named_buffers()) for m in models]
        for name in self.buffer_names:
            self.buffers[name] = torch.stack([b[name] for b in per_model])

    def write_back_buffers(self) -> None:
        """Each trial's model gets its own row of the stacked buffers."""
        if not self.buffer_names or not self.states:
            return
        own, rows = [], []
        for k, state in enumerate(self.states):
            for name, buffer in state.model.named_buffers():
                own.append(buffer)
                rows.append(self.buffers[name][k])
        with torch.no_grad():
            torch._foreach_copy_(own, rows)  # one call for all: cheap enough to run every step

    def stacked_params(self) -> dict[str, torch.Tensor]:
        """Each parameter of all trials stacked: differentiable, gradients flow to each trial's leaf."""
        return {name: torch.stack(column) for name, column in zip(self.param_names, self.columns)}

    def remove(self, keep: Sequence[int]) -> None:
        """Mid-epoch: keep only the trials at ``keep`` (indices into the current pack), their
        buffers written back to every model first."""
        self.write_back_buffers()
        self.restack([self.states[i] for i in keep])

    def restack(self, states: Sequence[TrainState]) -> None:
        """Between epochs, where each model holds the truth: the pack is ``states``, stacked afresh."""
        self.states = list(states)
        if self.states:
            self.stack_buffers()


class _Batches:
    """A pack's training batches for one epoch: one iterator per distinct seed (trials with the
    same seed see the same batches), stacked in pack order, or one shared batch (``in_dim``
    None) when one seed is left."""

    def __init__(self, data: DeviceData, batch_size: int, epoch: int, seeds: Sequence[int]):
        self.seeds = list(seeds)
        self.iterators = {seed: iter(data.train_batches(batch_size, seed, epoch)) for seed in dict.fromkeys(seeds)}

    def keep(self, seeds: Sequence[int]) -> None:
        """The seeds of the trials still in the pack, in pack order."""
        self.seeds = list(seeds)
        self.iterators = {seed: it for seed, it in self.iterators.items() if seed in self.seeds}

    def next(self) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        batches = {seed: next(it) for seed, it in self.iterators.items()}
        if len(batches) == 1:
            ((x, y),) = batches.values()
            return x, y, None
        return torch.stack([batches[s][0] for s in self.seeds]), torch.stack([batches[s][1] for s in self.seeds]), 0


# --------------------------------------------------------------------------- training


def losses_fn(template: nn.Module):
    def loss_one(params, buffers, x, y):
        logits = functional_call(template, (params, buffers), (x,))
        return nn.functional.cross_entropy(logits, y)

    return loss_one


def forward_backward(pack: Pack, loss_one, x: torch.Tensor, y: torch.Tensor, in_dim: int | None, precision: str) -> torch.Tensor:
    """zero_grad, forward, loss and backward for every trial of the pack at once; each trial's
    gradients land in its own parameters' ``.grad``. Returns the K detached losses."""
    for state in pack.states:
        state.optimizer.zero_grad(set_to_none=True)
    params = pack.stacked_params()
    with autocast(x.device, precision):
        losses = vmap(loss_one, in_dims=(0, 0, in_dim, in_dim))(params, pack.buffers, x, y)
    # the trials share no parameter, so the sum's gradient w.r.t. trial k's parameters is
    # d(loss_k)/d(params_k): each term's own (scaled, as solo) gradient, unmixed
    scaled = [state.scaler.scale(losses[k]) for k, state in enumerate(pack.states)]
    torch.stack(scaled).sum().backward()
    return losses.detach()


def step_trials(states: Sequence[TrainState], intervals: Sequence[str]) -> None:
    """Each trial's own optimizer step (through its scaler) and per-batch scheduler step, as
    ``train_one_epoch`` takes them."""
    for state, interval in zip(states, intervals):
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if interval == "batch":
            state.scheduler.step()


@dataclass(eq=False)
class _Trial:
    """One trial of a pack: its state, loop settings and callbacks; the error it left with."""

    state: TrainState
    cfg: LoopConfig
    callbacks: list[Callback]
    hooks: list[BatchHook] = field(init=False)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.hooks = batch_hooks(self.callbacks)


def _trials(states: Sequence[TrainState], cfgs: Sequence[LoopConfig], callbacks) -> dict[int, _Trial]:
    """The pack's trials by ``id(state)``; ValueError if they cannot share one pack."""
    states, cfgs, callbacks = list(states), list(cfgs), [list(c) for c in callbacks]
    if len(callbacks) != len(states):
        raise ValueError(f"a pack needs one callback list per trial: {len(states)} states, {len(callbacks)} lists")
    check_packable(states, cfgs)
    if len({id(s) for s in states}) != len(states):
        raise ValueError("a pack cannot hold the same TrainState twice")
    return {id(s): _Trial(s, c, cb) for s, c, cb in zip(states, cfgs, callbacks)}


def _train_packed_epoch(pack: Pack, data: DeviceData, trials: dict[int, _Trial]) -> dict[int, float]:
    """One epoch for every trial in the pack; returns each surviving trial's mean training loss
    (keyed by id(state)); a trial that diverges or whose batch hook raises leaves ``pack``
    with that error."""
    cfg = trials[id(pack.states[0])].cfg
    n_steps = data.steps_per_epoch(cfg.batch_size)
    loss_one = losses_fn(pack.template)
    pack.template.train()
    losses: dict[int, StepLosses] = {}
    for state in pack.states:
        state.model.train()
        trial = trials[id(state)]
        losses[id(state)] = StepLosses(state, trial.cfg, n_steps, data.device, trial.hooks)
    batches = _Batches(data, cfg.batch_size, pack.states[0].epoch, [trials[id(s)].cfg.seed for s in pack.states])
    any_hooks = any(trials[id(s)].hooks for s in pack.states)
    try:
        for _ in range(n_steps):
            states = pack.states
            x, y, in_dim = batches.next()
            detached = forward_backward(pack, loss_one, x, y, in_dim, cfg.precision)
            step_trials(states, [trials[id(s)].cfg.interval for s in states])
            if any_hooks:
                pack.write_back_buffers()  # a hook sees its own model's statistics
            for k, state in enumerate(states):
                try:
                    losses[id(state)].add(detached[k], y.shape[-1])
                except Exception as e:  # noqa: BLE001  (Diverged, a hook's stop: the trial leaves; signals propagate)
                    trials[id(state)].error = e
            if any(trials[id(s)].error is not None for s in states):
                pack.remove([i for i, s in enumerate(states) if trials[id(s)].error is None])
                if not pack.states:
                    break
                batches.keep([trials[id(s)].cfg.seed for s in pack.states])
    finally:  # also when a signal unwinds mid-epoch: each model holds its own statistics
        pack.write_back_buffers()
    return {id(s): losses[id(s)].mean() for s in pack.states}


def fit_packed(
    states: Sequence[TrainState],
    data: DeviceData,
    cfgs: Sequence[LoopConfig],
    callbacks: Sequence[Sequence[Callback]],
) -> list[BaseException | None]:
    """Train K trials together, each from its ``state.epoch`` to its ``cfg.epochs``.

    All states start at the same epoch; the configs must agree on ``epochs``, ``batch_size``,
    ``precision``, ``eval_batch_size`` and ``compile`` (else ValueError, see
    :func:`check_packable`); they may differ in seed, interval, monitor and check_every.
    Per trial this does exactly what ``engine.training.fit`` does, with its code
    (``StepLosses``, ``EpochClock``, ``end_epoch``): an EpochResult appended to
    ``state.history`` per epoch, the scheduler stepped at its interval, the trial's callbacks'
    ``on_epoch_end(result, state)`` (and optional ``on_batch_end``) called with the trial's
    own model holding its own parameters and buffers.

    Returns one slot per trial: None for a trial that finished, else the exception that
    made it leave the pack (``Diverged`` as a solo run raises it, a callback's ``Pruned`` or
    stop). KeyboardInterrupt and SystemExit propagate to the caller.
    """
    trials = _trials(states, cfgs, callbacks)
    if cfgs[0].compile:
        log.info("packed trials run their models uncompiled (torch.compile is not applied to a pack)")
    pack = Pack(states)
    while pack.states and pack.states[0].epoch < cfgs[0].epochs:
        clock = EpochClock(pack.states, data)
        train_losses = _train_packed_epoch(pack, data, trials)
        if not pack.states:
            break
        clock.trained()
        metrics = packed_evaluate(pack.states, data, "val", trials[id(pack.states[0])].cfg)
        for state, (val_loss, val_acc) in zip(pack.states, metrics):
            trial = trials[id(state)]
            try:
                end_epoch(state, trial.cfg, clock, train_losses[id(state)], val_loss, val_acc, trial.callbacks)
            except Exception as e:  # noqa: BLE001  (Pruned, a stop: the trial leaves; signals propagate)
                trial.error = e
        # each model holds the truth now (a callback may have touched its buffers): restack
        pack.restack([s for s in pack.states if trials[id(s)].error is None])
    return [trials[id(s)].error for s in states]


# --------------------------------------------------------------------------- evaluation


def packed_evaluate(
    states: Sequence[TrainState], data: DeviceData, split: str, cfg: LoopConfig
) -> list[tuple[float, float]]:
    """(mean cross-entropy, accuracy) of each trial's model on ``split``, as ``evaluate`` gives
    them, computed for all trials at once by one vmapped forward per batch."""
    states = list(states)
    if len(states) == 1:
        return [evaluate(states[0].model, data, split, cfg)]
    chunk = max(1, EVAL_IMAGES_PER_CALL // cfg.eval_batch_size)  # K x batch activations at once
    if len(states) > chunk:
        return [m for i in range(0, len(states), chunk) for m in packed_evaluate(states[i : i + chunk], data, split, cfg)]
    template = template_of(states[0].model)
    template.eval()
    for state in states:
        state.model.eval()
    names = [n for n, _ in template.named_parameters()]
    buffer_names = [n for n, _ in template.named_buffers()]
    with torch.inference_mode():
        per_params = [dict(s.model.named_parameters()) for s in states]
        per_buffers = [dict(s.model.named_buffers()) for s in states]
        params = {n: torch.stack([p[n].detach() for p in per_params]) for n in names}
        buffers = {n: torch.stack([b[n] for b in per_buffers]) for n in buffer_names}

        def logits_one(p, b, x):
            return functional_call(template, (p, b), (x,))

        forward = vmap(logits_one, in_dims=(0, 0, None))
        k = len(states)
        loss_sum = torch.zeros(k, device=data.device)
        correct = torch.zeros(k, device=data.device, dtype=torch.long)
        for x, y in data.eval_batches(split, cfg.eval_batch_size):
            with autocast(data.device, cfg.precision):
                logits = forward(params, buffers, x)  # (K, B, classes)
            flat = logits.float().flatten(0, 1)
            loss_sum += nn.functional.cross_entropy(flat, y.repeat(k), reduction="none").view(k, -1).sum(1)
            correct += (logits.argmax(2) == y).sum(1)
    n = len(getattr(data, split))
    return [(float(s) / n, int(c) / n) for s, c in zip(loss_sum.tolist(), correct.tolist())]
