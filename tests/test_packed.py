"""Packed trials compute what solo trials compute.

Every trial of a pack keeps its own torch.optim optimizer and scheduler (built from
conf/optimizer/*.yaml and conf/scheduler/*.yaml as the runner builds them); only the
forward/backward is vectorised. So the checks are:

1. one step's gradients, packed vs solo from the same snapshot (fp32 rounding only);
2. given the same gradients, the optimizer and scheduler steps are bitwise torch.optim's;
3. whole 2-epoch runs: losses, weights, BatchNorm statistics and lr, packed vs ``fit``,
   for every optimizer and scheduler option, in fp64 (tight) and fp32;
4. a diverging trial and a pruned trial leave the pack alone, with the solo exception;
5. trials that cannot share a pack are refused with a message naming the difference.

Tolerances come from unit roundoff, see ``step_tolerance`` and ``run_tolerance``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from optimlab.engine import data as datasets
from optimlab.engine import packed
from optimlab.engine.models import FastNet, TuduiCNN
from optimlab.engine.packed import check_packable, fit_packed, packed_evaluate
from optimlab.engine.training import LoopConfig, TrainState, evaluate, fit
from optimlab.errors import Diverged, Pruned
from optimlab.run.runner import build_scheduler

from conftest import CONF_DIR

CPU = torch.device("cpu")
IMAGE, BATCH, TRAIN = 8, 32, 100  # 4 steps per epoch, the last one partial (4 images)
EPOCHS = 2
STEPS = EPOCHS * -(-TRAIN // BATCH)

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULERS = ("constant", "step", "multistep", "exponential", "cosine", "onecycle", "plateau")
# the schedulers' own settings act after 30+ epochs; these make every one of them move in 2
SCHEDULER_OVERRIDES = {"step": {"step_size": 1}, "multistep": {"milestones": [1]}, "plateau": {"patience": 0}}
LR = {"sgd": 0.05, "momentum": 0.02, "nesterov": 0.03, "adam": 2e-3, "adamw": 3e-3, "rmsprop": 1e-3}


# --------------------------------------------------------------------------- tolerances
#
# Rounding model (Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3): a sum
# or dot product of n terms in a precision of unit roundoff u has relative error
# <= n*u (worst case) and ~sqrt(n)*u typically (errors of random sign). The packed step
# runs the same arithmetic as the solo step, but through other kernels (vmap turns each
# conv into a grouped conv, so reduction orders differ), so each reduction can round
# differently. The longest reduction here is a conv's weight gradient over batch and
# positions, n_max = BATCH * IMAGE * IMAGE = 2048 (forward reductions are shorter:
# C_in*k*k <= 32*25 = 800). The error a layer adds is carried back through every layer
# below it, so it grows at most with the depth (D <= 6 weight layers in these models).
# With a 3-sigma factor on the typical estimate:
#
#     step_tolerance = 3 * D * sqrt(n_max) * u   (fp32: 3*6*45.3*5.96e-8 = 4.9e-5)
#
# norm-wise per gradient tensor. (Measured ~1e-6 on one AVX-512 CPU.)
#
# A run of T steps adds such an error every step, and each step carries the difference
# it inherited forward through the update map w -> w - lr*g(w); with these small lrs that
# map is close to non-expansive, and we allow it to double an inherited difference per
# step (A = 2), so the difference after T steps is at most
#
#     run_tolerance = step_tolerance * sum_{t<T} A^t = step_tolerance * (2^T - 1)
#
# relative to the run's displacement ||w_T - w_0|| (and to the value, for losses and
# BatchNorm statistics). T = 8: fp64 -> 2.3e-11, fp32 -> 1.2e-2. fp64 is the strict check
# of the math (a wrong update rule, a mixed-up trial or a stale BatchNorm statistic shows
# up as O(1e-3..1)); the fp32 bound is loose because a max-pool window whose two largest
# inputs are within rounding of each other can route one gradient differently (a
# discontinuity no rounding bound covers), which moves a run by ~1e-4 when it happens.

N_MAX = BATCH * IMAGE * IMAGE
DEPTH = 6
N_VAL = 40
# Evaluation accumulates in fp32 whatever the model's dtype (training.evaluate: logits.float(),
# a float32 sum), and packed_evaluate sums the same per-sample losses in another order: a sum
# of N_VAL fp32 terms, 3-sigma -> 3 * sqrt(N_VAL) * u32 = 1.1e-6 relative.
EVAL_TOLERANCE = 3 * math.sqrt(N_VAL) * torch.finfo(torch.float32).eps / 2


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2  # fp32: 2^-24, fp64: 2^-53


def step_tolerance(dtype: torch.dtype) -> float:
    return 3 * DEPTH * math.sqrt(N_MAX) * unit_roundoff(dtype)


def run_tolerance(dtype: torch.dtype, steps: int = STEPS) -> float:
    return step_tolerance(dtype) * (2**steps - 1)


def rel(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """||a - b|| / ||scale|| (default ||b||), in float64."""
    a, b = a.double(), b.double()
    s = (b if scale is None else scale.double()).norm()
    return float((a - b).norm() / s) if s > 0 else float((a - b).norm())


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These steps are tiny: with one thread they cost no OpenMP barrier, which on a busy
    2-core machine is most of their time (a 20x difference here). Results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- data, trials


class Float64Data(datasets.DeviceData):
    """The same batches in float64 (for the strict fp64 check)."""

    def _normalize(self, x):
        return super()._normalize(x).double()


def make_data(dtype=torch.float32, train=TRAIN) -> datasets.DeviceData:
    cfg = {
        "_target_": "optimlab.engine.data.make_synthetic",
        "channels": 3, "image_size": IMAGE, "num_classes": 10,
        "train_size": train, "val_size": N_VAL, "test_size": 30, "noise": 0.5, "split_seed": 0,
    }  # fmt: skip
    cls = Float64Data if dtype == torch.float64 else datasets.DeviceData
    return cls(datasets.load(cfg), CPU)


def make_model(model_cls, dtype=torch.float32, init_seed=0) -> nn.Module:
    torch.manual_seed(init_seed)
    extra = {"widths": (8, 16)} if model_cls is FastNet else {}
    return model_cls(in_channels=3, image_size=IMAGE, num_classes=10, **extra).to(dtype)


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer conf/optimizer/<name>.yaml builds with these top-level knobs."""
    root = OmegaConf.create({"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
    root.optimizer = OmegaConf.load(CONF_DIR / "optimizer" / f"{name}.yaml")
    return instantiate(OmegaConf.to_container(root, resolve=True)["optimizer"])(params)


def make_trial(model_cls, optimizer: str, scheduler: str, seed: int, data, dtype=torch.float32, lr=None,
               momentum=0.9, weight_decay=5e-4, init_seed=0) -> tuple[TrainState, LoopConfig]:  # fmt: skip
    """A trial as the runner builds it: model, optimizer and scheduler from conf/."""
    model = make_model(model_cls, dtype, init_seed)
    opt = make_optimizer(optimizer, model.parameters(), LR[optimizer] if lr is None else lr, momentum, weight_decay)
    root = OmegaConf.create({"lr": opt.param_groups[0]["lr"], "epochs": EPOCHS})
    root.scheduler = OmegaConf.load(CONF_DIR / "scheduler" / f"{scheduler}.yaml")
    root.scheduler.merge_with(SCHEDULER_OVERRIDES.get(scheduler, {}))
    sched, interval, monitor = build_scheduler(root.scheduler, opt, data.steps_per_epoch(BATCH))
    state = TrainState(model, opt, sched, torch.amp.GradScaler("cpu", enabled=False))
    return state, LoopConfig(epochs=EPOCHS, batch_size=BATCH, seed=seed, interval=interval, monitor=monitor)


def compare_runs(packed_state: TrainState, solo_state: TrainState, init: nn.Module, tol: float, what: str) -> None:
    assert packed_state.epoch == solo_state.epoch, what
    for p, s in zip(packed_state.history, solo_state.history):
        for key in ("train_loss", "val_loss", "lr"):
            a, b = getattr(p, key), getattr(s, key)
            allowed = tol + (EVAL_TOLERANCE if key == "val_loss" else 0.0)
            assert abs(a - b) <= allowed * abs(b), f"{what}: epoch {s.epoch} {key} packed {a} solo {b}"
        assert abs(p.val_acc - s.val_acc) <= 1 / N_VAL + 1e-12, f"{what}: val_acc {p.val_acc} vs {s.val_acc}"
    assert packed_state.optimizer.param_groups[0]["lr"] == pytest.approx(solo_state.optimizer.param_groups[0]["lr"], rel=tol)
    start = init.state_dict()
    solo_sd = solo_state.model.state_dict()
    for name, value in packed_state.model.state_dict().items():
        ref = solo_sd[name]
        if not value.dtype.is_floating_point:  # num_batches_tracked
            assert torch.equal(value, ref), f"{what}: {name}"
            continue
        scale = ref - start[name] if name in dict(init.named_parameters()) else ref
        d = rel(value, ref, scale)
        assert d <= tol, f"{what}: {name} differs by {d:.2e} (relative), tolerance {tol:.2e}"


# --------------------------------------------------------------------------- 1. gradients


@pytest.mark.parametrize("model_cls", [TuduiCNN, FastNet])
@pytest.mark.parametrize("shared_batch", [True, False])
def test_one_step_gradients_match_solo(model_cls, shared_batch):
    """Same snapshot, same batch: the packed backward gives each trial its solo gradient."""
    data = make_data()
    K = 3
    states = [make_trial(model_cls, "momentum", "constant", 0, data, init_seed=k)[0] for k in range(K)]
    solo = [copy.deepcopy(s) for s in states]
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(K, BATCH, 3, IMAGE, IMAGE, generator=g)
    ys = torch.randint(0, 10, (K, BATCH), generator=g)
    pack = packed.Pack(states)
    pack.template.train()
    x, y, in_dim = (xs[0], ys[0], None) if shared_batch else (xs, ys, 0)
    losses = packed.forward_backward(pack, packed.losses_fn(pack.template), x, y, in_dim, "fp32")
    pack.write_back_buffers()
    tol = step_tolerance(torch.float32)
    for k, (state, ref) in enumerate(zip(states, solo)):
        ref.model.train()
        xk, yk = (xs[0], ys[0]) if shared_batch else (xs[k], ys[k])
        loss = nn.functional.cross_entropy(ref.model(xk), yk)
        loss.backward()
        assert abs(float(losses[k]) - loss.item()) <= tol * loss.item()
        for (name, p), q in zip(state.model.named_parameters(), ref.model.parameters()):
            assert rel(p.grad, q.grad) <= tol, f"trial {k} {name}: {rel(p.grad, q.grad):.2e} > {tol:.2e}"
        for (name, b), c in zip(state.model.named_buffers(), ref.model.buffers()):  # BatchNorm statistics
            assert (torch.equal(b, c) if not b.dtype.is_floating_point else rel(b, c) <= tol), f"trial {k} {name}"


# --------------------------------------------------------------------------- 2. optimizer steps


def test_optimizer_steps_are_torch_optim_bitwise():
    """Given the same gradients, every optimizer option with its own lr/momentum/weight decay
    and scheduler steps exactly as torch.optim does solo (torch.equal after 3 steps)."""
    data = make_data()
    specs = [(opt, 0.5 * LR[opt] * (1 + k), 0.8 + 0.05 * (k % 3), [0.0, 5e-4, 1e-2][k % 3]) for k, opt in enumerate(OPTIMIZERS)]
    scheds = ["onecycle", "step", "exponential", "onecycle", "cosine", "constant"]
    states, intervals = [], []
    for (opt, lr, m, wd), sched in zip(specs, scheds):
        state, cfg = make_trial(TuduiCNN, opt, sched, 0, data, lr=lr, momentum=m, weight_decay=wd)
        states.append(state)
        intervals.append(cfg.interval)
    solo = [copy.deepcopy(s) for s in states]
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        for state, ref in zip(states, solo):
            for p, q in zip(state.model.parameters(), ref.model.parameters()):
                p.grad = torch.randn(p.shape, generator=g)
                q.grad = p.grad.clone()
        packed.step_trials(states, intervals)
        for ref, interval in zip(solo, intervals):
            ref.optimizer.step()
            if interval == "batch":
                ref.scheduler.step()
    for (opt, *_), state, ref in zip(specs, states, solo):
        for (name, p), q in zip(state.model.named_parameters(), ref.model.parameters()):
            assert torch.equal(p, q), f"{opt}: {name}"
        assert state.optimizer.param_groups[0]["lr"] == ref.optimizer.param_groups[0]["lr"]


# --------------------------------------------------------------------------- 3. whole runs


# each pack holds every optimizer; between the two packs each scheduler meets two optimizers,
# one pack has per-trial seeds (per-trial batches), the other one seed (one shared batch)
PACKS = {
    "tudui": (TuduiCNN, [(o, s) for o, s in zip(OPTIMIZERS + ("momentum",), SCHEDULERS)], True),
    "fastnet_bn": (FastNet, [(o, s) for o, s in zip(OPTIMIZERS, SCHEDULERS[5:] + SCHEDULERS[:4])], False),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("pack_name", PACKS)
def test_packed_runs_match_solo_fit(pack_name, dtype):
    model_cls, trials, own_seeds = PACKS[pack_name]
    data = make_data(dtype)
    made = [make_trial(model_cls, o, s, 7 + k if own_seeds else 7, data, dtype) for k, (o, s) in enumerate(trials)]
    init = make_model(model_cls, dtype)
    solo = [(copy.deepcopy(s), c) for s, c in made]
    assert fit_packed([s for s, _ in made], data, [c for _, c in made], [[] for _ in made]) == [None] * len(made)
    tol = run_tolerance(dtype)
    for (state, _), (ref, cfg), (o, s) in zip(made, solo, trials):
        fit(ref, data, cfg)
        compare_runs(state, ref, init, tol, f"{model_cls.__name__} {o}+{s}")


@pytest.mark.parametrize("images_per_call", [16384, 32], ids=["one_call", "chunked"])
def test_packed_evaluate_matches_evaluate(images_per_call, monkeypatch):
    monkeypatch.setattr(packed, "EVAL_IMAGES_PER_CALL", images_per_call)  # 32: trials in chunks of 2
    data = make_data()
    states = [make_trial(FastNet, "sgd", "constant", 0, data, init_seed=k)[0] for k in range(3)]
    cfg = LoopConfig(epochs=1, batch_size=BATCH, seed=0, eval_batch_size=16)
    for (loss, acc), state in zip(packed_evaluate(states, data, "val", cfg), states):
        ref_loss, ref_acc = evaluate(state.model, data, "val", cfg)
        assert abs(loss - ref_loss) <= (step_tolerance(torch.float32) + EVAL_TOLERANCE) * ref_loss
        assert acc == ref_acc  # a prediction can flip only on a tie within rounding


def test_bf16_packs_train():
    """bf16 autocast runs packed; its losses stay within bf16 rounding of the solo run's
    (u = 2^-8; a few roundings per logit: 10u relative on the first epoch's mean loss)."""
    data = make_data()
    made = [make_trial(TuduiCNN, "momentum", "constant", k, data) for k in range(2)]
    for _, cfg in made:
        cfg.precision = "bf16"
    solo = [(copy.deepcopy(s), c) for s, c in made]
    assert fit_packed([s for s, _ in made], data, [c for _, c in made], [[], []]) == [None, None]
    for (state, _), (ref, cfg) in zip(made, solo):
        fit(ref, data, cfg)
        assert state.history[0].train_loss == pytest.approx(ref.history[0].train_loss, rel=10 * 2**-8)


# --------------------------------------------------------------------------- 4. leaving the pack


class PruneAt:
    """A pruner's callback: raise Pruned after ``epoch``, keeping a checkpoint of the state."""

    def __init__(self, epoch: int):
        self.epoch, self.checkpoint = epoch, None

    def on_epoch_end(self, result, state):
        self.checkpoint = copy.deepcopy(state)
        if result.epoch == self.epoch:
            raise Pruned(f"pruned at epoch {result.epoch}")


def test_diverged_and_pruned_trials_leave_the_pack_alone():
    data = make_data()
    specs = [("momentum", 0.02, 0), ("sgd", 1e20, 1), ("adam", 2e-3, 2), ("nesterov", 0.03, 3)]
    made = [make_trial(FastNet, o, "step", seed, data, lr=lr) for o, lr, seed in specs]
    solo = [(copy.deepcopy(s), c) for s, c in made]
    pruner = PruneAt(1)
    callbacks = [[], [], [pruner], []]
    results = fit_packed([s for s, _ in made], data, [c for _, c in made], callbacks)

    with pytest.raises(Diverged) as solo_diverged:
        fit(solo[1][0], data, solo[1][1])
    got, want = results[1], solo_diverged.value
    assert isinstance(got, Diverged)
    # lr 1e20 turns the weights non-finite at the first step, so the loss is NaN at step 2
    # whatever the rounding; the last finite loss (step 1, same snapshot) is the solo one
    # within one step's rounding. (A merely large lr, 1e4, diverges after a chaotic stretch
    # whose step no rounding bound predicts, packed or solo alike.)
    assert (got.epoch, got.step) == (want.epoch, want.step) == (1, 2)
    assert math.isnan(got.loss) and math.isnan(want.loss)
    assert got.last_finite_loss == pytest.approx(want.last_finite_loss, rel=step_tolerance(torch.float32))

    assert isinstance(results[2], Pruned) and made[2][0].epoch == 1 and len(made[2][0].history) == 1
    assert results[0] is None and results[3] is None
    init = make_model(FastNet)
    tol = run_tolerance(torch.float32)
    for k in (0, 3):
        fit(solo[k][0], data, solo[k][1])
        compare_runs(made[k][0], solo[k][0], init, tol, specs[k][0])

    # the pruned trial's checkpoint (taken by its callback) is a solo trial's: resumed alone it
    # ends where an uninterrupted solo run ends
    resumed, cfg = pruner.checkpoint, made[2][1]
    fit(resumed, data, cfg)
    fit(solo[2][0], data, solo[2][1])
    compare_runs(resumed, solo[2][0], init, tol, "pruned trial resumed solo")


def test_signals_propagate():
    data = make_data()
    made = [make_trial(TuduiCNN, "sgd", "constant", 0, data) for _ in range(2)]

    class Interrupt:
        def on_epoch_end(self, result, state):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_packed([s for s, _ in made], data, [c for _, c in made], [[], [Interrupt()]])


# --------------------------------------------------------------------------- 5. packability


def test_check_packable_names_the_difference():
    data = make_data()
    tudui, cfg = make_trial(TuduiCNN, "sgd", "constant", 0, data)
    fast, _ = make_trial(FastNet, "sgd", "constant", 0, data)
    with pytest.raises(ValueError, match="model TuduiCNN vs FastNet"):
        check_packable([tudui, fast], [cfg, cfg])
    other = TrainState(TuduiCNN(3, IMAGE, num_classes=5), tudui.optimizer, tudui.scheduler, tudui.scaler)
    with pytest.raises(ValueError, match=r"parameter model1\.8\.weight shape \(10, 64\).* vs shape \(5, 64\)"):
        check_packable([tudui, other], [cfg, cfg])
    with pytest.raises(ValueError, match="batch_size 32 vs 64"):
        check_packable([tudui, copy.deepcopy(tudui)], [cfg, LoopConfig(epochs=EPOCHS, batch_size=64, seed=0)])
    with pytest.raises(ValueError, match="precision 'fp32' vs 'bf16'"):
        check_packable([tudui, copy.deepcopy(tudui)], [cfg, LoopConfig(epochs=EPOCHS, batch_size=BATCH, seed=0, precision="bf16")])
    fp16 = LoopConfig(epochs=EPOCHS, batch_size=BATCH, seed=0, precision="fp16")
    with pytest.raises(ValueError, match="precision 'fp16' cannot be packed"):
        check_packable([tudui, copy.deepcopy(tudui)], [fp16, fp16])
    later = copy.deepcopy(tudui)
    later.epoch = 1
    with pytest.raises(ValueError, match="epoch 0 vs 1"):
        check_packable([tudui, later], [cfg, cfg])
    with pytest.raises(ValueError, match="one callback list per trial"):
        fit_packed([tudui], data, [cfg], [])
    check_packable([tudui, copy.deepcopy(tudui)], [cfg, LoopConfig(epochs=EPOCHS, batch_size=BATCH, seed=5, interval="batch")])


class RecordStatistics:
    """A batch hook that reads the model (as a checkpointing hook would): its BatchNorm statistics."""

    def __init__(self):
        self.seen = []

    def on_batch_end(self, state, step, n_steps, losses):
        self.seen.append([b.clone() for b in state.model.buffers()])

    def on_epoch_end(self, result, state):
        pass


def test_batch_hooks_see_each_trials_own_statistics():
    data = make_data()
    made = [make_trial(FastNet, "momentum", "constant", 7, data, lr=lr) for lr in (0.01, 0.05)]
    solo = [(copy.deepcopy(s), c) for s, c in made]
    hooks = [RecordStatistics(), RecordStatistics()]
    fit_packed([s for s, _ in made], data, [c for _, c in made], [[h] for h in hooks])
    tol = run_tolerance(torch.float32)
    for (ref, cfg), hook in zip(solo, hooks):
        ref_hook = RecordStatistics()
        fit(ref, data, cfg, [ref_hook])
        assert len(hook.seen) == len(ref_hook.seen) == STEPS
        for step, (got, want) in enumerate(zip(hook.seen, ref_hook.seen)):
            for a, b in zip(got, want):
                assert torch.equal(a, b) if not a.dtype.is_floating_point else rel(a, b) <= tol, f"step {step + 1}"


def test_compiled_models_pack_uncompiled():
    """compile=true trials (model.compile()'d, as the runner does) train in a pack, uncompiled,
    and their models stay compiled for the solo work after it (the test split's evaluation)."""
    data = make_data()
    made = [make_trial(TuduiCNN, "sgd", "constant", 0, data, lr=lr) for lr in (0.01, 0.02)]
    for state, cfg in made:
        state.model.compile()
        cfg.compile = True
    assert fit_packed([s for s, _ in made], data, [c for _, c in made], [[], []]) == [None, None]
    for state, _ in made:
        assert state.model._compiled_call_impl is not None
        assert all(math.isfinite(r.train_loss) for r in state.history) and len(state.history) == EPOCHS


def test_trial_bytes_counts_weights_optimizer_state_and_activations():
    """One Linear(4, 3) on a batch of 2: 15 fp32 weights (60 B) x5 (weights, grads, two
    optimizer moments, the stacked copy) + its output (2x3 fp32 = 24 B) x2 (saved and its grad)."""
    from optimlab.engine.packed import pack_limit, trial_bytes

    model = nn.Sequential(nn.Linear(4, 3))
    state = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1), None, None)
    assert trial_bytes(state, (4,), batch_size=2) == 5 * 60 + 2 * 24
    assert trial_bytes(state, (4,), batch_size=8) == 5 * 60 + 2 * 96
    assert pack_limit(per_trial=100, free=1000) == 8  # 80 % of the free memory
    assert pack_limit(per_trial=10**9, free=1) == 1  # a lone trial trains anyway
