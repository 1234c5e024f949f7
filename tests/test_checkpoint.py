"""Checkpoints: the original .pth layouts, our safetensors format, bad files, ImageNet backbone init, convert."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from conftest import MICRO_HRNET

from mseg_semantic.cli import main
from mseg_semantic.errors import CheckpointError, InputError
from mseg_semantic.models import (
    build_model,
    convert_checkpoint,
    load_backbone_weights,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from mseg_semantic.zoo import load_model

NUM_CLASSES = 11


def random_state_dict(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every float tensor random (so a load that copies nothing, or the wrong thing, shows up)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        k: torch.rand(v.shape, generator=generator) + 0.5 if v.is_floating_point() else v + 7
        for k, v in model.state_dict().items()
    }


def micro_hrnet() -> torch.nn.Module:
    return build_model("hrnet", NUM_CLASSES, config=MICRO_HRNET)


def save_original(state_dict: dict[str, torch.Tensor], path: Path, **kwargs) -> Path:
    """A file in the layout of the released checkpoints: DDP prefix, optimizer state and counters."""
    momentum = {i: {"momentum_buffer": torch.zeros_like(v)} for i, v in enumerate(state_dict.values())}
    checkpoint = {
        "epoch": 10,
        "state_dict": {"module." + k: v for k, v in state_dict.items()},
        "optimizer": {"state": momentum, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": list(momentum)}]},
        "current_iter": 500_000,
        "max_iter": 500_000,
    }
    torch.save(checkpoint, path, **kwargs)
    return path


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    return random_state_dict(micro_hrnet())


@pytest.fixture
def original_pth(tmp_path: Path, weights) -> Path:
    return save_original(weights, tmp_path / "original.pth")


def test_round_trip_pth_to_safetensors_is_bit_identical(tmp_path, weights, original_pth):
    model = load_model(original_pth, arch="hrnet", config=MICRO_HRNET)  # num_classes read from the head
    assert model.num_classes == NUM_CLASSES and not model.training
    assert_same_tensors(model.state_dict(), weights)

    out = save_checkpoint(model, tmp_path / "model.safetensors", taxonomy="camvid-11", scales=[1.0])
    metadata = read_metadata(out)
    assert metadata["arch"] == "hrnet" and metadata["num_classes"] == str(NUM_CLASSES)
    assert metadata["taxonomy"] == "camvid-11" and metadata["scales"] == "[1.0]"

    again = load_model(out)  # the file alone rebuilds the model
    assert again.config == model.config
    assert_same_tensors(again.state_dict(), weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "original.pth"]  # no temp files


def test_safetensors_file_is_recognised_whatever_its_header_length(tmp_path, weights):
    # The first byte of the header length can be 0x80, the first byte of a pickle too.
    model = micro_hrnet()
    model.load_state_dict(weights)
    path = save_checkpoint(model, tmp_path / "padded.safetensors", note="")
    start = (0x80 - path.read_bytes()[0]) % 256 - 8  # headers are padded to a multiple of 8 bytes
    for padding in range(max(start, 0), start + 16):
        path = save_checkpoint(model, path, note="x" * padding)
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert_same_tensors(load_model(path).state_dict(), weights)
    # Readable like any other new file (safetensors alone writes mode 0600).
    (tmp_path / "plain").write_bytes(b"")
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode


@pytest.mark.parametrize(
    "layout",
    ["original", "original-legacy-format", "bare-with-prefix", "bare-without-prefix", "without-batch-counters"],
)
def test_load_checkpoint_accepts_every_layout(tmp_path, weights, layout):
    path = tmp_path / "weights.pth"
    if layout == "original":
        save_original(weights, path)
    elif layout == "original-legacy-format":  # torch.save before PyTorch 1.6
        save_original(weights, path, _use_new_zipfile_serialization=False)
    elif layout == "bare-with-prefix":
        torch.save({"module." + k: v for k, v in weights.items()}, path)
    elif layout == "bare-without-prefix":
        torch.save(weights, path)
    else:  # files written before PyTorch 0.4.1 have no BN batch counters
        torch.save({k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}, path)
    model = micro_hrnet()
    metadata = load_checkpoint(model, path)
    expected = dict(weights)
    if layout == "without-batch-counters":
        expected.update({k: torch.tensor(0) for k in weights if k.endswith("num_batches_tracked")})
    assert_same_tensors(model.state_dict(), expected)
    assert metadata.get("epoch") == ("10" if layout.startswith("original") else None)


def test_wrong_class_count_names_the_files_count(tmp_path, original_pth):
    model = build_model("hrnet", 194, config=MICRO_HRNET)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(model, original_pth)
    message = str(error.value)
    assert "original.pth does not fit the model 'hrnet' with 194 classes" in message
    assert "the file's classifier has 11 classes; use num_classes=11" in message
    assert "last_layer.3.weight is (11, 60, 1, 1) in the file, (194, 60, 1, 1) in the model" in message
    assert "missing" not in message  # only the head differs


def test_wrong_arch_is_recognised_from_the_keys(tmp_path):
    # Names of a PSPNet-50 checkpoint (tiny tensors: only the names matter for the diagnosis).
    with torch.device("meta"):
        names = list(build_model("pspnet50", 19).state_dict())
    path = tmp_path / "pspnet.pth"
    torch.save({"state_dict": {"module." + k: torch.zeros(19 if k == "cls.4.weight" else 1) for k in names}}, path)
    with pytest.raises(CheckpointError, match="the file's keys are those of arch 'pspnet50'; use arch='pspnet50'"):
        load_checkpoint(micro_hrnet(), path)
    with pytest.raises(CheckpointError, match=r"does not record its architecture; pass arch=\.\.\. .*'pspnet50'"):
        load_model(path)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, weights):
    broken = dict(weights)
    del broken["last_layer.1.running_var"]
    broken["last_layer.5.weight"] = torch.zeros(3)
    broken["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": broken}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(micro_hrnet(), path)
    message = str(error.value)
    assert "1 key(s) of the model are missing from the file: last_layer.1.running_var" in message
    assert "1 key(s) of the file are not in the model: last_layer.5.weight" in message
    assert "conv1.weight is (64, 3, 5, 5) in the file, (64, 3, 3, 3) in the model" in message


def write_case(tmp_path: Path, case: str, original_pth: Path) -> Path:
    path = tmp_path / f"{case}.pth"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "html":  # what a failed Google Drive download saves
        path.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>")
    elif case == "truncated-pth":
        data = original_pth.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "truncated-safetensors":
        full = save_checkpoint(load_model(original_pth, arch="hrnet", config=MICRO_HRNET), tmp_path / "a.safetensors")
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "not-a-checkpoint":
        path.write_bytes(b"\x13\x37" * 500)
    elif case == "no-state-dict":
        torch.save({"epoch": 3, "optimizer": {}}, path)
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("empty", r"empty\.pth is empty \(0 bytes\)"),
        ("html", r"html\.pth is an HTML/XML page, not weights"),
        ("truncated-pth", r"truncated-pth\.pth is corrupt or truncated"),
        ("truncated-safetensors", r"truncated-safetensors\.pth is a corrupt or truncated safetensors file"),
        ("not-a-checkpoint", r"not-a-checkpoint\.pth is not a PyTorch or safetensors checkpoint"),
        ("no-state-dict", r"no-state-dict\.pth holds no state_dict .* \['epoch', 'optimizer'\]"),
        ("missing", r"checkpoint .*missing\.pth does not exist"),
    ],
)
def test_files_that_are_not_checkpoints_get_a_clear_message(tmp_path, original_pth, case, expected):
    path = write_case(tmp_path, case, original_pth)
    with pytest.raises(CheckpointError, match=expected) as error:
        load_model(path, arch="hrnet", config=MICRO_HRNET)
    assert "Traceback" not in str(error.value) and "\n" not in str(error.value)


class RunsCodeOnLoad:
    """Unpickling this calls os.mkdir: what a malicious checkpoint would do with something worse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("entry_point", ["load_checkpoint", "load_model", "backbone_weights"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, weights, entry_point):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": weights, "payload": RunsCodeOnLoad(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pth: it asks to import posix\.mkdir"):
        if entry_point == "load_checkpoint":
            load_checkpoint(micro_hrnet(), path)
        elif entry_point == "load_model":
            load_model(path, arch="hrnet", config=MICRO_HRNET)
        else:
            build_model("hrnet", NUM_CLASSES, config=MICRO_HRNET, backbone_weights=path)
    assert not marker.exists()


def test_save_checkpoint_refuses_reserved_keys_and_foreign_models(tmp_path):
    with pytest.raises(InputError, match=r"metadata keys \['arch'\] are written by save_checkpoint"):
        save_checkpoint(micro_hrnet(), tmp_path / "x.safetensors", arch="pspnet50")
    with pytest.raises(InputError, match="lacks"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_convert_checkpoint_drops_the_optimizer_and_refuses_to_overwrite(tmp_path, weights, original_pth):
    out = tmp_path / "slim.safetensors"
    convert_checkpoint(original_pth, out, "hrnet", config=MICRO_HRNET, taxonomy="camvid-11")
    assert out.stat().st_size < 0.6 * original_pth.stat().st_size  # the momentum buffers are gone
    metadata = read_metadata(out)
    assert metadata["source"] == "original.pth" and metadata["taxonomy"] == "camvid-11"
    assert_same_tensors(load_model(out).state_dict(), weights)

    with pytest.raises(InputError, match=r"slim\.safetensors already exists; pass overwrite=True"):
        convert_checkpoint(original_pth, out, "hrnet", config=MICRO_HRNET)
    convert_checkpoint(original_pth, out, "hrnet", config=MICRO_HRNET, overwrite=True)
    assert "taxonomy" not in read_metadata(out)

    # A file that does not fit the arch is refused, not converted.
    with pytest.raises(CheckpointError, match="does not fit the model 'hrnet_w48'"):
        convert_checkpoint(original_pth, tmp_path / "other.safetensors", "hrnet_w48")
    assert not (tmp_path / "other.safetensors").exists()


def test_convert_command(tmp_path, capsys, original_pth):
    config = tmp_path / "micro.yaml"
    config.write_text(str(MICRO_HRNET).replace("'", '"'))  # a JSON document is YAML
    out = tmp_path / "out.safetensors"
    argv = ["convert", str(original_pth), str(out), "--arch", "hrnet", "--config", str(config)]

    assert main([*argv, "--taxonomy", "camvid-11", "--meta", "note=fine-tuned"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    metadata = read_metadata(out)
    assert (metadata["taxonomy"], metadata["note"], metadata["num_classes"]) == ("camvid-11", "fine-tuned", "11")

    assert main(argv) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert "taxonomy" not in read_metadata(out)
    assert main([*argv, "--force", "--meta", "arch=x"]) == 2
    assert "'arch' is set by 'mseg convert' itself" in capsys.readouterr().err
    assert main(["convert", str(original_pth), str(tmp_path / "w48.safetensors"), "--arch", "hrnet_w48"]) == 2
    assert "use arch='hrnet'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["micro.yaml", "original.pth", "out.safetensors"]


def imagenet_hrnet_file(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A file in the layout of the HRNet authors' ImageNet model: plain state_dict, our backbone names, no
    segmentation head, plus the classification parts (incre_modules, downsamp_modules, final_layer, classifier)."""
    tensors = {k: v for k, v in random_state_dict(model, seed=1).items() if not k.startswith("last_layer.")}
    tensors["incre_modules.0.0.conv1.weight"] = torch.randn(32, 4, 1, 1)
    tensors["downsamp_modules.0.0.weight"] = torch.randn(256, 128, 3, 3)
    tensors["final_layer.0.weight"] = torch.randn(2048, 1024, 1, 1)
    tensors["classifier.weight"] = torch.randn(1000, 2048)
    tensors["classifier.bias"] = torch.randn(1000)
    torch.save(tensors, path)
    return tensors


def test_hrnet_backbone_weights_load_and_skip_the_classifier(tmp_path, caplog):
    path = tmp_path / "hrnetv2_imagenet_pretrained.pth"
    tensors = imagenet_hrnet_file(path, micro_hrnet())
    with caplog.at_level(logging.INFO, logger="mseg_semantic"):
        model = build_model("hrnet", NUM_CLASSES, config=MICRO_HRNET, backbone_weights=path)
    own = model.state_dict()
    backbone = [k for k in own if not k.startswith("last_layer.")]
    assert all(torch.equal(own[k], tensors[k]) for k in backbone)
    assert not torch.equal(own["last_layer.1.weight"], torch.zeros_like(own["last_layer.1.weight"]) + 0.5)
    assert f"loaded {len(backbone)} tensors; skipped 5 that the model has no place for (incre_modules" in caplog.text

    report = load_backbone_weights(micro_hrnet(), path)
    assert report.skipped == [
        k for k in tensors if k.split(".")[0] in ("incre_modules", "downsamp_modules", "final_layer", "classifier")
    ]
    assert set(report.not_in_file) == {k for k in own if k.startswith("last_layer.") and "num_batches" not in k}


def test_backbone_weights_of_another_width_or_kind_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match=r"conv1\.weight is \(32, 3, 3, 3\) in the file but conv1\.weight is "):
        build_model("hrnet", NUM_CLASSES, config=MICRO_HRNET, backbone_weights=path)
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, path)
    with pytest.raises(CheckpointError, match="none of its 1 tensors has a place in the model"):
        build_model("hrnet", NUM_CLASSES, config=MICRO_HRNET, backbone_weights=path)


def test_pspnet_backbone_weights_from_a_deep_stem_resnet_file(tmp_path, caplog):
    # semseg's resnet50_v2.pth layout: stem as conv1..bn3 attributes of the ResNet, layer1..4, fc; files that
    # old have no BN batch counters.
    stem = {"layer0.0": "conv1", "layer0.1": "bn1", "layer0.3": "conv2", "layer0.4": "bn2", "layer0.6": "conv3",
            "layer0.7": "bn3"}  # fmt: skip
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model("pspnet50", 3).state_dict().items()}
    generator = torch.Generator().manual_seed(2)
    tensors = {}
    for key, shape in shapes.items():
        module, _, rest = key.partition(".")
        if module in ("layer0", "layer1", "layer2", "layer3", "layer4") and "num_batches_tracked" not in key:
            index, _, leaf = rest.partition(".")
            name = f"{stem[f'{module}.{index}']}.{leaf}" if module == "layer0" else key
            tensors[name] = torch.randn(shape, generator=generator)
    tensors["fc.weight"], tensors["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    path = tmp_path / "resnet50_v2.pth"
    torch.save(tensors, path)

    with caplog.at_level(logging.INFO, logger="mseg_semantic"):
        model = build_model("pspnet50", 3, backbone_weights=path)
    own = model.state_dict()
    assert torch.equal(own["layer0.0.weight"], tensors["conv1.weight"])
    assert torch.equal(own["layer0.7.running_var"], tensors["bn3.running_var"])
    assert torch.equal(own["layer4.2.conv3.weight"], tensors["layer4.2.conv3.weight"])
    assert "skipped 2 that the model has no place for (fc.weight, fc.bias)" in caplog.text


def test_one_load_model():
    """``load_model`` is the zoo's, also importable from the package; ``mseg_semantic.models`` (below the zoo) has
    no alias of it (that alias made the two import each other)."""
    import mseg_semantic
    import mseg_semantic.models
    import mseg_semantic.zoo

    assert mseg_semantic.load_model is mseg_semantic.zoo.load_model
    assert not hasattr(mseg_semantic.models, "load_model")


@pytest.mark.parametrize(
    ("num_classes", "taxonomy"),
    [(194, "universal"), (316, "naive"), (11, "camvid-11"), (21, "voc2012"), (19, None), (5, None)],
)
def test_loaded_model_carries_the_taxonomy_its_class_count_tells(tmp_path, num_classes, taxonomy):
    """An original .pth records no taxonomy: 194 is universal, 316 naive, an oracle's the test taxonomy with that
    many classes; 19 (kitti-19, wilddash-19, cityscapes-19, ...) and 5 cannot be told."""
    path = save_original(build_model("hrnet", num_classes, config=MICRO_HRNET).state_dict(), tmp_path / "m.pth")
    model = load_model(path, arch="hrnet", config=MICRO_HRNET)
    assert model.taxonomy == taxonomy and model.preset is None
    if num_classes == 19:
        assert load_model(path, arch="hrnet", config=MICRO_HRNET, taxonomy="kitti-19").taxonomy == "kitti-19"


def test_loaded_model_carries_the_recorded_taxonomy_and_preset(tmp_path):
    from mseg_semantic.errors import TaxonomyError

    model = build_model("hrnet", 19, config=MICRO_HRNET)
    path = save_checkpoint(model, tmp_path / "kitti.safetensors", taxonomy="kitti-19", preset="1080_ss")
    loaded = load_model(path)
    assert (loaded.taxonomy, loaded.preset, loaded.num_classes) == ("kitti-19", "1080_ss", 19)
    # What a model carries is recorded again when it is saved, unless told otherwise.
    again = load_model(save_checkpoint(loaded, tmp_path / "again.safetensors"))
    assert (again.taxonomy, again.preset) == ("kitti-19", "1080_ss")
    other = load_model(save_checkpoint(loaded, tmp_path / "other.safetensors", taxonomy="wilddash-19"))
    assert other.taxonomy == "wilddash-19"
    # An explicit taxonomy wins over the recorded one, and must have the model's class count.
    assert load_model(path, taxonomy="cityscapes-19").taxonomy == "cityscapes-19"
    with pytest.raises(TaxonomyError, match="the model has 19 output classes but taxonomy 'camvid-11' has 11"):
        load_model(path, taxonomy="camvid-11")
    # Such a file is not written (mseg convert --taxonomy with the wrong class count made one of 264 MB)...
    with pytest.raises(TaxonomyError, match="the model has 19 output classes but taxonomy 'camvid-11' has 11"):
        save_checkpoint(model, tmp_path / "wrong.safetensors", taxonomy="camvid-11")
    with pytest.raises(TaxonomyError, match="kitti19"):
        save_checkpoint(model, tmp_path / "unknown.safetensors", taxonomy="kitti19")
    assert not list(tmp_path.glob("wrong*")) and not list(tmp_path.glob("unknown*"))
    # ... and one written by another tool is refused when it is loaded.
    wrong = _recording(path, tmp_path / "wrong.safetensors", taxonomy="camvid-11")
    with pytest.raises(TaxonomyError, match="the model has 19 output classes but taxonomy 'camvid-11' has 11"):
        load_model(wrong)
    unknown = _recording(path, tmp_path / "unknown.safetensors", taxonomy="kitti19")
    with pytest.raises(TaxonomyError, match="kitti19"):
        load_model(unknown)


def _recording(source: Path, target: Path, **metadata: str) -> Path:
    """A copy of the safetensors file ``source`` whose header records ``metadata`` instead (as another tool might)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no iterator
        header = {**handle.metadata(), **metadata}
    save_file(tensors, str(target), metadata=header)
    return target
