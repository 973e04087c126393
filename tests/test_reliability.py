"""Reliability guarantees (issue 15), one test each; ``docs/reliability.md`` maps each guarantee to its test."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import zoo
from zoo._pretrained import sha256_file, try_pretrained_backbone
from zoo._registry import _model_entrypoints, _pretrained_cfgs

# --- item 5: SHAREZOO_OFFLINE is really offline -------------------------------------------------------------------


@pytest.fixture()
def offline_project_flag_only(monkeypatch):
    """Only ``SHAREZOO_OFFLINE=1`` set (the hub's own flags unset and its import-time constant off), every socket
    connect and DNS lookup recorded and refused. Yields the list of attempted addresses."""
    import huggingface_hub.constants as hub_constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SHAREZOO_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # as if the hub were imported without its flag
    attempts: list = []

    def record(*args, **kwargs):  # noqa: ARG001
        attempts.append(args[1] if len(args) > 1 and isinstance(args[0], socket.socket) else args[:2])
        raise OSError(f"test: no network ({args!r})")

    monkeypatch.setattr(socket.socket, "connect", record)
    monkeypatch.setattr(socket, "getaddrinfo", record)
    yield attempts


def test_project_offline_flag_implies_library_offline_modes(offline_project_flag_only, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants as hub_constants

    assert zoo.is_offline()
    assert hub_constants.HF_HUB_OFFLINE is True and huggingface_hub.is_offline_mode()
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_project_offline_flag_keeps_an_explicit_user_setting(monkeypatch):
    monkeypatch.setenv("SHAREZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    import os

    zoo.is_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "0" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


class _Toy(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)


@pytest.fixture()
def hub_only_toy(tmp_path):
    """``ztest_rel_toy`` with a weight that lives only on the hub (not cached here)."""

    @zoo.register_model
    def ztest_rel_toy(pretrained=False, **kwargs):
        """A toy model whose only weight is on the hub."""
        return zoo.build_model(_Toy, "ztest_rel_toy", pretrained, dict(width=4), **kwargs)

    src = tmp_path / "model.safetensors"
    save_file(_Toy().state_dict(), str(src))
    zoo.register_pretrained_cfgs({"ztest_rel_toy.v1": zoo.PretrainedCfg(sha256=sha256_file(src),
                                                                         hf_hub_id="sharezoo-test/never-there")})
    yield
    _model_entrypoints.pop("ztest_rel_toy", None)
    _pretrained_cfgs.pop("ztest_rel_toy", None)


def test_offline_create_model_pretrained_miss_is_a_clear_error_without_network(offline_project_flag_only, hub_only_toy):
    with pytest.raises(zoo.PretrainedWeightsError, match="not cached and downloads are off"):
        zoo.create_model("ztest_rel_toy", pretrained=True)
    assert offline_project_flag_only == []


def test_offline_timm_backbone_with_pretrained_weights_makes_no_connect(offline_project_flag_only, monkeypatch,
                                                                         tmp_path):
    import huggingface_hub.constants as hub_constants
    import timm

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache: a miss
    net = try_pretrained_backbone(
        lambda pretrained: timm.create_model("test_resnet.r160_in1k", pretrained=pretrained, num_classes=0),
        "test backbone")
    assert isinstance(net, nn.Module)
    assert offline_project_flag_only == []


def test_offline_url_only_library_weights_make_no_connect(offline_project_flag_only):
    """A library that fetches from a plain url (torch.hub, open_clip, timm url weights) is refused before DNS."""

    def create(pretrained: bool):
        if pretrained:
            socket.create_connection(("example.invalid", 443), timeout=1)
        return nn.Linear(2, 2)

    assert isinstance(try_pretrained_backbone(create, "url-only backbone"), nn.Linear)
    assert offline_project_flag_only == []


def test_offline_build_causal_lm_with_a_hub_id_makes_no_connect(offline_project_flag_only, monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants
    from zoo.llm import build_causal_lm

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded here"):
        build_causal_lm("sharezoo-test/never-there-lm")
    assert offline_project_flag_only == []


def test_offline_cached_pretrained_still_loads(offline_project_flag_only, hub_only_toy):
    cfg = zoo.get_pretrained_cfg("ztest_rel_toy")
    from zoo._pretrained import cache_path

    ref = _Toy()
    dest = cache_path("ztest_rel_toy.v1", cfg)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(ref.state_dict(), str(dest))
    cfg.sha256 = sha256_file(dest)
    m = zoo.create_model("ztest_rel_toy", pretrained=True)
    assert torch.equal(m.lin.weight, ref.lin.weight)
    assert offline_project_flag_only == []


# --- item 4 (part): `--ckpt_path last` without a checkpoint --------------------------------------------------------


def _fit_args(root, data) -> list[str]:
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "configs" / "fusionreid" / "demo.yaml"
    return ["fit", "--config", str(demo), "--trainer.default_root_dir", str(root), "--data.init_args.root", str(data),
            "--trainer.max_epochs", "-1", "--trainer.max_steps", "1", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false"]


def test_fit_ckpt_path_last_without_a_checkpoint_is_an_error(tmp_path, capsys):
    from tasks._lightning_cli import lightning_cli

    with pytest.raises(SystemExit) as e:
        lightning_cli([*_fit_args(tmp_path / "run", tmp_path / "data"), "--ckpt_path", "last"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no last checkpoint under" in err and "last-if-any" in err
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # nothing trained


def test_fit_ckpt_path_last_if_any_starts_fresh_then_resumes(tmp_path):
    from tasks._lightning_cli import lightning_cli

    args = [*_fit_args(tmp_path / "run", tmp_path / "data"), "--ckpt_path", "last-if-any"]
    first = lightning_cli(args)
    assert first.trainer.global_step == 1 and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    second = lightning_cli([*args, "--trainer.max_steps", "2"])
    assert second.trainer.ckpt_path and second.trainer.global_step == 2


def _resume_args(root, data, epochs: int) -> list[str]:
    args = _fit_args(root, data)
    i = args.index("--trainer.max_steps")
    args[i + 1] = "-1"
    args[args.index("--trainer.max_epochs") + 1] = str(epochs)
    return [*args, "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch", "100",
            "--trainer.deterministic", "true"]


def test_seeded_resume_at_an_epoch_boundary_is_bit_exact(tmp_path):
    """A run stopped after epoch 1 and resumed with `--ckpt_path last` ends with exactly the weights of the
    uninterrupted seeded run (global RNGs and the dataset's augmentation generators are restored)."""
    from tasks._lightning_cli import lightning_cli

    data = tmp_path / "data"
    whole = lightning_cli(_resume_args(tmp_path / "whole", data, 2))
    lightning_cli(_resume_args(tmp_path / "cut", data, 1))
    resumed = lightning_cli([*_resume_args(tmp_path / "cut", data, 2), "--ckpt_path", "last"])
    assert resumed.trainer.ckpt_path and resumed.trainer.global_step == whole.trainer.global_step == 4
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


class _SigtermAt(__import__("pytorch_lightning").Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ARG002
        import os
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_writes_a_checkpoint_and_exits_non_zero(tmp_path, monkeypatch):
    import tasks._lightning_cli as lcli
    from tasks._cli_callbacks import SIGTERM_CHECKPOINT
    from tasks.cli import main

    original = lcli.ZooCLI.instantiate_trainer

    def with_sender(self, **kwargs):
        trainer = original(self, **kwargs)
        trainer.callbacks.append(_SigtermAt(2))
        return trainer

    monkeypatch.setattr(lcli.ZooCLI, "instantiate_trainer", with_sender)
    args = _fit_args(tmp_path / "run", tmp_path / "data")
    args[args.index("--trainer.max_steps") + 1] = "50"
    assert main(args) == 143
    ckpt = tmp_path / "run" / "checkpoints" / SIGTERM_CHECKPOINT
    assert ckpt.is_file()
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 2
    monkeypatch.setattr(lcli.ZooCLI, "instantiate_trainer", original)
    resumed = lcli.lightning_cli([*args[:args.index("--trainer.max_steps")], "--trainer.max_steps", "3",
                                  *args[args.index("--trainer.max_steps") + 2:], "--ckpt_path", "last"])
    assert resumed.trainer.ckpt_path.endswith(SIGTERM_CHECKPOINT) and resumed.trainer.global_step == 3


# --- item 6: wrong-thing-loaded errors -----------------------------------------------------------------------------


def test_test_with_a_checkpoint_of_another_task_names_the_mismatch(tmp_path, capsys):
    from pathlib import Path

    from tasks._lightning_cli import lightning_cli

    lightning_cli(_fit_args(tmp_path / "run", tmp_path / "data"))  # a one-step ReIDTask checkpoint
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    pepsi = Path(__file__).resolve().parents[1] / "configs" / "pepsi" / "demo.yaml"
    with pytest.raises(SystemExit) as e:
        lightning_cli(["test", "--config", str(pepsi), "--ckpt_path", str(ckpt)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "tasks.reid.ReIDTask" in err and "tasks.inpainting" in err and str(ckpt) in err


def _saved_toy(tmp_path):
    folder = zoo.save_pretrained(zoo.create_model("fusionreid_tiny", pretrained_backbone=False), tmp_path / "m")
    return folder, folder / "model.safetensors", folder / "config.json"


def test_local_dir_with_a_flipped_byte_is_refused(tmp_path):
    folder, weights, _ = _saved_toy(tmp_path)
    zoo.create_model(f"local-dir:{folder}")  # loads as saved
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01  # inside the last tensor's data: safetensors alone would load it
    weights.write_bytes(bytes(raw))
    with pytest.raises(zoo.PretrainedWeightsError, match="sha256 mismatch") as e:
        zoo.create_model(f"local-dir:{folder}")
    assert str(weights) in str(e.value)


def test_local_dir_whose_config_records_a_wrong_sha256_is_refused(tmp_path):
    import json

    folder, _, cfg_path = _saved_toy(tmp_path)
    cfg = json.loads(cfg_path.read_text())
    cfg["sha256"] = "0" * 64
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(zoo.PretrainedWeightsError, match="key 'sha256'"):
        zoo.create_model(f"local-dir:{folder}")


@pytest.mark.parametrize("edit, key", [({"architecture": "fusionreid_tinny"}, "key 'architecture'"),
                                       ({"model_kwargs": {"pretrained_backbone": False, "num_clases": 3}},
                                        "key 'model_kwargs.num_clases'")])
def test_local_dir_config_errors_name_the_file_and_the_key(tmp_path, edit, key):
    import json

    folder, _, cfg_path = _saved_toy(tmp_path)
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **edit}))
    with pytest.raises(zoo.PretrainedWeightsError) as e:
        zoo.create_model(f"local-dir:{folder}")
    assert str(cfg_path) in str(e.value) and key in str(e.value)


# --- item 3 (part): signal window cache staleness, argument validation ---------------------------------------------


def _signal_copy(root):
    import shutil

    from datamodules.signal import BUNDLED_ROOT

    root.mkdir(parents=True, exist_ok=True)
    for ext in (".hea", ".dat", ".mat", ".atr"):
        if (BUNDLED_ROOT / f"a103l{ext}").is_file():
            shutil.copy(BUNDLED_ROOT / f"a103l{ext}", root / f"a103l{ext}")


def test_signal_cache_key_sees_a_same_size_same_second_rewrite(tmp_path):
    import os

    from datamodules.signal import WFDBPairedSignalDataModule

    root = tmp_path / "data"
    _signal_copy(root)
    dm = WFDBPairedSignalDataModule(root=str(root), records=["a103l"], cache_dir=str(tmp_path / "c"))
    hea = root / "a103l.hea"
    st = hea.stat()
    before = dm._cache_key(["a103l"])
    text = hea.read_text()
    i = text.index(" 250 ") if " 250 " in text else None
    new = text[:i] + " 125 " + text[i + 5:] if i is not None else text.replace("a", "b", 1)
    assert len(new) == len(text) and new != text
    hea.write_text(new)
    os.utime(hea, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored: only the content differs
    assert dm._cache_key(["a103l"]) != before
    os.utime(hea, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # same second, other nanoseconds
    hea.write_text(text)
    os.utime(hea, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert dm._cache_key(["a103l"]) != before


@pytest.mark.parametrize("bad", [{"window_s": 0}, {"fs": 0}, {"window_s": -1}, {"fs": -125}, {"window_s": 1e-6}])
def test_signal_window_and_rate_must_be_positive(bad):
    from datamodules.signal import WFDBPairedSignalDataModule

    with pytest.raises(ValueError, match="must be positive"):
        WFDBPairedSignalDataModule(**bad)


# --- pickles are never executed ------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file (the shape of a real attack, not junk bytes)."""

    def __init__(self, target) -> None:
        self.target = target

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.target),)


def test_a_pickle_payload_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    from zoo._pretrained import load_state_dict_file

    target = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(target)}, p)
    with pytest.raises(zoo.PretrainedWeightsError, match="evil.pth"):
        load_state_dict_file(p)
    assert not target.exists()


# --- item 2: one bad file does not cost a run; item 3/6 (part): mixed extensions, 16-bit images in a ReID split ---


def _small_reid(root):
    from datamodules.synthetic import write_reid_dataset

    write_reid_dataset(root, "market1501", num_train_ids=4, num_test_ids=3, train_images_per_id=4,
                       gallery_images_per_id=3, num_junk=0, num_distractors=0, size=(32, 16))
    return root / "market1501"


def _break_files(d):
    """A truncated query JPEG, a gallery 'JPEG' of junk bytes and an empty training file."""
    q = sorted((d / "query").glob("*.jpg"))[0]
    q.write_bytes(q.read_bytes()[: len(q.read_bytes()) // 2])
    g = sorted((d / "bounding_box_test").glob("*.jpg"))[1]
    g.write_bytes(b"not an image at all")
    t = sorted((d / "bounding_box_train").glob("*.jpg"))[2]
    t.write_bytes(b"")
    return [q, g, t]


def test_reid_setup_reports_every_bad_file_at_once(tmp_path):
    from datamodules._verify import BadFilesError
    from datamodules.reid import ReIDDataModule

    bad = _break_files(_small_reid(tmp_path))
    with pytest.raises(BadFilesError) as e:
        ReIDDataModule(str(tmp_path), num_workers=0).setup("fit")  # before any epoch: no validation needed
    msg = str(e.value)
    assert all(str(p) in msg for p in bad) and "3 of " in msg and "on_bad_file='skip'" in msg


def test_reid_on_bad_file_skip_leaves_them_out_and_counts_them(tmp_path, caplog):
    from datamodules.reid import ReIDDataModule

    d = _small_reid(tmp_path)
    whole = ReIDDataModule(str(tmp_path), num_workers=0)
    n_query, n_gallery = whole.num_query, len(whole.splits["gallery"])
    bad = _break_files(d)
    dm = ReIDDataModule(str(tmp_path), num_workers=0, on_bad_file="skip")
    with caplog.at_level("WARNING"):
        dm.setup("fit")
    assert dm.skipped_files == sorted(str(p) for p in bad)
    assert "3 of " in caplog.text and "skipping them" in caplog.text  # counted and logged, never silent
    assert dm.num_query == n_query - 1 and len(dm.splits["gallery"]) == n_gallery - 1
    assert sorted({pid for _, pid, _ in dm.splits["train"]}) == list(range(dm.num_classes))  # no label gap
    assert all(dm.eval_set[i]["image"].isfinite().all() for i in range(len(dm.eval_set)))


def test_image_header_check_finds_truncation_without_false_alarms(tmp_path):
    from PIL import Image

    from datamodules._verify import check_image

    arr = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for ext in ("png", "jpg"):
        good = tmp_path / f"good.{ext}"
        Image.fromarray(arr).save(good)
        assert check_image(good) is None and check_image(good, "decode") is None
        padded = tmp_path / f"padded.{ext}"
        padded.write_bytes(good.read_bytes() + b"trailing bytes some writers leave")  # decodes fine
        assert check_image(padded) is None
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(good.read_bytes()[:-200])
        assert check_image(cut) is not None and check_image(cut, "off") is None


def test_reid_split_with_mixed_png_and_jpg_reads_both(tmp_path):
    from PIL import Image

    from datamodules.reid import ReIDDataModule

    d = _small_reid(tmp_path)
    n = ReIDDataModule(str(tmp_path)).num_query
    for p in sorted((d / "query").glob("*.jpg"))[::2]:  # every other query re-saved as PNG
        with Image.open(p) as im:
            im.save(p.with_suffix(".png"))
        p.unlink()
    dm = ReIDDataModule(str(tmp_path))
    assert dm.num_query == n and {Path(p).suffix for p, _, _ in dm.splits["query"]} == {".png", ".jpg"}


def test_a_sixteen_bit_png_in_a_reid_split_loads_rescaled_not_white(tmp_path):
    from PIL import Image

    from datamodules.reid import ReIDDataModule

    d = _small_reid(tmp_path)
    q = sorted((d / "query").glob("*.jpg"))[0]
    Image.fromarray(np.full((32, 16), 32896, np.uint16)).save(q.with_suffix(".png"))  # 16-bit mid grey
    q.unlink()
    dm = ReIDDataModule(str(tmp_path), image_size=(32, 16), num_workers=0)
    dm.setup("test")
    i = [k for k, (p, _, _) in enumerate(dm.eval_set.items) if p.endswith(".png")][0]
    expected = (round(32896 * 255 / 65535) / 255 - 0.5) / 0.5  # 128 of 255, normalised with mean = std = 0.5
    assert torch.allclose(dm.eval_set[i]["image"], torch.full((3, 32, 16), expected), atol=1e-6)


class _ValidationFails(__import__("pytorch_lightning").Callback):
    def on_validation_start(self, trainer, pl_module) -> None:  # noqa: ARG002
        raise RuntimeError("test: a bad file found at the first validation")


@pytest.mark.parametrize("own_checkpoint", [True, False])
def test_a_run_that_dies_at_its_first_validation_keeps_an_epoch_end_checkpoint(tmp_path, monkeypatch,
                                                                               own_checkpoint):
    """check_val_every_n_epoch > 1 (the paper config: 30): Lightning's ModelCheckpoint waits for validation, so a
    run killed there had no checkpoint; now last.ckpt is written at every training epoch end, with the config's own
    ModelCheckpoint(save_last) or, when the config has none, the one the CLI adds."""
    import tasks._lightning_cli as lcli

    original = lcli.ZooCLI.instantiate_trainer

    def failing_validation(self, **kwargs):
        trainer = original(self, **kwargs)
        trainer.callbacks.append(_ValidationFails())
        return trainer

    monkeypatch.setattr(lcli.ZooCLI, "instantiate_trainer", failing_validation)
    args = _resume_args(tmp_path / "run", tmp_path / "data", 3)
    args[args.index("--trainer.check_val_every_n_epoch") + 1] = "2"
    if not own_checkpoint:
        args += ["--trainer.callbacks", "[]"]
    with pytest.raises(RuntimeError, match="first validation"):
        lcli.lightning_cli(args)
    ckpts = list((tmp_path / "run").rglob("last.ckpt"))
    assert len(ckpts) == 1
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 4  # both epochs trained, saved before the validation
    monkeypatch.setattr(lcli.ZooCLI, "instantiate_trainer", original)  # the bad file fixed: resume from it
    resumed = lcli.lightning_cli([*args, "--ckpt_path", "last"])
    assert resumed.trainer.ckpt_path and resumed.trainer.global_step == 6
    assert resumed.trainer.current_epoch == 3  # training goes on (the interrupted validation is not repeated)


# --- item 3: window cache validated on load, every layout's rate, header numbers -----------------------------------


def _damage(path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
        return
    arr = np.load(path, mmap_mode="r+")
    if how == "zeroed":
        arr[:] = 0
    else:
        arr[3, 0, 5] = np.nan
    arr.flush()
    del arr


@pytest.mark.parametrize("how", ["zeroed", "nan", "truncated"])
def test_a_bad_signal_cache_file_is_named_and_rebuilt(tmp_path, caplog, how):
    from datamodules.signal import WFDBPairedSignalDataModule

    kwargs = dict(records=["a103l"], window_s=10, cache_dir=str(tmp_path / "c"), ecg_sqi=None)
    first = WFDBPairedSignalDataModule(**kwargs)
    first.setup()
    before = first.dataset("train")[3]["ppg"].clone()
    bad = first.cache_path / "ppg.npy"
    _damage(bad, how)
    again = WFDBPairedSignalDataModule(**kwargs)
    with caplog.at_level("WARNING"):
        again.setup()
    assert str(bad) in caplog.text and "Rebuilding it" in caplog.text
    after = again.dataset("train")[3]["ppg"]
    assert torch.equal(after, before) and after.isfinite().all()


def test_a_truncated_cache_file_read_after_setup_names_the_file(tmp_path):
    from datamodules.signal import SignalDataError, WFDBPairedSignalDataModule

    dm = WFDBPairedSignalDataModule(records=["a103l"], window_s=10, cache_dir=str(tmp_path / "c"), ecg_sqi=None)
    dm.setup()
    _damage(dm.cache_path / "ecg.npy", "truncated")
    with pytest.raises(SignalDataError, match="ecg.npy cannot be read") as e:
        dm.dataset("train")[0]
    assert str(dm.cache_path / "ecg.npy") in str(e.value)


def _header_edit(root, field: int, value: str) -> None:
    hea = root / "a103l.hea"
    lines = hea.read_text().splitlines()
    tokens = lines[0].split()
    tokens[field] = value
    hea.write_text("\n".join([" ".join(tokens), *lines[1:]]) + "\n")


@pytest.mark.parametrize("layout, claimed", [("cinc2015", "125"), ("bidmc", None)])
def test_every_layout_enforces_its_sampling_rate(tmp_path, layout, claimed):
    """No expected_fs given: the layout's own rate applies (cinc2015 250 Hz; bidmc 125 Hz)."""
    from datamodules.signal import SignalDataError, WFDBPairedSignalDataModule

    root = tmp_path / "data"
    _signal_copy(root)
    if claimed:
        _header_edit(root, 2, claimed)  # a header claiming 125 Hz for 250 Hz data
    with pytest.raises(SignalDataError, match=r"record a103l: sampling rate .* Hz, expected"):
        WFDBPairedSignalDataModule(str(root), layout=layout, records=["a103l"], window_s=10,
                                   cache_dir=str(tmp_path / "c")).setup()


@pytest.mark.parametrize("field, value, what", [(3, "-82500", "sample count"), (3, "lots", "sample count"),
                                                (2, "fast", "sampling frequency")])
def test_invalid_numbers_in_a_header_name_the_record(tmp_path, field, value, what):
    from datamodules.signal import SignalDataError, WFDBPairedSignalDataModule

    root = tmp_path / "data"
    _signal_copy(root)
    _header_edit(root, field, value)
    with pytest.raises(SignalDataError, match=f"record a103l: .*invalid {what} '{value}'"):
        WFDBPairedSignalDataModule(str(root), records=["a103l"], window_s=10, cache_dir=str(tmp_path / "c")).setup()


def test_inpainting_setup_reports_every_bad_image_at_once_or_skips_them(tmp_path, caplog):
    from datamodules._verify import BadFilesError
    from datamodules.inpainting import CelebAHQInpaintingDataModule
    from datamodules.synthetic import write_skimage_photos

    root = write_skimage_photos(tmp_path / "c", "celebahq", image_size=32, crops_per_photo=1)
    tests = sorted((root / "test_fh256").glob("*.png"))
    tests[0].write_bytes(tests[0].read_bytes()[:-40])  # truncated
    tests[2].write_bytes(b"\x89PNG\r\n junk")
    with pytest.raises(BadFilesError) as e:
        CelebAHQInpaintingDataModule(str(root), image_size=32, num_workers=0).setup("test")
    assert str(tests[0]) in str(e.value) and str(tests[2]) in str(e.value)
    dm = CelebAHQInpaintingDataModule(str(root), image_size=32, num_workers=0, on_bad_image="skip")
    with caplog.at_level("WARNING"):
        dm.setup("test")
    assert dm.skipped_files == [str(tests[0]), str(tests[2])] and "2 of " in caplog.text
    assert len(dm.datasets["test"]) == len(tests) - 2


def test_a_sixteen_bit_image_for_inpainting_is_rescaled(tmp_path):
    from PIL import Image

    from datamodules.inpainting import load_image, load_mask_image

    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(tmp_path / "g16.png")
    assert (load_image(tmp_path / "g16.png") == 128).all()
    mask = np.zeros((8, 8), np.uint16)
    mask[2:5, 2:5] = 65535
    Image.fromarray(mask).save(tmp_path / "m16.png")  # 16-bit binary mask: white = 65535
    np.testing.assert_array_equal(load_mask_image(tmp_path / "m16.png", 8, holes_are="white"), mask > 0)
