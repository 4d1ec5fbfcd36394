"""Dataset entries: each conf/data/*.yaml names its loader with `_target_`; torchvision's
formats (MNIST idx, CIFAR-100 pickles, SVHN .mat) read from tiny real files; a folder of
PNGs; a user's own loader; and one-line errors for bad inputs, before any training."""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF_DIR, compose_config, run_dirs, train_cli
from optimlab.config.checks import validate
from optimlab.engine import data as datasets
from optimlab.errors import ConfigError, DataError
from optimlab.run.runner import run

FAST = ["batch_size=8", "epochs=1", "tensorboard=false", "quiet=true", "plots=false", "checkpoint.every=0",
        "model=lenet"]  # fmt: skip


def train(tmp_path: Path, overrides: list[str]) -> dict:
    cfg = compose_config([*overrides, *FAST])
    validate(cfg)
    run(cfg, str(tmp_path / "run"))
    return json.loads((tmp_path / "run" / "summary.json").read_text())


def test_every_data_entry_names_an_importable_loader():
    for path in sorted((CONF_DIR / "data").glob("*.yaml")):
        entry = OmegaConf.load(path)
        if path.stem == "custom":  # the user names the loader
            assert OmegaConf.is_missing(entry, "_target_")
            continue
        loader = datasets.loader_of(entry._target_)
        assert callable(loader), path.name
        assert entry.name == path.stem, path.name


# --------------------------------------------------------------------------- MNIST idx


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file as LeCun's MNIST distribution has them (big-endian dims, uint8 data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_tiny_mnist(root: Path, folder: str = "MNIST", n_train: int = 40, n_test: int = 16) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return raw


@pytest.mark.parametrize("entry,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats_read_and_train(tmp_path, entry, folder):
    raw = write_tiny_mnist(tmp_path / "d", folder)
    overrides = [f"data={entry}", f"data.root={tmp_path / 'd'}", "data.download=false", "data.val_size=8"]
    splits = datasets.load(compose_config(overrides).data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (32, 8, 16)
    assert splits.test.x.dtype == torch.uint8 and splits.test.x.shape[1:] == (1, 32, 32)  # resized 28 -> 32
    # the labels are the file's, in order (the test split is not shuffled)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8)
    assert splits.test.y.tolist() == labels.tolist()
    # at its own size the pixels are the file's bytes
    native = datasets.load(compose_config([*overrides, "data.image_size=28"]).data)
    pixels = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8).reshape(-1, 28, 28)
    assert torch.equal(native.test.x[:, 0], torch.from_numpy(pixels.copy()))
    three = datasets.load(compose_config([*overrides, "data.channels=3"]).data)
    assert three.train.x.shape[1] == 3 and torch.equal(three.train.x[:, 0], three.train.x[:, 2])

    summary = train(tmp_path, overrides)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1


def test_mnist_offline_fails_fast_in_one_line(tmp_path):
    cfg = compose_config(["data=mnist", f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(DataError) as e:
        datasets.load(cfg.data)
    msg = str(e.value)
    assert "\n" not in msg and "MNIST is not in" in msg and "train-images-idx3-ubyte" in msg and "data=digits" in msg


# --------------------------------------------------------------------------- CIFAR-100


def write_tiny_cifar100(root: Path, n_train: int = 30, n_test: int = 10) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        entry = {  # the keys of the real files (bytes keys are decoded by encoding="latin1" as str)
            "filenames": [f"{name}_{i}.png" for i in range(n)],
            "batch_label": f"{name} batch",
            "fine_labels": rng.integers(0, 100, n).tolist(),
            "coarse_labels": rng.integers(0, 20, n).tolist(),
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:  # the class names, as the real file holds them
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": []}, f)
    return folder


def test_cifar100_reads_fine_labels_and_trains(tmp_path):
    folder = write_tiny_cifar100(tmp_path / "c")
    overrides = ["data=cifar100", f"data.root={tmp_path / 'c'}", "data.download=false", "data.val_size=6"]
    splits = datasets.load(compose_config(overrides).data)
    with open(folder / "test", "rb") as f:
        raw = pickle.load(f)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 10)
    assert splits.test.y.tolist() == raw["fine_labels"]
    assert splits.classes == tuple(f"class{i}" for i in range(100))  # from the meta file
    assert torch.equal(splits.test.x[3, 1].flatten(), torch.from_numpy(raw["data"][3, 1024:2048]))  # green plane
    summary = train(tmp_path, overrides)
    assert summary["status"] == "completed"


def test_cifar100_needs_100_classes():
    with pytest.raises(ConfigError, match=r"data.num_classes=10 is not valid: must be >= 100 for data=cifar100"):
        validate(compose_config(["data=cifar100", "data.num_classes=10"]))


# --------------------------------------------------------------------------- SVHN


def write_tiny_svhn(root: Path, n_train: int = 30, n_test: int = 10) -> dict:
    sio = pytest.importorskip("scipy.io")
    root.mkdir(parents=True)
    rng = np.random.default_rng(2)
    written = {}
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # SVHN's layout: H, W, C, N
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # labels 1..10, 10 is the digit 0
        sio.savemat(str(root / name), {"X": x, "y": y})
        written[name] = (x, y)
    return written


def test_svhn_reads_the_mat_format_and_trains(tmp_path):
    written = write_tiny_svhn(tmp_path / "s")
    overrides = ["data=svhn", f"data.root={tmp_path / 's'}", "data.download=false", "data.val_size=6"]
    splits = datasets.load(compose_config(overrides).data)
    x, y = written["test_32x32.mat"]
    assert splits.test.x.shape == (10, 3, 32, 32)
    assert splits.test.y.tolist() == [0 if v == 10 else int(v) for v in y[:, 0]]
    # torchvision's transpose (3, 2, 0, 1): (H, W, C, N) -> (N, C, H, W)
    assert torch.equal(splits.test.x[4], torch.from_numpy(x[:, :, :, 4].transpose(2, 0, 1).copy()))
    summary = train(tmp_path, overrides)
    assert summary["status"] == "completed"


def test_svhn_offline_fails_fast(tmp_path):
    with pytest.raises(DataError, match=r"SVHN is not in .*train_32x32.mat.*data.download=false"):
        datasets.load(compose_config(["data=svhn", f"data.root={tmp_path}", "data.download=false"]).data)


def test_corrupt_mnist_and_svhn_files_are_one_line_errors(tmp_path):
    raw = write_tiny_mnist(tmp_path / "m")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    msg = _error(["data=mnist", f"data.root={tmp_path / 'm'}", "data.download=false", "data.val_size=4"])
    assert msg.startswith(f"MNIST files in {raw} are corrupt or not in the idx format") and "download them again" in msg
    write_tiny_svhn(tmp_path / "s")
    (tmp_path / "s" / "test_32x32.mat").write_bytes(b"MATLAB? no")
    msg = _error(["data=svhn", f"data.root={tmp_path / 's'}", "data.download=false", "data.val_size=6"])
    assert msg.startswith(f"SVHN file {tmp_path / 's' / 'test_32x32.mat'} is corrupt") and "download it again" in msg


# --------------------------------------------------------------------------- image folder


def png(path: Path, size: tuple[int, int], mode: str = "RGB", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def write_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 8) -> None:
    for c, name in enumerate(classes):
        for i in range(per_class):
            png(root / name / f"{i}.png", (20 + 7 * i, 40 - 2 * i), value=10 * c + i)  # every size differs


def test_image_folder_resizes_labels_and_splits_seeded(tmp_path):
    write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("not an image: skipped")
    overrides = ["data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.num_classes=3", "data.val_size=4",
                 "data.test_size=4", "data.image_size=16"]  # fmt: skip
    splits = datasets.load(compose_config(overrides).data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 4)
    assert splits.train.x.shape[1:] == (3, 16, 16) and splits.train.x.dtype == torch.uint8
    labels = torch.cat([splits.train.y, splits.val.y, splits.test.y])
    assert sorted(labels.tolist()) == [0] * 8 + [1] * 8 + [2] * 8  # sorted class folders: cat 0, dog 1, eel 2
    assert splits.classes == ("cat", "dog", "eel")  # recorded with the run's weights: predictions name them
    again = datasets.load(compose_config(overrides).data)
    assert torch.equal(again.val.x, splits.val.x)  # the split does not move
    # one image's pixels: PIL's bilinear resize of that file
    expected = np.asarray(Image.open(tmp_path / "imgs" / "dog" / "3.png").resize((16, 16), Image.Resampling.BILINEAR))
    all_x = torch.cat([splits.train.x, splits.val.x, splits.test.x])
    assert any(torch.equal(x, torch.from_numpy(expected.transpose(2, 0, 1).copy())) for x in all_x)
    gray = datasets.load(compose_config([*overrides, "data.channels=1", "data.mean=null", "data.std=null"]).data)
    assert gray.train.x.shape[1] == 1


def test_image_folder_uses_split_folders(tmp_path):
    root = tmp_path / "imgs"
    write_folder(root / "train", per_class=6)
    write_folder(root / "val", classes=("cat", "dog"), per_class=2)
    overrides = ["data=image_folder", f"data.root={root}", "data.num_classes=3", "data.test_size=3", "data.image_size=16"]
    splits = datasets.load(compose_config(overrides).data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 4, 3)  # test held out of train/
    assert splits.val.y.tolist() == [0, 0, 1, 1]


@pytest.mark.slow
def test_image_folder_trains_through_train_py(tmp_path):
    write_folder(tmp_path / "imgs", per_class=10)
    result = train_cli(
        "data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.num_classes=3", "data.val_size=6",
        "data.test_size=6", "data.image_size=16", "model=lenet", "batch_size=6", "epochs=1", "quiet=true",
        "tensorboard=false", "plots=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and "test" in summary


def _error(overrides: list[str]) -> str:
    cfg = compose_config(overrides)
    with pytest.raises(DataError) as e:
        validate(cfg)
        datasets.load(cfg.data)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_image_folder_bad_inputs_get_one_line_errors(tmp_path):
    base = ["data=image_folder", "data.num_classes=3"]
    (tmp_path / "empty").mkdir()
    assert "has no class sub-folders" in _error([*base, f"data.root={tmp_path / 'empty'}"])
    assert "no such folder" in _error([*base, f"data.root={tmp_path / 'nowhere'}"])
    assert "needs data.root" in _error(base)

    write_folder(tmp_path / "nofiles", classes=("a", "b"), per_class=2)
    (tmp_path / "nofiles" / "c").mkdir()
    msg = _error([*base, f"data.root={tmp_path / 'nofiles'}"])
    assert f"{tmp_path / 'nofiles' / 'c'} has no images" in msg

    write_folder(tmp_path / "broken", classes=("a", "b"), per_class=2)
    (tmp_path / "broken" / "b" / "bad.png").write_bytes(b"\x89PNG truncated")
    assert f"image {tmp_path / 'broken' / 'b' / 'bad.png'} cannot be read" in _error([*base, f"data.root={tmp_path / 'broken'}"])

    write_folder(tmp_path / "mixed", classes=("a", "b"), per_class=2)
    png(tmp_path / "mixed" / "b" / "gray.png", (30, 30), mode="L")
    msg = _error([*base, f"data.root={tmp_path / 'mixed'}"])
    assert "mixes grayscale and colour images" in msg and "gray.png" in msg and "data.mixed_modes=convert" in msg
    converted = datasets.load(compose_config([*base, f"data.root={tmp_path / 'mixed'}", "data.mixed_modes=convert",
                                              "data.val_size=1", "data.test_size=1"]).data)  # fmt: skip
    assert len(converted.train) + len(converted.val) + len(converted.test) == 5

    write_folder(tmp_path / "many", classes=("a", "b", "c", "d"), per_class=1)
    assert "data.num_classes=3 is not valid" in _error([*base, f"data.root={tmp_path / 'many'}"])


# --------------------------------------------------------------------------- a user's own loader

USER_MODULE = '''
import numpy as np
import torch

def load_my_data(image_size, num_classes, kind="good"):
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (120, 1, image_size, image_size), dtype=np.uint8)
    y = g.integers(0, num_classes, 120)
    if kind == "float":
        x = x.astype(np.float32) / 255
    if kind == "hwc":
        x = x.transpose(0, 2, 3, 1).repeat(3, axis=3)
    if kind == "labels":
        y = y + num_classes
    if kind == "few":
        x, y = x[:12], y[:12]
    if kind == "splits":
        return {"train": (torch.from_numpy(x[:80]), torch.from_numpy(y[:80])), "test": (x[80:], y[80:])}
    return x, y


class TinyNet(torch.nn.Module):
    def __init__(self, in_channels, image_size, num_classes, width=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, width, 3)
        self.head = torch.nn.Linear(width * (image_size - 2) ** 2, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mypkg.load_my_data"
    sys.modules.pop("mypkg", None)


USER = ["data=custom", "data._target_=mypkg.load_my_data", "data.channels=1", "data.image_size=16",
        "data.val_size=20", "data.test_size=20"]  # fmt: skip


def test_users_own_loader_trains(tmp_path, user_module):
    splits = datasets.load(compose_config(USER).data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 20)
    cfg = compose_config([*USER, "+data.kind=splits"])
    splits = datasets.load(cfg.data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (60, 20, 40)
    summary = train(tmp_path, [*USER, "model._target_=mypkg.TinyNet", "+model.width=3"])
    assert summary["status"] == "completed" and summary["model"] == "mypkg.TinyNet"
    assert summary["n_parameters"] == (1 * 9 + 1) * 3 + (3 * 14 * 14 + 1) * 10  # width=3 reached the class


@pytest.mark.parametrize("kind,words", [
    ("float", ["train images of dtype torch.float32", "must be uint8"]),
    ("hwc", ["train images with 16 channels", "data.channels=1"]),
    ("labels", ["train labels in [", "must be in [0, 10)", "data.num_classes=10"]),
])  # fmt: skip
def test_users_loader_mistakes_are_named(user_module, kind, words):
    cfg = compose_config([*USER, f"+data.kind={kind}"])
    with pytest.raises(DataError) as e:
        datasets.load(cfg.data)
    msg = str(e.value)
    assert "\n" not in msg and "data._target_=mypkg.load_my_data" in msg
    for w in words:
        assert w in msg, msg


def test_users_loader_too_few_images_for_batch_size(tmp_path, user_module):
    cfg = compose_config([*USER, "+data.kind=few", "data.val_size=2", "data.test_size=2", *FAST, "batch_size=16"])
    validate(cfg)  # the size is unknown until the data loads
    with pytest.raises(ConfigError, match=r"batch_size=16 is not valid: must be <= the training split's size \(8 images"):
        run(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_unimportable_loader_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data._target_='nope.load' is not valid: must be an importable function"):
        validate(compose_config(["data._target_=nope.load"]))
    with pytest.raises(ConfigError, match=r"data._target_ is missing: data=custom needs data._target_=<module.function>"):
        validate(compose_config(["data=custom"]))


USER_CONF = {
    "mypkg/__init__.py": "",
    "mypkg/data.py": """
        import numpy as np

        def load_blobs(channels, image_size, num_classes, n=96):
            rng = np.random.default_rng(0)
            y = rng.integers(0, num_classes, n)
            x = rng.integers(0, 60, (n, channels, image_size, image_size)) + 25 * y[:, None, None, None]
            return x.astype(np.uint8), y
    """,
    "mypkg/models.py": """
        from torch import nn

        class TinyNet(nn.Module):
            def __init__(self, in_channels, image_size, num_classes, width=8):
                super().__init__()
                self.net = nn.Sequential(
                    nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(width, num_classes),
                )

            def forward(self, x):
                return self.net(x)
    """,
    "myconf/data/blobs.yaml": """
        defaults:
          - custom            # start from optimlab's conf/data/custom.yaml
          - _self_
        _target_: mypkg.data.load_blobs
        name: blobs
        channels: 1
        image_size: 12
        num_classes: 4
        val_size: 16
        test_size: 16
    """,
    "myconf/model/tiny.yaml": """
        _target_: mypkg.models.TinyNet
        in_channels: ${data.channels}
        image_size: ${data.image_size}
        num_classes: ${data.num_classes}
        width: 8
    """,
}


@pytest.mark.slow
def test_readme_own_data_and_model_through_train_py(tmp_path):
    """The README's worked example: a user's loader and model class in their own package,
    selected by YAML files in their own config folder (hydra.searchpath)."""
    for name, text in USER_CONF.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text).lstrip())
    result = train_cli(
        f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "data=blobs", "model=tiny", "optimizer=adam", "lr=0.01",
        "batch_size=16", "epochs=3", "quiet=true", "tensorboard=false", "plots=false",
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["model"] == "mypkg.models.TinyNet"
    assert "data blobs: 64 train, 16 val, 16 test" in (run_dir / "train.log").read_text()
