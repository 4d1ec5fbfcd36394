"""Using a trained run: ``optimlab-eval`` (a split of the run's data, or of other data),
``optimlab-predict`` (a folder of real PNG files -> predictions.csv) and ``optimlab.load``;
each refuses a folder without weights and images or data of the wrong kind in one line."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import optimlab
from conftest import compose_config
from optimlab.errors import CheckpointError, ConfigError, DataError
from optimlab.run.runner import load_data, run
from optimlab.use import eval_main, predict_main

# 384 digits at 16×16, two epochs of a small LeNet: a real run folder in seconds
DIGITS = ["data=digits", "data.image_size=16", "+data.limit=384", "model=lenet", "optimizer=adam", "lr=1e-2",
          "batch_size=16", "epochs=2", "logger=none", "quiet=true", "plots=false", "tensorboard=false"]  # fmt: skip
TRAINING_FILES = ("summary.json", "metrics.csv", "checkpoint.pt", "best.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run folder, its summary, the test split's uint8 images and labels)."""
    root = tmp_path_factory.mktemp("use")
    cfg = compose_config(DIGITS)
    run(cfg, str(root / "run"))
    test = load_data(cfg, torch.device("cpu")).test
    return root / "run", json.loads((root / "run" / "summary.json").read_text()), test.x, test.y


def write_pngs(folder: Path, images: torch.Tensor, labels: torch.Tensor | None = None) -> list[Path]:
    """Each uint8 (1, H, W) image as a grayscale PNG (in a class folder when ``labels`` are given)."""
    paths = []
    for i, image in enumerate(images):
        where = folder / str(int(labels[i])) if labels is not None else folder
        where.mkdir(parents=True, exist_ok=True)
        paths.append(where / f"{i:03d}.png")
        Image.fromarray(image[0].numpy(), mode="L").save(paths[-1])
    return paths


def one_line_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    return lines[0]


def digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in TRAINING_FILES}


def test_eval_gives_the_summarys_test_figures_and_writes_eval_json(trained, capsys):
    folder, summary, _, _ = trained
    before = digests(folder)
    with pytest.raises(SystemExit) as done:
        eval_main([str(folder)])
    assert done.value.code == 0
    out = capsys.readouterr().out
    test = summary["test"]
    assert f"test_acc {test['acc']:.4f}" in out and f"(best epoch {test['epoch']} weights" in out, out
    (entry,) = json.loads((folder / "eval.json").read_text())["evaluations"]
    assert (entry["split"], entry["weights"], entry["epoch"]) == ("test", "best", test["epoch"])
    assert (entry["loss"], entry["acc"], entry["images"]) == (test["loss"], test["acc"], 360)
    # another split and the last weights: the last epoch's validation figures in metrics.csv
    with pytest.raises(SystemExit):
        eval_main([str(folder), "split=val", "weights=last"])
    with open(folder / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    entries = json.loads((folder / "eval.json").read_text())["evaluations"]
    assert len(entries) == 2 and entries[0] == entry  # the first entry stays
    assert (entries[1]["loss"], entries[1]["acc"]) == (float(last["val_loss"]), float(last["val_acc"]))
    assert digests(folder) == before  # training's own files are never touched


def test_eval_on_other_data_of_the_same_shape(trained, tmp_path, capsys):
    """The digits test images as a folder of PNGs (data=image_folder): the run's test figures."""
    folder, summary, x, y = trained
    write_pngs(tmp_path / "pngs" / "test", x, y)
    write_pngs(tmp_path / "pngs" / "train", x[:40].flip(-1), torch.arange(40) % 10)  # every class has a train folder
    with pytest.raises(SystemExit):
        eval_main([str(folder), "data=image_folder", f"data.root={tmp_path / 'pngs'}", "data.channels=1",
                   "data.image_size=16", "data.val_size=10"])  # fmt: skip
    entry = json.loads((folder / "eval.json").read_text())["evaluations"][-1]
    assert entry["data"] == "image_folder" and entry["images"] == 360
    assert entry["acc"] == pytest.approx(summary["test"]["acc"]) and entry["loss"] == pytest.approx(summary["test"]["loss"])
    # a data entry whose images do not fit the model: one line, nothing evaluated
    line = one_line_error(eval_main, [str(folder), "data.channels=3"], capsys)
    assert "3-channel 16×16 images but the run's model takes 1-channel 16×16 images" in line


def test_eval_on_a_folder_of_some_classes_scores_them_by_name(trained, tmp_path, capsys):
    """Folders `3` and `7` alone are the run's classes 3 and 7 (not labels 0 and 1), and a
    train part smaller than the run's batch_size is no reason to refuse: nothing trains."""
    folder, _, x, y = trained
    keep = (y == 3) | (y == 7)
    write_pngs(tmp_path / "some" / "test", x[keep], y[keep])
    write_pngs(tmp_path / "some" / "train", x[keep][:4], y[keep][:4])  # fewer images than batch_size=16
    args = [str(folder), "data=image_folder", f"data.root={tmp_path / 'some'}", "data.channels=1",
            "data.image_size=16", "data.num_classes=2", "data.val_size=1"]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        eval_main(args)
    assert done.value.code == 0, capsys.readouterr().err
    entry = json.loads((folder / "eval.json").read_text())["evaluations"][-1]
    loaded = optimlab.load(folder)
    with torch.inference_mode():
        hits = loaded.model(loaded.transform.batch(list(x[keep]))).argmax(1) == y[keep]
    assert entry["images"] == int(keep.sum()) and entry["acc"] == pytest.approx(hits.float().mean().item())
    assert entry["acc"] > 0.5  # by name: the model's own digits, not labels 0 and 1
    for part in ("test", "train"):  # another folder (the data cache keys on the entry): class 7 renamed
        shutil.copytree(tmp_path / "some" / part, tmp_path / "other" / part)
        (tmp_path / "other" / part / "7").rename(tmp_path / "other" / part / "cat")
    args[2] = f"data.root={tmp_path / 'other'}"
    assert "classes ['cat'] are not among the run's classes" in one_line_error(eval_main, args, capsys)


def test_load_gives_the_model_in_eval_mode_and_its_preprocessing(trained):
    folder, summary, x, y = trained
    loaded = optimlab.load(folder)
    assert (loaded.weights, loaded.epoch) == ("best", summary["test"]["epoch"]) and not loaded.model.training
    assert loaded.classes == [str(i) for i in range(10)]
    # the transform normalises as training did: the same tensors the loop evaluated
    data = load_data(compose_config(DIGITS), torch.device("cpu"))
    batch, _ = next(data.eval_batches("test", 8))
    assert torch.allclose(loaded.transform.batch(list(x[:8])), batch, atol=1e-6)
    with torch.inference_mode():
        acc = (loaded.model(loaded.transform.batch(list(x))).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(summary["test"]["acc"])
    assert optimlab.load(folder, weights="last").epoch == 2
    with pytest.raises(DataError, match=r"^an image of shape \(3, 16, 16\): the run's model takes \(1, 16, 16\)"):
        loaded.transform(torch.zeros(3, 16, 16, dtype=torch.uint8))


@pytest.mark.slow
def test_predict_writes_the_models_argmax_for_each_png(trained, tmp_path):
    folder, summary, x, y = trained
    paths = write_pngs(tmp_path / "images", x)
    script = Path(sys.executable).parent / "optimlab-predict"
    proc = subprocess.run([str(script), str(folder), str(tmp_path / "images"), "--out", str(tmp_path / "p.csv")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "class", "probability"]
    assert [r["file"] for r in rows] == [p.name for p in paths]
    expected = optimlab.load(folder).predict(paths)
    assert [r["class"] for r in rows] == [c for c, _ in expected]
    assert [float(r["probability"]) for r in rows] == pytest.approx([p for _, p in expected], rel=1e-5)
    accuracy = np.mean([r["class"] == str(int(label)) for r, label in zip(rows, y)])
    assert accuracy == pytest.approx(summary["test"]["acc"])  # the best weights' test accuracy, from the PNGs


def test_refusals_are_one_line(trained, tmp_path, capsys):
    folder, _, x, _ = trained
    empty = tmp_path / "killed"  # a run folder stopped before its first epoch: no weights
    empty.mkdir()
    (empty / "summary.json").write_text('{"status": "failed"}')
    for main, argv in ((eval_main, [str(empty)]), (predict_main, [str(empty), str(tmp_path)])):
        assert "holds no weights (neither best.pt nor checkpoint.pt)" in one_line_error(main, argv, capsys)
    with pytest.raises(CheckpointError, match="holds no weights"):
        optimlab.load(empty)
    assert "does not exist" in one_line_error(eval_main, [str(tmp_path / "nowhere")], capsys)
    assert "is a file, not a run folder" in one_line_error(eval_main, [str(folder / "best.pt")], capsys)
    # a colour image for a grayscale model: one line, unless --convert
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.repeat(x[0, 0].numpy()[:, :, None], 3, axis=2), mode="RGB").save(rgb)
    line = one_line_error(predict_main, [str(folder), str(rgb), "--out", str(tmp_path / "p.csv")], capsys)
    assert f"image {rgb} is colour (mode RGB) but the run's model takes grayscale (1 channel) images" in line
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(SystemExit) as done:
        predict_main([str(folder), str(rgb), "--out", str(tmp_path / "p.csv"), "--convert"])
    assert done.value.code == 0 and len((tmp_path / "p.csv").read_text().splitlines()) == 2
    # --out a folder: the CSV goes into it; a path that cannot be written is one line
    (tmp_path / "into").mkdir()
    with pytest.raises(SystemExit) as done:
        predict_main([str(folder), str(rgb), "--out", str(tmp_path / "into"), "--convert"])
    assert done.value.code == 0 and (tmp_path / "into" / "predictions.csv").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # under a file: no such folder can be made
        predict_main([str(folder), str(rgb), "--out", str(rgb / "p.csv"), "--convert"])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code != 0 and len(err) == 1 and err[0].startswith(f"Error: cannot write {rgb / 'p.csv'}")
    gray = optimlab.load(folder, convert=True)
    assert gray.predict(str(rgb)) == gray.predict([rgb])  # one path: one image
    assert "split='train2' is not valid" in one_line_error(eval_main, [str(folder), "split=train2"], capsys)
    assert "cannot apply" in one_line_error(eval_main, [str(folder), "data.nope=1"], capsys)
    assert issubclass(CheckpointError, ConfigError) and issubclass(DataError, ConfigError)


def test_an_image_folder_run_predicts_its_class_folder_names(tmp_path, capsys):
    from test_data import png, write_folder

    write_folder(tmp_path / "imgs", per_class=6)  # cat, dog, eel: colour images of every size
    cfg = compose_config(["data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.num_classes=3",
                          "data.val_size=3", "data.test_size=3", "data.image_size=16", "model=lenet", "batch_size=4",
                          "epochs=1", "logger=none", "quiet=true", "plots=false"])  # fmt: skip
    run(cfg, str(tmp_path / "run"))
    loaded = optimlab.load(tmp_path / "run")
    assert loaded.classes == ["cat", "dog", "eel"] and loaded.transform.shape == (3, 16, 16)
    with pytest.raises(SystemExit) as done:
        predict_main([str(tmp_path / "run"), str(tmp_path / "imgs"), "--out", str(tmp_path / "p.csv")])
    assert done.value.code == 0
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    files = sorted(str(p.relative_to(tmp_path / "imgs")) for p in (tmp_path / "imgs").rglob("*.png"))
    assert [r["file"] for r in rows] == files and len(rows) == 18
    expected = loaded.predict([tmp_path / "imgs" / f for f in files])
    assert [r["class"] for r in rows] == [c for c, _ in expected] and {r["class"] for r in rows} <= set(loaded.classes)
    png(tmp_path / "gray.png", (30, 30), mode="L")  # a grayscale image for a colour model
    line = one_line_error(predict_main, [str(tmp_path / "run"), str(tmp_path / "gray.png")], capsys)
    assert "is grayscale (mode L) but the run's model takes colour (3 channels) images" in line
