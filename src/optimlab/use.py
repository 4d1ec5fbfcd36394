"""Use a trained run: evaluate it (``optimlab-eval``), predict images (``optimlab-predict``),
or load its model in Python (:func:`optimlab.load`).

    optimlab-eval outputs/2026-01-31/12-00-00_ab12cd                    # the test split again
    optimlab-eval outputs/.../12-00-00_ab12cd split=val weights=last    # another split, the last epoch's weights
    optimlab-eval outputs/.../12-00-00_ab12cd data=image_folder data.root=~/more_pets
    optimlab-predict outputs/.../12-00-00_ab12cd ~/photos               # -> predictions.csv

The model is the run's own: its class and arguments from the config it trained with (saved
with its weights), built with ``hydra.utils.instantiate``; its weights are the best epoch's
(``best.pt``) unless ``weights=last`` (``checkpoint.pt``). Images are prepared as training
prepared them (:class:`optimlab.engine.inference.Preprocess`: channels, size and the
normalisation the run applied, recorded with its weights). ``optimlab-eval``'s data comes
from the run's saved config with the command line's overrides on top, composed by Hydra from
optimlab's ``conf/`` exactly as ``resume=`` composes them
(:func:`optimlab.run.resume.effective_config`), and loaded by the engine's own loaders.

Each refuses in one line (exit 2): a folder without weights, data or images of another
shape or number of channels than the model takes, an unknown key.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from optimlab.errors import CheckpointError, ConfigError, DataError, OptimlabError, StorageError

log = logging.getLogger("optimlab.use")

PREDICTIONS_CSV = "predictions.csv"  # optimlab-predict's default output, in the current folder
PREDICTION_COLUMNS = ("file", "class", "probability")
SPLITS = ("test", "val", "train")
EVAL_KEYS = ("split", "weights")  # optimlab-eval's own key=value arguments, not config keys
SAME_EVAL = ("split", "weights", "overrides")  # an eval.json entry replaces an earlier one that agrees on these


@dataclass
class Loaded:
    """A trained run's model, ready to use (:func:`load`).

    ``model``: the ``nn.Module`` in eval mode on ``device``; ``transform``: image (path, PIL
    image or uint8 tensor) -> the normalised tensor the model takes (``transform.batch`` for
    several); ``classes``: a name per output; ``weights``/``epoch``: which weights these are
    (``best``: the best validation epoch's, ``last``); ``config``: the config it trained with."""

    model: torch.nn.Module
    transform: Any  # optimlab.engine.inference.Preprocess
    classes: list[str]
    weights: str
    epoch: int
    device: torch.device
    run_dir: Path
    config: DictConfig

    def predict(self, images) -> list[tuple[str, float]]:
        """(class name, probability) of the most likely class of each image (a list of paths,
        images or arrays; one path alone is one image)."""
        from optimlab.engine.inference import probabilities

        if isinstance(images, (str, Path)):
            images = [images]
        probs = probabilities(self.model, self.transform.batch(list(images)))
        top, index = probs.max(dim=1)
        return [(self.classes[int(i)], float(p)) for p, i in zip(top, index)]


def _inputs(found: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """What the model takes: as recorded with its weights; for weights saved before that was
    recorded, from the config when it fixes the normalisation."""
    if found.get("inputs"):
        return found["inputs"]
    data = cfg.data
    if data.normalize and (data.get("mean") is None or data.get("std") is None):
        raise CheckpointError("the weights do not record the normalisation the run applied (the training split's "
                              "statistics: data.mean=null); train the run again to use it")  # fmt: skip
    mean, std = (list(data.mean), list(data.std)) if data.normalize else ([0.0], [1.0])
    return {"channels": data.channels, "image_size": data.image_size, "num_classes": data.num_classes,
            "mean": mean, "std": std, "classes": [str(i) for i in range(data.num_classes)], "data": data.name}  # fmt: skip


def _folder(run_dir: str | Path):
    from optimlab.run.folder import RunFolder, is_sweep_folder

    path = Path(run_dir).expanduser()  # RunFolder.weights says when it is no folder
    if is_sweep_folder(path):
        raise ConfigError(f"{run_dir} is a sweep's folder: give one of its trials' folders ({path}/<trial>)")
    return RunFolder(path, create=False)


def _model(found: dict[str, Any], cfg: DictConfig, device: torch.device, where: Path) -> torch.nn.Module:
    from hydra.utils import instantiate

    model = instantiate(cfg.model)
    try:
        model.load_state_dict(found["model"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"the {found['weights']} weights in {where} do not fit its model {cfg.model._target_} ({first})") from None
    return model.to(device).eval()


def load(run_dir: str | Path, weights: str | None = None, device: str = "cpu", convert: bool = False) -> Loaded:
    """The trained model of ``run_dir`` and how to prepare its inputs, as a :class:`Loaded`.

    ``weights``: ``best`` (best.pt), ``last`` (checkpoint.pt), None: best when kept, else last.
    ``device``: cpu, cuda, mps or auto. ``convert``: convert colour/grayscale images to the
    model's kind instead of refusing them. A folder without weights raises CheckpointError."""
    from optimlab.config import resolvers
    from optimlab.engine.devices import resolve_device
    from optimlab.engine.inference import Preprocess

    resolvers.register()
    folder = _folder(run_dir)
    found = folder.weights(weights)
    cfg = OmegaConf.create(found["config"])
    inputs = _inputs(found, cfg)
    target = resolve_device(device)
    transform = Preprocess(int(inputs["channels"]), int(inputs["image_size"]), tuple(inputs["mean"]),
                           tuple(inputs["std"]), convert=convert)  # fmt: skip
    return Loaded(_model(found, cfg, target, folder.path), transform, list(inputs["classes"]), found["weights"],
                  int(found["epoch"]), target, folder.path, cfg)  # fmt: skip


# --------------------------------------------------------------------------- optimlab-eval


def _split_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """optimlab-eval's own ``split=``/``weights=`` arguments, and the config overrides."""
    own, overrides = {}, []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key in EVAL_KEYS:
            own[key] = value
        else:
            overrides.append(arg)
    split = own.get("split", SPLITS[0])
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not valid: must be one of {', '.join(SPLITS)}")
    return own, overrides


def _compose(overrides: list[str]) -> DictConfig:
    """Hydra's composition of optimlab's conf/ with ``overrides`` (what train.py would compose)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from optimlab.config import CONFIG_DIR, CONFIG_NAME

    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return compose(CONFIG_NAME, overrides=overrides)
    except HydraException as e:
        raise ConfigError(f"cannot apply {' '.join(overrides)}: {str(e).strip().splitlines()[0]}") from None


def eval_config(trained: DictConfig, inputs: dict[str, Any], overrides: list[str]) -> DictConfig:
    """The run's config (resolved, as saved with its weights) with ``overrides`` on top, checked against what the model takes; its
    data normalised as the run's training data was."""
    from optimlab.config import validate
    from optimlab.run.resume import effective_config

    cfg = effective_config(trained, _compose(overrides), overrides) if overrides else trained.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.resume = None  # an evaluation trains nothing: no training batch to fit either (it
    cfg.batch_size = 1  # evaluates in eval_batch_size batches), so a small folder of other images is fine
    cfg.model = trained.model  # the trained model, whatever the data says
    got = (cfg.data.channels, cfg.data.image_size)
    want = (int(inputs["channels"]), int(inputs["image_size"]))
    if got != want:
        raise DataError(f"data={cfg.data.name} has {got[0]}-channel {got[1]}×{got[1]} images but the run's model takes "
                        f"{want[0]}-channel {want[1]}×{want[1]} images: set data.channels={want[0]} "
                        f"data.image_size={want[1]}")  # fmt: skip
    if cfg.data.num_classes > int(inputs["num_classes"]):
        raise DataError(f"data={cfg.data.name} has data.num_classes={cfg.data.num_classes} but the run's model "
                        f"tells {inputs['num_classes']} classes apart")  # fmt: skip
    cfg.data.normalize, cfg.data.mean, cfg.data.std = True, list(inputs["mean"]), list(inputs["std"])
    validate(cfg)
    return cfg


def evaluate_run(run_dir: str | Path, args: list[str] = ()) -> dict[str, Any]:
    """Evaluate the run's model on a split (``split=test`` by default) of its data, or of the
    data the ``args`` overrides name; the entry added to the run folder's eval.json."""
    from optimlab.engine.devices import resolve_device, resolve_precision
    from optimlab.engine.training import LoopConfig, evaluate
    from optimlab.run.provenance import now_iso
    from optimlab.run.runner import load_data

    own, overrides = _split_args(list(args))
    folder = _folder(run_dir)
    found = folder.weights(own.get("weights"))
    trained = OmegaConf.create(found["config"])
    inputs = _inputs(found, trained)
    cfg = eval_config(trained, inputs, overrides)
    device = resolve_device(cfg.device.type)
    precision = resolve_precision(cfg.precision, device)
    data = load_data(cfg, device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = _model(found, cfg, device, folder.path).to(memory_format=memory_format)
    loop = LoopConfig(epochs=1, batch_size=cfg.batch_size, seed=cfg.seed, precision=precision,
                      eval_batch_size=cfg.eval_batch_size)  # fmt: skip
    split = own.get("split", SPLITS[0])
    _labels_by_name(data, split, list(inputs["classes"]))
    loss, acc = evaluate(model, data, split, loop)
    entry = {"split": split, "weights": found["weights"], "epoch": int(found["epoch"]), "overrides": overrides,
             "data": str(cfg.data.name), "images": len(getattr(data, split)), "loss": loss, "acc": acc,
             "device": str(device), "precision": precision, "at": now_iso()}  # fmt: skip
    written = folder.add_eval(entry, same=SAME_EVAL)
    return {**entry, "written": str(written)}


def _labels_by_name(data, split: str, classes: list[str]) -> None:
    """Other data that names its classes (an image folder's sub-folders) is scored by name:
    its folder ``7`` is the run's class ``7``, whatever its position among the folders."""
    from optimlab.engine.data import Split

    names = [str(c) for c in data.classes or ()]
    if not names or names == classes[: len(names)]:
        return
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DataError(f"the data's classes {unknown} are not among the run's classes {classes}: "
                        f"name each class folder after one of the run's classes")  # fmt: skip
    part = getattr(data, split)
    to_run = torch.tensor([classes.index(n) for n in names], device=part.y.device)
    setattr(data, split, Split(part.x, to_run[part.y]))


# --------------------------------------------------------------------------- optimlab-predict


def predict(run_dir: str | Path, target: str | Path, out: str | Path = PREDICTIONS_CSV, weights: str | None = None,
            device: str = "cpu", convert: bool = False) -> Path:  # fmt: skip
    """Predict the image ``target`` (or every image under the folder ``target``) with the run's
    model; writes ``out`` (CSV: file, class, probability; files relative to the folder) atomically."""
    from optimlab.engine.inference import image_files, probabilities
    from optimlab.files import atomic_write_text

    loaded = load(run_dir, weights=weights, device=device, convert=convert)
    target = Path(target).expanduser()
    files = image_files(target)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for start in range(0, len(files), 256):
        chunk = files[start : start + 256]
        top, index = probabilities(loaded.model, loaded.transform.batch(chunk)).max(dim=1)
        for path, p, i in zip(chunk, top.tolist(), index.tolist()):
            writer.writerow([path.relative_to(target) if target.is_dir() else path, loaded.classes[i], repr(p)])
    out = Path(out).expanduser()
    if out.is_dir():  # --out <folder>: the CSV goes into it
        out = out / PREDICTIONS_CSV
    try:
        atomic_write_text(out, buf.getvalue())
    except OSError as e:
        raise StorageError.of(out, e) from e
    log.info("%d predictions (%s epoch %d weights of %s) -> %s", len(files), loaded.weights, loaded.epoch,
             loaded.run_dir, out)  # fmt: skip
    return out


# --------------------------------------------------------------------------- console scripts


def _main(run, argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(argv)
    except OptimlabError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def _eval(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="optimlab-eval", description="Evaluate a trained run; adds to <run>/eval.json.")
    parser.add_argument("run_dir", help="the run folder (outputs/... or multirun/.../<trial>)")
    parser.add_argument("overrides", nargs="*", help="split=test|val|train, weights=best|last, config overrides "
                        "(data=..., data.root=..., device=cpu)")  # fmt: skip
    args = parser.parse_args(argv)
    entry = evaluate_run(args.run_dir, args.overrides)
    split = entry["split"]
    print(f"{split}_loss {entry['loss']:.4f}  {split}_acc {entry['acc']:.4f}  ({entry['weights']} epoch {entry['epoch']} "
          f"weights; data {entry['data']}, {entry['images']} images) -> {entry['written']}")  # fmt: skip


def _predict(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="optimlab-predict", description="Predict images with a trained run's model.")
    parser.add_argument("run_dir", help="the run folder (outputs/... or multirun/.../<trial>)")
    parser.add_argument("images", help="an image file, or a folder of images (searched recursively)")
    parser.add_argument("--out", default=PREDICTIONS_CSV, help=f"the CSV to write, or a folder to write {PREDICTIONS_CSV} "
                        f"into (default: ./{PREDICTIONS_CSV})")  # fmt: skip
    parser.add_argument("--weights", choices=("best", "last"), default=None, help="default: best when kept, else last")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--convert", action="store_true", help="convert colour/grayscale images to the model's kind")
    args = parser.parse_args(argv)
    predict(args.run_dir, args.images, out=args.out, weights=args.weights, device=args.device, convert=args.convert)


def eval_main(argv: list[str] | None = None) -> None:
    """``optimlab-eval <run folder> [split=...] [weights=...] [overrides]``."""
    sys.exit(_main(_eval, argv))


def predict_main(argv: list[str] | None = None) -> None:
    """``optimlab-predict <run folder> <image file or folder> [--out predictions.csv]``."""
    sys.exit(_main(_predict, argv))
