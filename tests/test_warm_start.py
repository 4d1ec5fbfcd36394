"""``hydra.sweeper.warm_start``: a new study first trains the best ``warm_start_k`` trials of an
earlier one (its sweep folder, or ``<storage URL>#<study name>``) that fit its search space;
resuming never enqueues again; a bad source is one line, exit 2, before anything is written.
Real multiruns of train.py on digits, in this process."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import train_cli
from optuna.trial import TrialState

from optimlab.sweeping.warm_start import WARM_START, WARM_START_OF

TINY = ["model=lenet", "data=digits", "data.image_size=16", "+data.limit=384", "epochs=1", "data.val_size=100",
        "batch_size=64", "tensorboard=false", "quiet=true", "plots=false", "checkpoint.every=0"]  # fmt: skip


def args(name: str, *extra: str, lr: str = "interval(0.01,0.15)", n_trials: int = 4) -> list[str]:
    return ["-m", "hydra/sweeper=optimlab", f"hydra.sweep.dir=multirun/{name}", f"hydra.sweeper.study_name={name}",
            *TINY, f"lr={lr}", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.plots=false",
            f"hydra.sweeper.n_trials={n_trials}", *extra]  # fmt: skip


def load(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root}/multirun/{name}/optuna.db")


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def ranked(study: optuna.Study) -> list:
    """COMPLETE trials, best first (maximize val_acc), ties to the earlier trial."""
    return sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Sweep A: 3 finished trials over lr in [0.01, 0.15] (study a in multirun/a/optuna.db)."""
    root = tmp_path_factory.mktemp("source")
    ok(train_cli(*args("a", n_trials=3), cwd=root))
    return root


@pytest.fixture
def root(source, tmp_path) -> Path:
    shutil.copytree(source / "multirun", tmp_path / "multirun")
    return tmp_path


def check_seeded(root: Path, k: int, n_trials: int, skip=lambda t: False) -> optuna.Study:
    a, b = load(root, "a"), load(root, "b")
    expected = [t for t in ranked(a) if not skip(t)][:k]
    k = len(expected)
    assert k >= 1
    trials = sorted(b.get_trials(), key=lambda t: t.number)
    assert [t.params for t in trials[:k]] == [t.params for t in expected]
    assert [t.user_attrs[WARM_START_OF] for t in trials[:k]] == [t.number for t in expected]
    assert all(WARM_START_OF not in t.user_attrs for t in trials[k:])
    assert sum(t.state == TrialState.COMPLETE for t in trials) == n_trials == len(trials)
    record = b.user_attrs[WARM_START]
    assert record["study"] == "a" and [r["number"] for r in record["trials"]] == [t.number for t in expected]
    return b


def test_a_new_study_first_trains_the_best_k_trials_of_a_sweep_folder_and_never_again(root):
    command = args("b", "hydra.sweeper.warm_start=multirun/a", "hydra.sweeper.warm_start_k=2", n_trials=3)
    proc = train_cli(*command, cwd=root)
    ok(proc)
    assert "Warm start from " in proc.stderr + proc.stdout
    b = check_seeded(root, k=2, n_trials=3)
    assert b.user_attrs[WARM_START]["source"] == f"{root / 'multirun/a'}#a"
    with open(root / "multirun/b/trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r[WARM_START_OF] for r in rows] == [str(t.user_attrs.get(WARM_START_OF, "")) for t in b.get_trials()]

    before = [(t.number, t.params) for t in load(root, "b").get_trials()]
    again = train_cli(*command, cwd=root)  # the same command: the study is complete and was seeded once
    ok(again)
    assert "left aside: study b has 3 trial(s) already (it was warm-started from" in again.stderr + again.stdout
    assert [(t.number, t.params) for t in load(root, "b").get_trials()] == before
    more = train_cli(*args("b", "hydra.sweeper.warm_start=multirun/a", n_trials=4), cwd=root)  # resumed to 4
    ok(more)
    after = load(root, "b").get_trials()
    assert [(t.number, t.params) for t in after[:3]] == before and len(after) == 4
    assert WARM_START_OF not in after[3].user_attrs


def test_a_storage_url_and_study_name_seed_a_new_study(root):
    url = f"sqlite:///{root}/multirun/a/optuna.db"
    # Hydra's override grammar reads `#` only inside quotes
    ok(train_cli(*args("b", f"hydra.sweeper.warm_start='{url}#a'", "hydra.sweeper.warm_start_k=2", n_trials=2), cwd=root))
    check_seeded(root, k=2, n_trials=2)


def test_a_source_trial_outside_the_new_search_space_is_skipped(root):
    best = ranked(load(root, "a"))[0]
    bound = best.params["lr"] * 0.999  # the new space ends just below A's best lr
    proc = train_cli(*args("b", "hydra.sweeper.warm_start=multirun/a", "hydra.sweeper.warm_start_k=2",
                           lr=f"interval(0.01,{bound})", n_trials=2), cwd=root)  # fmt: skip
    ok(proc)
    b = check_seeded(root, k=2, n_trials=2, skip=lambda t: t.params["lr"] > bound)
    assert b.user_attrs[WARM_START]["skipped"] >= 1
    assert "better trial(s) skipped: params outside this sweep's search space" in proc.stderr + proc.stdout


def two_studies(root: Path) -> str:
    url = f"sqlite:///{root}/two.db"
    for name in ("x", "y"):
        optuna.create_study(study_name=name, storage=url)
    return url


def failed_only(root: Path) -> str:
    url = f"sqlite:///{root}/failed.db"
    study = optuna.create_study(study_name="f", storage=url)
    study.tell(study.ask(), state=TrialState.FAIL)
    return url


BAD = {
    "missing_folder": (lambda root: "hydra.sweeper.warm_start=multirun/nowhere", "there is no folder"),
    "no_study_in_folder": (lambda root: (root / "empty").mkdir() or "hydra.sweeper.warm_start=empty",
                           "holds no optimlab study"),
    "no_such_study": (lambda root: f"hydra.sweeper.warm_start='sqlite:///{root}/multirun/a/optuna.db#zz'",
                      "has no study 'zz' (studies: a); add #<study name>"),
    "several_studies": (lambda root: f"hydra.sweeper.warm_start={two_studies(root)}",
                        "holds 2 studies (studies: x, y); add #<study name>"),
    "no_complete_trial": (lambda root: f"hydra.sweeper.warm_start={failed_only(root)}",
                          "study 'f' has no COMPLETE trial to start from (1 trial(s))"),
    "k_below_one": (lambda root: "hydra.sweeper.warm_start_k=0", "hydra.sweeper.warm_start_k=0: must be an integer >= 1"),
}  # fmt: skip


def test_a_bad_source_is_one_line_exit_2_and_writes_nothing(root):
    for case, (given, words) in BAD.items():
        extra = given(root)
        k = [] if "warm_start_k" in extra else ["hydra.sweeper.warm_start_k=2"]
        proc = train_cli(*args("b", extra, *k), cwd=root)
        out = proc.stdout + proc.stderr
        lines = [line for line in out.splitlines() if line.startswith("Error: ")]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in out, (case, out[-3000:])
        assert words in lines[0] and "hydra.sweeper.warm_start" in lines[0], (case, lines[0])
        assert not (root / "multirun/b").exists(), case


def test_a_multi_objective_source_gives_its_pareto_front_in_the_new_space(tmp_path):
    from types import SimpleNamespace

    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from optimlab.sweeping import warm_start

    url = f"sqlite:///{tmp_path}/mo.db"
    source = optuna.create_study(study_name="mo", storage=url, directions=["maximize", "minimize"])
    dists = {"lr": FloatDistribution(0.001, 10.0, log=True), "opt": CategoricalDistribution(["sgd", "adam"])}
    points = [(0.9, 5.0, 0.1, "sgd"), (0.8, 1.0, 0.2, "adam"), (0.7, 9.0, 0.3, "sgd"), (0.95, 7.0, 2.0, "sgd")]
    for acc, cost, lr, opt in points:  # trial 2 is dominated by trial 0; trial 3's lr is outside the new space
        source.add_trial(optuna.trial.create_trial(params={"lr": lr, "opt": opt}, distributions=dists, values=[acc, cost]))
    new_space = {"lr": FloatDistribution(0.01, 0.5, log=True)}  # opt is not searched any more
    settings = SimpleNamespace(warm_start=f"{url}#mo", warm_start_k=3, n_trials=10, sampler=None, study_name="new")
    seed = warm_start.plan(settings, f"sqlite:///{tmp_path}/new.db", new_space)
    assert seed.trials == [(0, {"lr": 0.1}), (1, {"lr": 0.2})] and seed.skipped == 1  # best first by accuracy
    assert not (tmp_path / "new.db").exists()
