"""Checkpoint saving, safe loading, published names and strict weight loading."""

import os
import pickle

import numpy as np
import pytest
import torch

from ops.checkpoint import (
    CheckpointError,
    checkpoint_info,
    load_checkpoint,
    load_weights,
    parse_published_name,
    same_dataset,
    save_checkpoint,
)
from ops.models import TSN

KINETICS = "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_cos_dense_nl_lr0.02_wd2.0e-04.pth.tar"
SOMETHING = "TSM_something_RGB_resnet50_shift8_blockres_avg_segment8_e50_cos_nl_h_8e-4.pth.tar"
TSM_PLAIN = "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"


def test_parse_published_names():
    k = parse_published_name("pretrained/" + KINETICS)
    assert k == dict(
        dataset="kinetics",
        modality="RGB",
        base_model="resnet50",
        is_shift=True,
        shift_div=8,
        shift_place="blockres",
        temporal_pool=False,
        consensus_type="avg",
        num_segments=8,
        non_local=True,
        dense_sample=True,
    )
    s = parse_published_name(SOMETHING)
    assert (s["dataset"], s["non_local"], s["dense_sample"], s["num_segments"]) == (
        "something",
        True,
        False,
        8,
    )
    p = parse_published_name(TSM_PLAIN)
    assert (p["non_local"], p["is_shift"], p["dense_sample"]) == (False, True, False)
    tsn = parse_published_name("TSM_somethingv2_RGB_resnet101_avg_segment16_e45.pth")
    assert (tsn["is_shift"], tsn["base_model"], tsn["num_segments"]) == (False, "resnet101", 16)
    with pytest.raises(CheckpointError, match="keep the published name"):
        parse_published_name("my_model_best.pth")


def test_save_is_atomic_and_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "run" / "ckpt.pth.tar"
    save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, path)
    assert load_checkpoint(path)["epoch"] == 1

    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left.*previous checkpoint there is intact"):
        save_checkpoint({"epoch": 2, "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(path.parent) == ["ckpt.pth.tar"]  # no temporary file left behind


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    target = tmp_path / "pwned.txt"
    bad = tmp_path / "evil.pth.tar"
    torch.save(
        {"state_dict": {}, "x": _Payload(str(target))}, bad, _use_new_zipfile_serialization=True
    )
    target.unlink(missing_ok=True)  # saving may not create it, but make sure
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(bad)
    assert not target.exists()

    legacy = tmp_path / "legacy.pkl"
    with open(legacy, "wb") as f:
        pickle.dump({"state_dict": _Payload(str(target))}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(legacy)
    assert not target.exists()


def test_unreadable_and_non_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a file written by torch.save"):
        load_checkpoint(text)
    lst = tmp_path / "list.pth"
    torch.save([1, 2, 3], lst)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(lst)


def test_plain_state_dict_and_numpy_scalars_load(tmp_path):
    f = tmp_path / "sd.pth"
    torch.save({"a": torch.ones(2)}, f)
    assert torch.equal(load_checkpoint(f)["state_dict"]["a"], torch.ones(2))
    g = tmp_path / "old.pth.tar"
    torch.save({"state_dict": {}, "best_prec1": np.float64(75.6), "epoch": 3}, g)
    assert float(load_checkpoint(g)["best_prec1"]) == 75.6


def _published_checkpoint(model: TSN) -> dict:
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    return {
        "epoch": 100,
        "arch": "resnet50",
        "state_dict": sd,
        "optimizer": {"state": {}, "param_groups": []},
        "best_prec1": 75.6,
    }


def test_published_checkpoint_loads_strictly_and_wrong_keys_are_listed(tmp_path):
    torch.manual_seed(0)
    src = TSN(
        400,
        8,
        "RGB",
        base_model="resnet50",
        is_shift=True,
        non_local=True,
        dropout=0.5,
        pretrain="scratch",
    )
    path = tmp_path / KINETICS
    save_checkpoint(_published_checkpoint(src), path)
    ckpt = load_checkpoint(path)
    info = checkpoint_info(ckpt, path)
    cfg = info["model_config"]
    assert (cfg["num_class"], cfg["non_local"], info["dataset"], info["dense_sample"]) == (
        400,
        True,
        "kinetics",
        True,
    )
    assert info["published"] and (info["epoch"], info["best_prec1"]) == (100, 75.6)
    dst = TSN(**cfg, pretrain="scratch")
    load_weights(dst, ckpt["state_dict"])
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k

    broken = dict(ckpt["state_dict"])
    broken.pop("module.base_model.layer2.0.nl.theta.weight")
    broken["module.base_model.layer9.weight"] = torch.zeros(1)
    broken["module.new_fc.weight"] = torch.zeros(174, 2048)
    with pytest.raises(CheckpointError) as err:
        load_weights(dst, broken)
    msg = str(err.value)
    assert "\n" not in msg
    assert "1 missing: base_model.layer2.0.nl.theta.weight" in msg
    assert "1 unexpected: base_model.layer9.weight" in msg
    assert "new_fc.weight (174, 2048) vs (400, 2048)" in msg


def test_published_classifier_head_maps_to_new_fc():
    model = TSN(
        5, 4, "RGB", base_model="mobilenetv2", is_shift=True, dropout=0.5, pretrain="scratch"
    )
    sd = {
        ("module." + k).replace("new_fc.", "base_model.classifier."): v.clone() + 1
        for k, v in model.state_dict().items()
    }
    load_weights(model, sd)
    torch.testing.assert_close(model.new_fc.bias, sd["module.base_model.classifier.bias"])


def test_own_checkpoint_config_wins_over_file_name(tmp_path):
    model = TSN(3, 4, "RGB", base_model="resnet18", is_shift=True, dropout=0.5, pretrain="scratch")
    path = tmp_path / "whatever_name.pth"
    save_checkpoint(
        {
            "state_dict": model.state_dict(),
            "model_config": model.model_config(),
            "dataset": "synthetic",
            "dense_sample": True,
        },
        path,
    )
    info = checkpoint_info(load_checkpoint(path), path)
    cfg = info["model_config"]
    assert (
        info["dataset"] == "synthetic" and cfg["base_model"] == "resnet18" and cfg["num_class"] == 3
    )
    assert info["dense_sample"] is True and not info["published"]


def test_same_dataset_reads_the_stored_dataset_else_the_published_name(tmp_path, caplog):
    model = TSN(3, 4, "RGB", base_model="resnet18", dropout=0.5, pretrain="scratch")
    own = tmp_path / "TSM_kinetics_RGB_resnet18_avg_segment4_e1.pth"  # a misleading name
    save_checkpoint(
        {
            "state_dict": model.state_dict(),
            "model_config": model.model_config(),
            "dataset": "ucf101",
        },
        own,
    )
    assert same_dataset(own, "ucf101") and not same_dataset(own, "kinetics")
    published = tmp_path / "TSM_something_RGB_resnet18_avg_segment4_e1.pth"
    save_checkpoint({"state_dict": model.state_dict()}, published)
    assert same_dataset(published, "something") and not same_dataset(published, "somethingv2")
    renamed = tmp_path / "something_weights.pth"  # says nothing: another dataset, with a warning
    save_checkpoint({"state_dict": model.state_dict()}, renamed)
    assert not same_dataset(renamed, "something")
    assert "does not say which dataset" in caplog.text
