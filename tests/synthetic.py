"""Small synthetic datasets laid out on disk exactly as BackdoorBench expects them.

Images are learnable: class ``k`` has a bright horizontal bar at a class-specific row plus noise,
so a tiny net reaches high accuracy in a few epochs on CPU.
"""
from __future__ import annotations

import csv
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def class_images(n: int, h: int, w: int, c: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images whose class is a stripe pattern (orientation x period), robust to random crops."""
    rng = np.random.RandomState(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    periods = [3, 4, 6, 8, 11, 14, 5, 7, 9, 12]
    yy, xx = np.mgrid[0:h, 0:w]
    imgs = np.empty((n, h, w, c), dtype=np.uint8)
    for i, y in enumerate(labels):
        period = periods[(y // 2) % len(periods)] + (y // 20)
        coord = yy if y % 2 == 0 else xx
        phase = rng.uniform(0, 2 * np.pi)
        base = 110 + 90 * np.sin(2 * np.pi * coord / period + phase)
        img = base[..., None] + rng.normal(0, 20, size=(h, w, c))
        imgs[i] = np.clip(img, 0, 255).astype(np.uint8)
    if c == 1:
        imgs = imgs[..., 0]
    return imgs, labels.astype(np.int64)


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = struct.pack(">I", 0x0800 | arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def make_mnist_layout(folder: Path, n_train=400, n_test=200, seed=0, gz=False) -> Path:
    """``folder/MNIST/raw/{train,t10k}-*-ubyte`` (BackdoorBench's mnist layout); returns ``folder``."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for train, n, s in ((True, n_train, seed), (False, n_test, seed + 1)):
        x, y = class_images(n, 28, 28, 1, 10, s)
        stem = "train" if train else "t10k"
        _write_idx(raw / f"{stem}-images-idx3-ubyte", x, gz)
        _write_idx(raw / f"{stem}-labels-idx1-ubyte", y.astype(np.uint8), gz)
    return folder


def make_cifar_layout(folder: Path, n_train=100, n_test=50, hundred=False, seed=0) -> Path:
    """``folder/cifar-10-batches-py/{data_batch_1..5,test_batch}`` (or cifar-100-python/{train,test})."""
    k = 100 if hundred else 10
    base = folder / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    base.mkdir(parents=True, exist_ok=True)
    label_key = "fine_labels" if hundred else "labels"
    xtr, ytr = class_images(n_train, 32, 32, 3, k, seed)
    xte, yte = class_images(n_test, 32, 32, 3, k, seed + 1)

    def dump(name, x, y):
        with open(base / name, "wb") as fh:
            pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), label_key: [int(v) for v in y]}, fh)
    if hundred:
        dump("train", xtr, ytr)
        dump("test", xte, yte)
        with open(base / "meta", "wb") as fh:
            pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    else:
        parts = np.array_split(np.arange(n_train), 5)
        for i, p in enumerate(parts):
            dump(f"data_batch_{i + 1}", xtr[p], ytr[p])
        dump("test_batch", xte, yte)
        with open(base / "batches.meta", "wb") as fh:
            pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return folder


def make_gtsrb_layout(folder: Path, per_class=3, n_test=60, seed=0) -> Path:
    """``folder/Train/000NN/{*.ppm, GT-000NN.csv}`` and ``folder/Test/{*.ppm, GT-final_test.csv}``."""
    rng = np.random.RandomState(seed)
    header = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
    for k in range(43):
        d = folder / "Train" / f"{k:05d}"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"GT-{k:05d}.csv", "w", newline="") as fh:
            wr = csv.writer(fh, delimiter=";")
            wr.writerow(header)
            for j in range(per_class):
                size = int(rng.randint(30, 40))
                Image.fromarray(rng.randint(0, 255, (size, size, 3)).astype(np.uint8)).save(d / f"00000_{j:05d}.ppm")
                wr.writerow([f"00000_{j:05d}.ppm", size, size, 0, 0, size, size, k])
    t = folder / "Test"
    t.mkdir(parents=True, exist_ok=True)
    with open(t / "GT-final_test.csv", "w", newline="") as fh:
        wr = csv.writer(fh, delimiter=";")
        wr.writerow(header)
        for j in range(n_test):
            Image.fromarray(rng.randint(0, 255, (35, 33, 3)).astype(np.uint8)).save(t / f"{j:05d}.ppm")
            wr.writerow([f"{j:05d}.ppm", 33, 35, 0, 0, 33, 35, j % 43])
    return folder


def make_tiny_layout(folder: Path, per_class=2, n_classes=200, flat_val=True, seed=0) -> Path:
    """``folder/tiny-imagenet-200/{train/<wnid>/images/*.JPEG, val/...}`` (flat val + annotations by default)."""
    rng = np.random.RandomState(seed)
    base = folder / "tiny-imagenet-200"
    wnids = [f"n{idx:08d}" for idx in range(n_classes)]
    for w in wnids:
        d = base / "train" / w / "images"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.fromarray(rng.randint(0, 255, (64, 64, 3)).astype(np.uint8)).save(d / f"{w}_{j}.JPEG")
    val = base / "val"
    lines = []
    for j, w in enumerate(wnids[::-1][:20]):
        name = f"val_{j}.JPEG"
        if flat_val:
            (val / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.randint(0, 255, (64, 64, 3)).astype(np.uint8)).save(val / "images" / name)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
        else:
            (val / w).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.randint(0, 255, (64, 64, 3)).astype(np.uint8)).save(val / w / name)
    if flat_val:
        (val / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder
