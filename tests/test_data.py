import torch
from PIL import Image

from netadapt_core.config import load_params
from netadapt_core.data import DataMissingError, describe_data, iterate_batches, load_data, split_indices

import pytest


def test_fashion_mnist_from_debian_files_split_is_disjoint(tiny_params, tiny_data):
    assert tiny_data.input_shape == (1, 28, 28)
    assert tiny_data.num_classes == 10
    assert len(tiny_data.train) == 3000 and len(tiny_data.holdout) == 500 and len(tiny_data.test) == 1000
    train_idx, holdout_idx = split_indices(60000, 500, tiny_params.data.seed, 3000)
    assert not set(train_idx.tolist()) & set(holdout_idx.tolist())
    # the split is seeded: same seed, same split; another seed, another split
    again, _ = split_indices(60000, 500, tiny_params.data.seed, 3000)
    other, _ = split_indices(60000, 500, tiny_params.data.seed + 1, 3000)
    assert torch.equal(train_idx, again) and not torch.equal(train_idx, other)
    # real images: normalised, all ten classes present
    assert abs(float(tiny_data.train.images.mean())) < 0.2
    assert set(tiny_data.train.labels.tolist()) == set(range(10))


def test_holdout_images_never_appear_in_train(tiny_data):
    train = {hash(x.numpy().tobytes()) for x in tiny_data.train.images}
    overlap = sum(hash(x.numpy().tobytes()) in train for x in tiny_data.holdout.images)
    # Fashion-MNIST has a handful of duplicate images; a leak would be hundreds
    assert overlap < 5


def test_holdout_larger_than_train_set_is_refused():
    with pytest.raises(ValueError, match="holdout_size"):
        split_indices(100, 100, 0, None)


def test_missing_fashion_mnist_names_the_fix(tmp_path):
    cfg = load_params(None, [f"data.root={tmp_path}/d", f"data.debian_dir={tmp_path}/none"]).data
    with pytest.raises(DataMissingError, match="apt-get install dataset-fashion-mnist"):
        load_data(cfg)


def test_missing_cifar10_names_the_fix(tmp_path):
    cfg = load_params(None, ["data.dataset=cifar10", f"data.root={tmp_path}"]).data
    with pytest.raises(DataMissingError, match="download"):
        load_data(cfg)


def test_image_folder(tmp_path):
    for split, n in (("train", 12), ("test", 4)):
        for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), colour).save(folder / f"{i}.png")
    cfg = load_params(None, ["data.dataset=imagefolder", f"data.image_folder={tmp_path}",
                             "data.image_size=16", "data.holdout_size=4"]).data
    assert describe_data(cfg) == (3, 16, 2)
    bundle = load_data(cfg)
    assert (len(bundle.train), len(bundle.holdout), len(bundle.test)) == (20, 4, 8)
    images, labels = next(iterate_batches(bundle.train, 8, shuffle=True))
    assert images.shape == (8, 3, 16, 16) and set(labels.tolist()) <= {0, 1}


def test_image_folder_without_test_split(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    cfg = load_params(None, ["data.dataset=imagefolder", f"data.image_folder={tmp_path}"]).data
    with pytest.raises(DataMissingError, match="test/"):
        load_data(cfg)
