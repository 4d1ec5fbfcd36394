"""A tiny Hydra app (no torch) for sweeper tests: written into a test's folder and run as
``python app.py -m hydra/sweeper=optimlab …``, run by Hydra's own main in the test's process.

It returns ``(x + y, (x - 2)**2 + y)`` (its first ``n_values`` items, or three values for
``n_values=3``; ``n_values=1``: a float), raises for ``fail=true``, and writes the config it ran with to
``seen.json`` in its run folder.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import optuna
from conftest import run_in_process

APP = '''
import json, os
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    with open(os.path.join(HydraConfig.get().runtime.output_dir, "seen.json"), "w") as f:
        json.dump(OmegaConf.to_container(cfg), f)
    if cfg.fail:
        raise RuntimeError("asked to fail")
    values = (cfg.x + cfg.y, (cfg.x - 2) ** 2 + cfg.y, 0.0)
    return values[0] if cfg.n_values == 1 else values[: cfg.n_values]  # one objective: a float, as upstream wants

if __name__ == "__main__":
    main()
'''

CONFIG = """\
x: 0.0
y: 0
n_values: 2
fail: false
db: mysql
extra:
  a: 1
  b: 2
hydra:
  sweep:
    dir: multirun/s
"""

# a custom_search_space function: a conditional parameter, as in the upstream plugin's example
SPACE = '''
def extend(cfg, trial):
    if trial.params["x"] > 2:
        trial.suggest_float("y", 0.0, 1.0)
    else:
        trial.suggest_categorical("db", ["a", "b"])
'''


def f(x: float, y: float) -> tuple[float, float]:
    """What the app returns for (x, y)."""
    return x + y, (x - 2) ** 2 + y


def write(folder: Path, extra_files: dict[str, str] | None = None) -> Path:
    (folder / "app.py").write_text(APP)
    (folder / "config.yaml").write_text(CONFIG)
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)
    return folder / "app.py"


def run(folder: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python app.py -m hydra/sweeper=optimlab <args>`` in ``folder``."""
    if not (folder / "app.py").exists():
        write(folder)
    flags = [a for a in args if a.startswith("--")]  # --config-name=… before the overrides
    overrides = [a for a in args if not a.startswith("--")]
    seed = [] if "hydra/sweeper/sampler=grid" in args else ["hydra.sweeper.sampler.seed=0"]  # grid: no seed
    return run_in_process([*flags, "-m", "hydra/sweeper=optimlab", *seed, *overrides], cwd=folder, script="app.py")


def study(folder: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name="optimlab", storage=f"sqlite:///{folder}/multirun/{name}/optuna.db")


def seen(folder: Path, number: int, name: str = "s") -> dict:
    return json.loads((folder / "multirun" / name / f"trial_{number:04d}" / "seen.json").read_text())


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
