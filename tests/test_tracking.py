"""Experiment tracking: the TensorBoard event files, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import plugin_data_pb2

import ppl_vae
from ppl_vae import ModelConfig, TrainConfig
from ppl_vae.cli import build_parser, main
from ppl_vae.evaluate import evaluate, image_metrics
from ppl_vae.run import RunConfig
from ppl_vae.tracking import (
    NullTracker,
    TensorBoardLogger,
    flatten_hparams,
    log_model_images,
    make_tracker,
)


def _read(log_dir: Path) -> ea.EventAccumulator:
    """All events of ``log_dir`` (size_guidance 0: keep every scalar and image, not a sample)."""
    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    acc.Reload()
    return acc


def _hparams(acc: ea.EventAccumulator) -> tuple[dict, list[str]]:
    """(hyper-parameters, metric tags) of the run, decoded from the hparams plugin's data."""
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    hparams = {
        k: getattr(v, v.WhichOneof("kind")) for k, v in start.session_start_info.hparams.items()
    }
    return hparams, [m.name.tag for m in experiment.experiment.metric_infos]


def _tiny_model():
    return ppl_vae.build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 8, 8), seed=0)


def test_event_file_holds_scalars_images_and_hparams(tmp_path: Path):
    x = torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    train_x, test_x = x[:64], x[64:]
    model = _tiny_model()
    settings = {"model": {"latent_dim": 2, "hidden": (16,), "prior": "normal"}, "lr": 1e-3}
    log_dir = tmp_path / "tensorboard"
    with TensorBoardLogger(log_dir, hparams=settings) as tb:
        history = ppl_vae.fit(
            model,
            train_x,
            TrainConfig(epochs=2, batch_size=32, device="cpu"),
            test_x=test_x,
            progress=False,
            callbacks=(tb,),
        )
        metrics = evaluate(model, test_x, iw_samples=5)
        metrics.update(image_metrics(model, test_x))
        tb.log_metrics(metrics)
        assert log_model_images(tb, model, test_x) == ["images/reconstructions", "images/samples"]
        tb.log_hparams({"batch_size": 32})

    acc = _read(log_dir)
    scalars = set(acc.Tags()["scalars"])
    per_epoch = {"train/loss": history.train_loss, "test/elbo": history.test_elbo}
    for tag, values in per_epoch.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        # event files store float32
        assert [e.value for e in events] == pytest.approx(values, rel=1e-6)
    assert [e.step for e in acc.Scalars("time/seconds_per_epoch")] == [1, 2]
    final = {
        "test/log_likelihood": "log_likelihood",
        "test/bits_per_dim": "bits_per_dim",
        "test/mse": "reconstruction_mse",
        "test/psnr": "psnr",
    }
    assert set(final) <= scalars
    for tag, key in final.items():
        (event,) = acc.Scalars(tag)
        assert event.step == 2 and event.value == pytest.approx(metrics[key], rel=1e-6)

    # 16 test images above their 16 reconstructions, 8×8 pixels with 2-pixel padding; 8×8 samples
    images = {tag: acc.Images(tag) for tag in acc.Tags()["images"]}
    assert set(images) == {"images/reconstructions", "images/samples"}
    (recon,) = images["images/reconstructions"]
    assert (recon.width, recon.height, recon.step) == (16 * 10 + 2, 2 * 10 + 2, 2)
    assert recon.encoded_image_string.startswith(b"\x89PNG")
    (samples,) = images["images/samples"]
    assert (samples.width, samples.height) == (8 * 10 + 2, 8 * 10 + 2)

    hparams, metric_tags = _hparams(acc)
    assert hparams == {
        "model.latent_dim": 2,
        "model.hidden": "(16,)",
        "model.prior": "normal",
        "lr": 1e-3,
        "batch_size": 32,
    }
    assert {"train/loss", "test/elbo", *final} <= set(metric_tags)


def test_non_images_and_null_trackers_write_nothing(tmp_path: Path, monkeypatch):
    with TensorBoardLogger(tmp_path / "tb") as tb:
        assert not tb.log_images("table", torch.rand(10, 5))
        assert not tb.log_images("two channels", torch.rand(4, 2, 8, 8))
        assert log_model_images(tb, _tiny_model(), torch.rand(10, 5)) == []
        tb.log_metrics({"log_likelihood": float("nan"), "psnr": 20.0, "elbo_note": "text"})
    acc = _read(tmp_path / "tb")
    assert acc.Tags()["images"] == [] and acc.Tags()["scalars"] == ["test/psnr"]

    null = make_tracker(None, tmp_path / "none")
    assert isinstance(null, NullTracker) and not null.active
    null.log_metrics({"psnr": 1.0})
    assert log_model_images(null, _tiny_model(), torch.rand(4, 1, 8, 8)) == []
    null.log_hparams({"a": 1})
    null.close()
    assert not (tmp_path / "none").exists()

    # under torch.distributed only rank 0 writes
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    with make_tracker("tensorboard", tmp_path / "rank1") as tb:
        assert not tb.active
        tb.log_scalars({"a": 1.0}, step=0)
        assert not tb.log_images("x", torch.rand(4, 1, 8, 8))
        tb.log_hparams({"a": 1})
    assert not (tmp_path / "rank1").exists()


def test_hparams_are_flattened_to_types_tensorboard_accepts():
    flat = flatten_hparams(
        {
            "model": {"hidden": (512, 512), "prior_kwargs": {"scale": 0.5}},
            "out": Path("r"),
            "binarize": False,
            "x": None,
        }
    )
    assert flat == {
        "model.hidden": "(512, 512)",
        "model.prior_kwargs.scale": 0.5,
        "out": "r",
        "binarize": "False",
    }


def test_unknown_tracker_is_refused():
    with pytest.raises(ValueError, match="tensorboard"):
        RunConfig(log="wandb")
    with pytest.raises(ValueError, match="tensorboard"):
        make_tracker("wandb", "unused")
    for command in ("train", "compare"):
        assert build_parser().parse_args([command, "--log", "tensorboard"]).log == "tensorboard"
        assert build_parser().parse_args([command]).log is None
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--log", "wandb"])


def test_cli_train_writes_tensorboard_run(mnist, tmp_path: Path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--log", "tensorboard", "--epochs", "1", "--device", "cpu"]
    args += ["--train-size", "256", "--test-size", "64", "--iw-samples", "5", "--iw-images", "16"]
    args += ["--latent-dim", "4", "--hidden", "32", "--no-figures", "--quiet"]
    assert main(args) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    acc = _read(out / "tensorboard")
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "test/elbo", "test/log_likelihood", "test/bits_per_dim"} <= scalars
    assert [e.step for e in acc.Scalars("test/elbo")] == [1]
    assert set(acc.Tags()["images"]) == {"images/reconstructions", "images/samples"}
    (recon,) = acc.Images("images/reconstructions")
    assert (recon.width, recon.height) == (16 * 30 + 2, 2 * 30 + 2)  # 28×28 MNIST, padding 2
    hparams, _ = _hparams(acc)
    assert hparams["model.latent_dim"] == 4 and hparams["train.epochs"] == 1
    assert hparams["dataset"] == "mnist" and hparams["model_family"] == "vae"
