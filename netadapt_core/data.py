"""Data sets: Fashion-MNIST (Debian files or download), CIFAR-10 and any ImageFolder.

The training set is split, seeded, into ``train`` (fine-tuning) and ``holdout`` (scoring
NetAdapt's proposals). The test set is only ever used for reporting.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .config import ConfigError, DataConfig
from .errors import NetAdaptError

_FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class DataMissingError(NetAdaptError, FileNotFoundError):
    """The data set's files are not where the settings say; the message says how to get them."""


class TensorImages(Dataset):
    """Normalised images held in memory as one float tensor (N, C, H, W) plus int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def subset(self, indices: torch.Tensor) -> TensorImages:
        return TensorImages(self.images[indices], self.labels[indices])


@dataclass
class DataBundle:
    train: Dataset
    holdout: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


def _to_tensor_images(images_uint8: torch.Tensor, labels, dataset: str, image_size: int | None) -> TensorImages:
    images = images_uint8.float().div_(255.0)
    if images.ndim == 3:  # N, H, W (grey)
        images = images.unsqueeze(1)
    elif images.shape[-1] in (1, 3):  # N, H, W, C
        images = images.permute(0, 3, 1, 2).contiguous()
    if image_size is not None and images.shape[-1] != image_size:
        images = torch.nn.functional.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    mean, std = _STATS[dataset]
    images = (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return TensorImages(images.contiguous(), torch.as_tensor(labels, dtype=torch.int64))


def _stage_debian_fashion_mnist(cfg: DataConfig) -> Path:
    """Unpack Debian's gzipped IDX files where torchvision's FashionMNIST looks for them."""
    raw = Path(cfg.root) / "FashionMNIST" / "raw"
    if all((raw / name).is_file() for name in _FMNIST_FILES):
        return raw
    debian = Path(cfg.debian_dir)
    if all((debian / f"{name}.gz").is_file() for name in _FMNIST_FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for name in _FMNIST_FILES:
            partial = raw / f"{name}.partial"
            with gzip.open(debian / f"{name}.gz", "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(raw / name)
    return raw


def _load_fashion_mnist(cfg: DataConfig) -> tuple[TensorImages, TensorImages, int]:
    from torchvision.datasets import FashionMNIST

    _stage_debian_fashion_mnist(cfg)
    try:
        train = FashionMNIST(cfg.root, train=True, download=cfg.download)
        test = FashionMNIST(cfg.root, train=False, download=cfg.download)
    except RuntimeError as exc:
        raise DataMissingError(
            f"Fashion-MNIST not found under {cfg.root}/FashionMNIST/raw nor in {cfg.debian_dir} ({exc}). "
            "Fix: `apt-get install dataset-fashion-mnist`, or set data.download=true where the "
            "network allows, or point data.debian_dir at the gzipped IDX files."
        ) from None
    return (
        _to_tensor_images(train.data, train.targets, "fashion_mnist", cfg.image_size),
        _to_tensor_images(test.data, test.targets, "fashion_mnist", cfg.image_size),
        10,
    )


def _load_cifar10(cfg: DataConfig) -> tuple[TensorImages, TensorImages, int]:
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(cfg.root, train=True, download=cfg.download)
        test = CIFAR10(cfg.root, train=False, download=cfg.download)
    except RuntimeError as exc:
        raise DataMissingError(
            f"CIFAR-10 not found under {cfg.root}/cifar-10-batches-py ({exc}). Fix: set "
            "data.download=true, or unpack cifar-10-python.tar.gz into data.root."
        ) from None
    return (
        _to_tensor_images(torch.from_numpy(train.data), train.targets, "cifar10", cfg.image_size),
        _to_tensor_images(torch.from_numpy(test.data), test.targets, "cifar10", cfg.image_size),
        10,
    )


def _load_image_folder(cfg: DataConfig) -> tuple[Dataset, Dataset, int, int]:
    from torchvision import transforms

    size = cfg.image_size or 32
    transform = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    train, test = _image_folders(cfg, transform)
    return train, test, len(train.classes), size


def _image_folders(cfg: DataConfig, transform=None) -> tuple[Dataset, Dataset]:
    """The train/ and test/ ImageFolders of ``data.image_folder``; a missing or empty split, or splits
    with different classes, is a ``DataMissingError`` naming the folder and the layout it needs."""
    from torchvision.datasets import ImageFolder

    root = Path(cfg.image_folder or "")
    layout = f"Fix: lay it out as {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg."
    folders = []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataMissingError(f"data.image_folder={root} has no {split}/ folder. {layout}")
        try:
            folders.append(ImageFolder(str(root / split), transform=transform))
        except FileNotFoundError as exc:  # no class folder, or a class folder without images
            raise DataMissingError(f"data.image_folder={root}: {split}/ holds no images ({exc}) {layout}") from None
    train, test = folders
    if train.classes != test.classes:
        raise DataMissingError(
            f"data.image_folder={root}: train/ and test/ hold different classes ({train.classes} vs "
            f"{test.classes}); they must match"
        )
    return train, test


def describe_data(cfg: DataConfig) -> tuple[int, int, int]:
    """(in_channels, image_size, num_classes) of the configured data set, without loading it."""
    if cfg.dataset == "fashion_mnist":
        return 1, cfg.image_size or 28, 10
    if cfg.dataset == "cifar10":
        return 3, cfg.image_size or 32, 10
    train = Path(cfg.image_folder or "") / "train"
    if not train.is_dir():
        raise DataMissingError(f"data.image_folder={cfg.image_folder} has no train/ folder")
    return 3, cfg.image_size or 32, sum(1 for p in train.iterdir() if p.is_dir())


TRAIN_IMAGES = {"fashion_mnist": 60000, "cifar10": 50000}  # training-set sizes of the built-in data sets


def check_data(cfg: DataConfig) -> int:
    """Check, without loading any image, that the configured data set is there (or will be
    downloaded) and that ``data.holdout_size`` leaves training images; returns the training-set size.

    Raises ``DataMissingError`` (missing files, an empty image folder) or ``ConfigError`` (the
    holdout split takes every training image), each naming the setting and the fix.
    """
    if cfg.dataset == "imagefolder":
        n = len(_image_folders(cfg)[0])
    else:
        n = TRAIN_IMAGES[cfg.dataset]
        if not cfg.download and not _files_present(cfg):
            if cfg.dataset == "fashion_mnist":
                raise DataMissingError(
                    f"Fashion-MNIST is neither under {cfg.root}/FashionMNIST/raw nor in data.debian_dir="
                    f"{cfg.debian_dir} (data.download is false). Fix: `apt-get install dataset-fashion-mnist`, "
                    "or set data.download=true where the network allows, or point data.debian_dir at the "
                    "gzipped IDX files."
                )
            raise DataMissingError(
                f"CIFAR-10 is not under {cfg.root}/cifar-10-batches-py (data.download is false). Fix: set "
                "data.download=true, or unpack cifar-10-python.tar.gz into data.root."
            )
    split_indices(n, cfg.holdout_size, cfg.seed, cfg.train_subset)
    return n


def _files_present(cfg: DataConfig) -> bool:
    if cfg.dataset == "fashion_mnist":
        raw = Path(cfg.root) / "FashionMNIST" / "raw"
        debian = Path(cfg.debian_dir)
        return (all((raw / name).is_file() for name in _FMNIST_FILES)
                or all((debian / f"{name}.gz").is_file() for name in _FMNIST_FILES))
    folder = Path(cfg.root) / "cifar-10-batches-py"
    return all((folder / name).is_file() for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"))


def split_indices(n: int, holdout_size: int, seed: int, train_subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, disjoint (train, holdout) index sets over ``range(n)``."""
    if holdout_size >= n:
        raise ConfigError(
            f"data.holdout_size={holdout_size} leaves no training images (the training set has {n}). "
            f"Fix: set data.holdout_size below {n}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    holdout = order[:holdout_size]
    train = order[holdout_size:]
    if train_subset is not None:
        train = train[:train_subset]
    return train, holdout


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the configured data set and split it. See the module docstring."""
    if cfg.dataset == "imagefolder":
        train_full, test, num_classes, size = _load_image_folder(cfg)
        in_channels = 3
    else:
        loader = _load_fashion_mnist if cfg.dataset == "fashion_mnist" else _load_cifar10
        train_full, test, num_classes = loader(cfg)
        in_channels, size = train_full.images.shape[1], train_full.images.shape[-1]
    train_idx, holdout_idx = split_indices(len(train_full), cfg.holdout_size, cfg.seed, cfg.train_subset)
    test_idx = torch.arange(len(test))
    if cfg.test_subset is not None:
        test_idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(cfg.seed + 1))
        test_idx = test_idx[: cfg.test_subset]
    if isinstance(train_full, TensorImages):
        parts = (train_full.subset(train_idx), train_full.subset(holdout_idx), test.subset(test_idx))
    else:
        parts = (
            Subset(train_full, train_idx.tolist()),
            Subset(train_full, holdout_idx.tolist()),
            Subset(test, test_idx.tolist()),
        )
    return DataBundle(*parts, num_classes=num_classes, in_channels=in_channels, image_size=size)


def iterate_batches(
    dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epochs: int | None = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) batches; ``epochs=None`` repeats forever, reshuffling each pass."""
    generator = torch.Generator().manual_seed(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        epoch += 1
        if isinstance(dataset, TensorImages):
            n = len(dataset)
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                yield dataset.images[idx], dataset.labels[idx]
        else:
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
            yield from loader
