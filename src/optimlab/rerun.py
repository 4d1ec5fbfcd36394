"""Re-run any run from its folder: ``python -m optimlab.rerun <run folder> [key=value ...]``.

Works for a single run and for one trial of a sweep. The new run trains from scratch
into a NEW folder with exactly the config the original used — its resolved job config
(``.hydra/config.yaml``, or for a resumed run the config in its checkpoint), so later
edits of ``conf/`` do not leak in — and with Hydra's own settings of the original
(``.hydra/hydra.yaml``: run-dir pattern, job name, chdir, env, logging). Extra
``key=value`` overrides apply on top (e.g. ``seed=1`` to check a result's spread).

The new folder's ``summary.json`` records ``rerun_of``; a warning is logged when the code
(git commit, dirty flag) or library versions differ from the original's.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import shlex
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import optimlab.config  # noqa: F401  (registers the resolvers the configs use)
from optimlab.errors import ConfigError, OptimlabError
from optimlab.rundir import SUMMARY_FILE, atomic_write_text, git_info, load_checkpoint, versions

log = logging.getLogger("optimlab.rerun")

CONFIG_NAME = "optimlab_rerun"
# Hydra settings carried over from the original run (the rest are Hydra's runtime
# bookkeeping, or about sweeping, which a re-run of one run does not do).
HYDRA_JOB_KEYS = ("name", "chdir", "env_set", "env_copy", "config")
HYDRA_KEYS = ("job_logging", "hydra_logging", "verbose", "output_subdir")
HYDRA_GROUPS = ("hydra/job_logging", "hydra/hydra_logging")


def job_config(folder: Path, summary: dict[str, Any] | None) -> DictConfig:
    """The job config the run in ``folder`` trained with (interpolations kept)."""
    hydra_cfg = folder / ".hydra" / "config.yaml"
    if (summary or {}).get("resumed_from") or not hydra_cfg.is_file():
        # A resumed run's .hydra/ holds the `resume=` command's config; its checkpoint
        # holds the config it really trained with.
        ckpt = load_checkpoint(folder)
        cfg = OmegaConf.create(ckpt.get("config_yaml") or ckpt["config"])
    else:
        cfg = OmegaConf.load(hydra_cfg)
    if "resume" in cfg:
        cfg.resume = None  # a re-run always trains from scratch
    return cfg


def hydra_settings(folder: Path) -> tuple[dict[str, Any], list[str]]:
    """(``hydra`` node to carry, group overrides) from the original's .hydra/hydra.yaml."""
    path = folder / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}, []
    saved = OmegaConf.to_container(OmegaConf.load(path).hydra, resolve=False)  # patterns stay patterns
    job = saved.get("job") or {}
    node: dict[str, Any] = {"run": {"dir": (saved.get("run") or {}).get("dir")}, "job": {}}
    for key in HYDRA_JOB_KEYS:
        if key in job:
            node["job"][key] = job[key]
    # A sweep hands each trial its identity through env_set (OPTIMLAB_TRIAL_ID, ...): a
    # re-run is no trial and must not report into the study.
    env_set = node["job"].get("env_set") or {}
    node["job"]["env_set"] = {k: v for k, v in env_set.items() if not str(k).startswith("OPTIMLAB_")}
    for key in HYDRA_KEYS:
        if key in saved:
            node[key] = saved[key]
    if saved.get("mode") == "RUN" and saved.get("callbacks"):
        node["callbacks"] = saved["callbacks"]
    choices = (saved.get("runtime") or {}).get("choices") or {}
    groups = [f"{g}={choices[g]}" for g in HYDRA_GROUPS if choices.get(g)]
    return node, groups


DEFAULT_RUN_DIR = "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}_${optimlab.uid:}"


def new_run_dir(job: DictConfig, hydra_node: dict[str, Any], overrides: list[str]) -> Path:
    """Where the re-run goes: ``hydra.run.dir=...`` if given, else the original's run-dir
    pattern evaluated now (``outputs/<date>/<time>_<id>/`` by default; a fixed folder the
    original was sent to with ``hydra.run.dir=`` is not reused). Never an existing folder."""
    for override in overrides:
        if override.startswith("hydra.run.dir="):
            return Path(override.split("=", 1)[1].strip("'\"")).absolute()
    pattern = hydra_node.get("run", {}).get("dir") or DEFAULT_RUN_DIR
    if "${" not in pattern:
        pattern = DEFAULT_RUN_DIR
    try:
        from hydra.core.utils import setup_globals

        setup_globals()  # Hydra's `now` resolver

        scratch = OmegaConf.create({"hydra": {**hydra_node, "run": {"dir": pattern}}, **OmegaConf.to_container(job)})
        path = Path(str(scratch.hydra.run.dir))
    except Exception:  # a pattern that only resolves inside Hydra
        path = Path("outputs") / datetime.now().strftime(f"%Y-%m-%d/%H-%M-%S_{secrets.token_hex(3)}")
    path = path.absolute()
    if path.exists():  # a fixed pattern (hydra.run.dir=...) or the original itself
        path = path.with_name(f"{path.name}_rerun_{datetime.now().strftime('%H%M%S%f')}")
    return path


def provenance_warnings(summary: dict[str, Any] | None) -> list[str]:
    if not summary:
        return ["the original has no summary.json: cannot compare code and library versions"]
    found = []
    old_git, now_git = summary.get("git") or {}, git_info()
    if old_git.get("commit") != now_git.get("commit"):
        found.append(f"git commit differs: original {old_git.get('commit')}, now {now_git.get('commit')}")
    if old_git.get("dirty"):
        found.append("the original ran from a checkout with uncommitted changes")
    old_v, now_v = summary.get("versions") or {}, versions()
    for name in sorted(set(old_v) & set(now_v)):
        if old_v[name] != now_v[name]:
            found.append(f"{name} version differs: original {old_v[name]}, now {now_v[name]}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m optimlab.rerun",
        description="Re-run a run (single or sweep trial) from its folder into a new folder.",
    )
    parser.add_argument("run_dir", help="the run folder to re-run (outputs/... or multirun/.../<trial>)")
    parser.add_argument("overrides", nargs="*", help="key=value changes on top of the saved config")
    parser.add_argument("--print", action="store_true", help="print the composed config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")

    original = Path(args.run_dir).absolute()
    summary_path = original / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    try:
        if not original.is_dir():
            raise ConfigError(f"run folder {args.run_dir} does not exist")
        job = job_config(original, summary)
    except OptimlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        print(f"error: cannot read the config of {original}: {e}", file=sys.stderr)
        return 2
    hydra_node, groups = hydra_settings(original)
    target = new_run_dir(job, hydra_node, args.overrides)
    if target.exists() and any(target.iterdir()):
        print(f"error: {target} already exists; choose another hydra.run.dir", file=sys.stderr)
        return 2
    hydra_node.setdefault("run", {})["dir"] = str(target)
    for warning in provenance_warnings(summary):
        log.warning("rerun: %s", warning)

    with tempfile.TemporaryDirectory(prefix="optimlab-rerun-") as tmp:
        primary = OmegaConf.create({**OmegaConf.to_container(job, resolve=False), "hydra": hydra_node})
        (Path(tmp) / f"{CONFIG_NAME}.yaml").write_text(OmegaConf.to_yaml(primary))
        hydra_args = ["--config-dir", tmp, "--config-name", CONFIG_NAME, *groups, *args.overrides]
        if args.print:
            hydra_args += ["--cfg", "job"]
        log.info("rerun: %s -> %s", original, target)
        code = _run_train(hydra_args)
    if not args.print:
        _record(target, original, args)
    return code


def _run_train(hydra_args: list[str]) -> int:
    """Run optimlab's Hydra entry point in this process with ``hydra_args``."""
    from optimlab.cli import main as train_main

    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *hydra_args]
    try:
        train_main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved_argv
    return 0


def _record(target: Path, original: Path, args: argparse.Namespace) -> None:
    path = target / SUMMARY_FILE
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    summary["rerun_of"] = str(original)
    summary["command"] = shlex.join(["python", "-m", "optimlab.rerun", args.run_dir, *args.overrides])
    atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
