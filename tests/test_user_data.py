"""Bring your own data (ppl_vae.sources through load_dataset): image folders, array and table
files, any Dataset, the held-out split, the lazy path for data larger than memory, and a clear
error for each kind of bad data.

Every file is generated small in tmp_path; every data set that is trained runs one epoch and is
evaluated. Nothing touches the network (download=False wherever a name is given).
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

import ppl_vae
from ppl_vae import DataError, ModelConfig, TrainConfig, build_model
from ppl_vae.data import DatasetNotFoundError, ImageData, default_likelihood, load_dataset
from ppl_vae.sources import SourceDataset, canonical_name, memory_budget


def load(source, **kwargs) -> ImageData:
    return load_dataset(source, verbose=False, **kwargs)


def write_images(folder, n, hw, *, colour=False, ext="png", seed=0, start=0):
    """``n`` random images of ``hw`` = (height, width) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (*hw, 3) if colour else hw
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.{ext}")
    return folder


def train_and_evaluate(data: ImageData, *, net: str = "mlp", batch_size: int = 8) -> dict:
    """One epoch with the likelihood that suits the data, then the standard evaluation."""
    likelihood, kwargs = default_likelihood(data)
    config = ModelConfig(
        latent_dim=4, hidden=(32,), net=net, likelihood=likelihood, likelihood_kwargs=kwargs
    )
    model = build_model(config, data.image_shape, seed=0)
    history = ppl_vae.fit(
        model,
        data.train_x,
        TrainConfig(epochs=1, batch_size=batch_size, device="cpu", objective="trace"),
        test_x=data.test_x,
        progress=False,
    )
    assert history.epoch == [1] and math.isfinite(history.test_elbo[0])
    metrics = ppl_vae.evaluate(model, data.test_x, iw_samples=20)
    assert metrics["num_images"] == len(data.test_x)
    for key in ("elbo", "log_likelihood", "reconstruction_mse", "bits_per_dim"):
        assert math.isfinite(metrics[key]), key
    with torch.no_grad():
        assert model.reconstruct(data.test_x[:2]).shape == (2, *data.image_shape)
    return metrics


# ------------------------------------------------------------------------------------------
# Sources that train
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hw", "colour", "ext", "image_size", "net", "shape"),
    [
        ((12, 12), False, "png", None, "mlp", (1, 12, 12)),
        ((12, 12), False, "jpg", None, "mlp", (1, 12, 12)),
        ((20, 16), True, "png", 16, "mlp", (3, 16, 16)),
        ((20, 16), False, "jpeg", (8, 12), "mlp", (1, 8, 12)),
        ((32, 32), True, "png", None, "conv", (3, 32, 32)),
        ((48, 40), True, "jpg", 64, "conv", (3, 64, 64)),
    ],
)
def test_image_folder_trains(tmp_path, hw, colour, ext, image_size, net, shape):
    folder = write_images(tmp_path / "imgs", 20, hw, colour=colour, ext=ext)
    data = load(folder, image_size=image_size)
    assert data.kind == "images" and data.in_memory and data.image_shape == shape
    assert (len(data.train_x), len(data.test_x)) == (18, 2)  # test_fraction 0.1
    assert data.train_x.dtype == torch.float32
    assert 0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1
    assert data.train_y is None and not data.has_labels
    assert default_likelihood(data) == ("bernoulli", {})
    train_and_evaluate(data, net=net)


def test_image_folder_values_and_grey_colour_mix(tmp_path):
    """A PNG's bytes / 255, exactly; one colour image makes every image RGB; hidden and other
    files are ignored; sub-folders are classes."""
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    Image.fromarray(pixels).save(tmp_path / "d" / "a" / "grey.png")
    Image.fromarray(np.stack([pixels] * 3, -1)).save(tmp_path / "d" / "b" / "rgb.png")
    (tmp_path / "d" / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "d" / "a" / ".hidden.png").write_bytes(b"junk")
    data = load(tmp_path / "d", test_fraction=0.5)
    assert data.image_shape == (3, 4, 4)
    every = torch.cat([data.train_x, data.test_x])
    expected = torch.from_numpy(pixels).float() / 255
    for x in every:
        assert torch.equal(x, expected.expand(3, 4, 4))
    assert sorted([*data.train_y.tolist(), *data.test_y.tolist()]) == [0, 1]


def test_npz_of_images_trains_and_keeps_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)  # channels last
    y = rng.integers(0, 3, 30)
    np.savez(tmp_path / "images.npz", x=x, y=y)
    data = load(tmp_path / "images.npz", split_seed=1)
    assert data.image_shape == (3, 8, 8) and data.name == "images"
    assert (len(data.train_x), len(data.test_x)) == (27, 3)
    every = torch.cat([data.train_x, data.test_x])
    labels = torch.cat([data.train_y, data.test_y])
    # each data point is one of the images, scaled, with its label
    scaled = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    order = [int((scaled == p).flatten(1).all(1).nonzero()[0]) for p in every]
    assert sorted(order) == list(range(30))
    assert labels.tolist() == y[order].tolist()
    train_and_evaluate(data)


def test_npz_and_pt_with_their_own_split(tmp_path):
    rng = np.random.default_rng(0)
    tr, te = rng.random((10, 6, 6), dtype=np.float32), rng.random((4, 6, 6), dtype=np.float32)
    np.savez(
        tmp_path / "split.npz",
        x_train=tr,
        x_test=te,
        y_train=np.arange(10) % 2,
        y_test=np.arange(4) % 2,
    )
    data = load(tmp_path / "split.npz")
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(tr))
    assert torch.equal(data.test_x[:, 0], torch.from_numpy(te))
    assert data.test_y.tolist() == [0, 1, 0, 1]
    torch.save({"train": torch.from_numpy(tr), "test": torch.from_numpy(te)}, tmp_path / "s.pt")
    pt = load(tmp_path / "s.pt")
    assert torch.equal(pt.train_x, data.train_x) and torch.equal(pt.test_x, data.test_x)
    assert pt.train_y is None


def test_npy_table_trains_with_gaussian(tmp_path):
    rng = np.random.default_rng(0)
    table = (rng.normal(size=(40, 6)) * 5 + 3).astype(np.float64)
    np.save(tmp_path / "table.npy", table)
    data = load(tmp_path / "table.npy")
    assert data.kind == "table" and data.image_shape == (6,)
    assert (len(data.train_x), len(data.test_x)) == (36, 4)
    # rows kept as they are (not scaled), float32
    every = torch.cat([data.train_x, data.test_x])
    assert torch.allclose(every.sort(0).values, torch.from_numpy(table).float().sort(0).values)
    assert default_likelihood(data) == ("gaussian-learned", {"link": "identity"})
    train_and_evaluate(data)


def test_csv_table_with_header_trains_with_gaussian(tmp_path):
    rng = np.random.default_rng(1)
    table = rng.normal(size=(30, 4)) * 10
    lines = ["height,weight,age,score"] + [",".join(f"{v:.6f}" for v in row) for row in table]
    (tmp_path / "people.csv").write_text("\n".join(lines) + "\n")
    data = load(str(tmp_path / "people.csv"))
    assert data.kind == "table" and data.image_shape == (4,) and data.name == "people"
    every = torch.cat([data.train_x, data.test_x]).double()
    assert torch.allclose(every.sort(0).values, torch.from_numpy(table).sort(0).values, atol=1e-5)
    # the likelihood the brief names, given explicitly
    model = build_model(
        ModelConfig(
            latent_dim=2,
            hidden=(16,),
            likelihood="gaussian",
            likelihood_kwargs={"link": "identity"},
        ),
        data.image_shape,
        seed=0,
    )
    ppl_vae.fit(
        model,
        data.train_x,
        TrainConfig(epochs=1, batch_size=8, device="cpu"),
        test_x=data.test_x,
        progress=False,
    )
    assert math.isfinite(ppl_vae.evaluate(model, data.test_x, iw_samples=20)["log_likelihood"])


def test_semicolon_and_tsv_tables(tmp_path):
    (tmp_path / "a.csv").write_text("1;2.5\n3;-4\n5;6e-1\n")
    (tmp_path / "b.tsv").write_text("x\ty\n1\t2.5\n3\t-4\n5\t0.6\n")
    for name in ("a.csv", "b.tsv"):
        data = load(tmp_path / name, test_fraction=0)
        assert data.train_x.tolist() == [[1, 2.5], [3, -4], [5, pytest.approx(0.6)]]
        assert data.test_x.shape == (0, 2)


class Digits(Dataset):
    """A user's data set: (H, W) float images in [0, 1] and int labels."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 8, 8, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 3


def test_custom_dataset_trains(tmp_path):
    ds = Digits()
    data = load(ds)
    assert data.image_shape == (1, 8, 8) and data.name == "Digits" and data.in_memory
    every = torch.cat([data.train_x, data.test_x])[:, 0]
    assert sorted(every.flatten().tolist()) == sorted(ds.x.flatten().tolist())
    labels = torch.cat([data.train_y, data.test_y]).tolist()
    assert sorted(labels) == sorted(i % 3 for i in range(24))
    train_and_evaluate(data)


def test_torchvision_style_dataset_of_pil_images():
    from torchvision.datasets import FakeData

    data = load(FakeData(size=12, image_size=(3, 8, 8), num_classes=4), image_size=4)
    assert data.image_shape == (3, 4, 4) and data.has_labels
    assert 0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1


def test_tensor_and_iterable_sources():
    x = torch.rand(10, 2, 4, 4)
    data = load(x, test_fraction=0.2)
    assert data.image_shape == (2, 4, 4)
    assert sorted(torch.cat([data.train_x, data.test_x]).sum((1, 2, 3)).tolist()) == sorted(
        x.sum((1, 2, 3)).tolist()
    )

    class Stream(IterableDataset):
        def __iter__(self):
            for i in range(6):
                yield torch.full((3,), float(i))

    table = load(Stream(), test_fraction=0)
    assert table.kind == "table" and table.train_x[:, 0].tolist() == list(range(6))


# ------------------------------------------------------------------------------------------
# The held-out split
# ------------------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_complete():
    x = torch.arange(50, dtype=torch.float32)[:, None] + 0.5
    a = load(x, kind="table", split_seed=3)
    b = load(x, kind="table", split_seed=3)
    c = load(x, kind="table", split_seed=4)
    assert torch.equal(a.test_x, b.test_x) and not torch.equal(a.test_x, c.test_x)
    ids = torch.cat([a.train_x, a.test_x])[:, 0].tolist()
    assert sorted(ids) == x[:, 0].tolist() and len(a.test_x) == 5
    assert a.train_x[:, 0].tolist() == sorted(a.train_x[:, 0].tolist())  # source order kept
    assert len(load(x, kind="table", test_fraction=0.3).test_x) == 15


def test_folder_with_train_and_test_and_test_argument(tmp_path):
    write_images(tmp_path / "d" / "train", 6, (4, 4))
    write_images(tmp_path / "d" / "test", 2, (4, 4), seed=1)
    data = load(tmp_path / "d")
    assert (len(data.train_x), len(data.test_x)) == (6, 2)
    other = load(tmp_path / "d" / "train", test=tmp_path / "d" / "test")
    assert torch.equal(other.test_x, data.test_x) and torch.equal(other.train_x, data.train_x)
    with pytest.raises(DataError, match="shape"):
        load(tmp_path / "d" / "train", test=torch.rand(3, 5))


# ------------------------------------------------------------------------------------------
# Data larger than memory: lazy Datasets
# ------------------------------------------------------------------------------------------


def _all(ds) -> torch.Tensor:
    return torch.stack([ds[i] for i in range(len(ds))])


def test_lazy_folder_gives_the_in_memory_tensors(tmp_path):
    write_images(tmp_path / "d", 9, (20, 16), colour=True)
    write_images(tmp_path / "d", 3, (10, 10), start=9, seed=2)
    eager = load(tmp_path / "d", image_size=8)
    lazy = load(tmp_path / "d", image_size=8, in_memory=False)
    assert not lazy.in_memory and isinstance(lazy.train_x, SourceDataset)
    assert lazy.image_shape == eager.image_shape == (3, 8, 8) and lazy.kind == "images"
    assert torch.equal(_all(lazy.train_x), eager.train_x)
    assert torch.equal(_all(lazy.test_x), eager.test_x)
    # what a DataLoader reads (batched __getitems__) is the same too
    loader = DataLoader(lazy.train_x, batch_size=4, shuffle=False)
    assert torch.equal(torch.cat(list(loader)), eager.train_x)
    assert default_likelihood(lazy) == ("bernoulli", {})
    sub = lazy.subset(3, 1)
    assert len(sub.train_x) == 3 and sub.image_shape == (3, 8, 8)
    assert torch.equal(_all(sub.train_x), eager.train_x[:3])
    assert "lazy" in repr(lazy) and lazy.to("cpu").train_x is lazy.train_x


def test_too_large_for_max_bytes_is_lazy(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "big.npy", rng.integers(0, 256, (40, 3, 6, 6), dtype=np.uint8))
    eager = load(tmp_path / "big.npy")
    lazy = load(tmp_path / "big.npy", max_bytes=1000)  # 40·108·4 bytes do not fit
    assert eager.in_memory and not lazy.in_memory
    assert torch.equal(_all(lazy.train_x), eager.train_x)
    assert torch.equal(next(iter(DataLoader(lazy.test_x, batch_size=4))), eager.test_x)
    assert memory_budget() > 0
    # worker processes get a copy that reopens the memory map rather than the data
    blob = pickle.dumps(lazy.train_x)
    assert len(blob) < 4000 and torch.equal(_all(pickle.loads(blob)), eager.train_x)


def test_lazy_data_train(tmp_path):
    write_images(tmp_path / "d", 12, (8, 8))
    data = load(tmp_path / "d", in_memory=False)
    assert not data.in_memory
    history = ppl_vae.fit(
        build_model(ModelConfig(latent_dim=2, hidden=(16,)), data.image_shape, seed=0),
        data.train_x,
        TrainConfig(epochs=1, batch_size=4, device="cpu"),
        test_x=data.test_x,
        progress=False,
    )
    assert math.isfinite(history.test_elbo[0])


# ------------------------------------------------------------------------------------------
# Bad data: a clear error each
# ------------------------------------------------------------------------------------------


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load(tmp_path / "empty")


def test_folder_without_images(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no images.*readme\.txt"):
        load(tmp_path / "d")


def test_mixed_sizes_without_image_size(tmp_path):
    write_images(tmp_path / "d", 3, (12, 12))
    write_images(tmp_path / "d", 2, (20, 16), start=3)
    with pytest.raises(DataError) as info:
        load(tmp_path / "d")
    msg = str(info.value)
    assert "not all one size" in msg and "3 of 12×12" in msg and "2 of 20×16" in msg
    assert "image_size=" in msg


def test_mixed_sizes_in_a_dataset_without_image_size():
    class Ragged(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(1, 4 + i % 2, 4)

    with pytest.raises(DataError, match=r"one shape.*image_size"):
        load(Ragged())
    assert load(Ragged(), image_size=4).image_shape == (1, 4, 4)


def test_non_numeric_table(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,colour\n1,2,red\n3,4,blue\n")
    with pytest.raises(DataError) as info:
        load(tmp_path / "t.csv")
    msg = str(info.value)
    assert "not numeric" in msg and "'colour'" in msg and "line 2" in msg and "'red'" in msg


def test_rows_with_nan_are_named(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,\n5,6\nnan,8\n")
    with pytest.raises(DataError) as info:
        load(tmp_path / "t.csv")
    msg = str(info.value)
    assert "2 of its 4 rows" in msg and "rows 1, 3" in msg and "file lines 3, 5" in msg
    table = np.ones((6, 3))
    table[4, 1] = np.inf
    np.save(tmp_path / "t.npy", table)
    with pytest.raises(DataError, match=r"rows 4 \(numbered from 0\)"):
        load(tmp_path / "t.npy")
    images = torch.rand(5, 1, 4, 4)
    images[2, 0, 1, 1] = float("nan")
    with pytest.raises(DataError, match="data points 2"):
        load(images)


def test_labels_file_passed_as_data(tmp_path):
    np.save(tmp_path / "labels.npy", np.arange(40) % 10)
    with pytest.raises(DataError, match="looks like class labels"):
        load(tmp_path / "labels.npy")
    (tmp_path / "labels.csv").write_text("label\n" + "\n".join(str(i % 4) for i in range(30)))
    with pytest.raises(DataError, match=r"looks like class labels.*kind='table'"):
        load(tmp_path / "labels.csv")
    # when it really is data, kind='table' says so
    assert load(tmp_path / "labels.npy", kind="table").image_shape == (1,)
    # a float column is a one-column table
    assert load(np.linspace(0, 1, 20)).image_shape == (1,)


def test_unknown_source_lists_the_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        load("not-a-dataset")
    msg = str(info.value)
    assert "unknown data source" in msg and "cifar10" in msg and "fashion-mnist" in msg
    with pytest.raises(DataError, match="no such file or folder"):
        load(tmp_path / "missing.npy")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"\.npz"):
        load(tmp_path / "x.json")


def test_other_bad_shapes(tmp_path):
    with pytest.raises(DataError, match="table of rows, not images"):
        load(torch.rand(5, 3), kind="images")
    with pytest.raises(DataError, match="image_size applies only to images"):
        load(torch.rand(5, 3), image_size=4)
    with pytest.raises(DataError, match="too few"):
        load(torch.rand(1, 3))
    np.savez(tmp_path / "z.npz", foo=np.zeros((3, 2)), bar=np.zeros(3))
    with pytest.raises(DataError, match="none is named as data"):
        load(tmp_path / "z.npz")


# ------------------------------------------------------------------------------------------
# torchvision names and defaults
# ------------------------------------------------------------------------------------------


def test_torchvision_name_offline_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load("CIFAR-10", root=tmp_path, download=False)
    msg = str(info.value)
    assert "torchvision.datasets.CIFAR10" in msg and str(tmp_path) in msg
    assert "download=True" in msg and "cifar-10-python.tar.gz" in msg and "https://" in msg
    assert "cifar-10-batches-py" in msg


def test_names_are_lenient():
    assert canonical_name("CIFAR-10") == "cifar10" and canonical_name("k_mnist") == "kmnist"
    assert canonical_name("FashionMNIST") == "fashion-mnist"
    assert canonical_name("emnist letters") == "emnist-letters" and canonical_name("x") is None


def test_default_likelihood_for_float_images_outside_unit_interval():
    data = load(torch.randn(10, 1, 4, 4))
    assert data.kind == "images" and default_likelihood(data) == (
        "gaussian-learned",
        {"link": "identity"},
    )
    assert default_likelihood(load(torch.rand(10, 1, 4, 4))) == ("bernoulli", {})


def write_idx(folder, prefix, x, y):
    """IDX files, as torchvision's MNIST-family classes read them: PREFIX-images-idx3-ubyte..."""
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = x.shape
    images = struct.pack(">IIII", 2051, n, h, w) + x.astype(np.uint8).tobytes()
    labels = struct.pack(">II", 2049, n) + y.astype(np.uint8).tobytes()
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(images)
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)


def fake_mnist_family(folder, prefixes, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for prefix, n in zip(prefixes, (6, 3), strict=True):
        x, y = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), rng.integers(0, 5, n)
        write_idx(folder, prefix, x, y)
        out.append((x, y))
    return out


def test_torchvision_name_reads_its_files(tmp_path):
    (tr_x, tr_y), (te_x, te_y) = fake_mnist_family(tmp_path / "KMNIST" / "raw", ("train", "t10k"))
    data = load("KMNIST", root=tmp_path, download=False)
    assert data.name == "kmnist" and data.image_shape == (1, 8, 8)
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(tr_x).float() / 255)
    assert torch.equal(data.test_x[:, 0], torch.from_numpy(te_x).float() / 255)
    assert data.train_y.tolist() == tr_y.tolist() and data.test_y.tolist() == te_y.tolist()
    # EMNIST's files hold transposed images: they come back upright
    emnist = tmp_path / "EMNIST" / "raw"
    (tr_x, _), _ = fake_mnist_family(emnist, ("emnist-letters-train", "emnist-letters-test"))
    letters = load("emnist-letters", root=tmp_path, download=False, image_size=4)
    assert letters.image_shape == (1, 4, 4)
    upright = load("emnist-letters", root=tmp_path, download=False)
    assert torch.equal(upright.train_x[:, 0], torch.from_numpy(tr_x).float().transpose(1, 2) / 255)


def test_mnist_resized_or_lazy_goes_through_the_same_conversion(tmp_path):
    fake_mnist_family(tmp_path / "MNIST" / "raw", ("train", "t10k"))
    plain = load("mnist", root=tmp_path, download=False)
    lazy = load("mnist", root=tmp_path, download=False, in_memory=False)
    assert torch.equal(_all(lazy.train_x), plain.train_x) and torch.equal(lazy.test_y, plain.test_y)
    small = load("mnist", root=tmp_path, download=False, image_size=4)
    assert small.image_shape == (1, 4, 4) and torch.equal(small.train_y, plain.train_y)


def test_torchvision_download_failure_says_so(tmp_path, monkeypatch):
    from urllib.error import URLError

    from torchvision import datasets

    def no_network(self):
        raise URLError("no network")

    monkeypatch.setattr(datasets.CIFAR10, "download", no_network)
    with pytest.raises(DatasetNotFoundError, match=r"download failed \(URLError"):
        load("cifar10", root=tmp_path, download=True)
