"""Models: key names/shapes of the originals, the tiny-HRNet numeric self-check, forward/backward on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_HRNET

from mseg_semantic.errors import InputError
from mseg_semantic.models import HRNET_W48, build_model, list_models, load_checkpoint, load_hrnet_config

DATA = Path(__file__).parent / "data"
TINY_REF = DATA / "tiny_hrnet"  # config, key list, weights, an input and the original's logits (data/README.md)


def key_table(model: torch.nn.Module) -> list[list]:
    """``[name, shape, dtype]`` per state_dict entry, in the layout of the reference key files."""
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


def test_list_models_names_every_arch_and_filters_by_glob():
    assert {"hrnet", "hrnet_w48", "pspnet50", "pspnet101"} <= set(list_models())
    assert list_models("pspnet*") == ["pspnet101", "pspnet152", "pspnet50"]
    assert list_models("nothing*") == []


def test_unknown_arch_and_option_are_named():
    with pytest.raises(InputError, match=r"unknown model arch 'hrnet_w46' \(did you mean 'hrnet_w48'\?\)"):
        build_model("hrnet_w46", 194)
    with pytest.raises(InputError, match=r"'hrnet_w48'.*unexpected keyword argument 'dropout'"):
        build_model("hrnet_w48", 194, dropout=0.1)
    with pytest.raises(InputError, match=r"^PSPNet config: key 'bin': unknown key, did you mean 'bins'\? \(known: "):
        build_model("pspnet50", 19, bin=(1, 2))
    with pytest.raises(InputError, match=r"^PSPNet config: key 'dropout': expected float, got 'high'$"):
        build_model("pspnet50", 19, dropout="high")
    with pytest.raises(InputError, match=r"^PSPNet config: key 'zoom_factor': must be 1, 2, 4 or 8, got 3$"):
        build_model("pspnet50", 19, zoom_factor=3)
    with pytest.raises(InputError, match="use arch 'pspnet101'"):
        build_model("pspnet50", 19, config={"layers": 101})


def test_hrnet_config_reads_the_original_yaml_layout(tmp_path):
    # hydra's `_target_` keys and the HRNetArchConfig wrapper of the original seg_hrnet.yaml are accepted.
    layout = {"HRNetArchConfig": {"_target_": "mseg_semantic.model.seg_hrnet_config.HRNetArchConfig", **TINY_HRNET}}
    layout["HRNetArchConfig"]["STAGE2"] = {"_target_": "x.HRNetStageConfig", **TINY_HRNET["STAGE2"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(layout))  # JSON is YAML
    config = load_hrnet_config(path)
    assert config == load_hrnet_config(TINY_HRNET)
    assert config.stage4.num_channels == (8, 16, 32, 64)
    assert load_hrnet_config(config.to_dict()) == config

    typo = {**TINY_HRNET, "STAGE1": {**TINY_HRNET["STAGE1"], "NUM_RANCHES": 1}}
    path.write_text(json.dumps(typo))
    with pytest.raises(
        InputError, match=r"tiny\.yaml: key 'STAGE1.NUM_RANCHES': unknown key, did you mean 'NUM_BRANCHES'\? \(known: "
    ):
        build_model("hrnet", 11, config=path)
    with pytest.raises(InputError, match=r"missing\.yaml: config file does not exist"):
        build_model("hrnet", 11, config=tmp_path / "missing.yaml")
    with pytest.raises(InputError, match=r"^HRNet config: key 'STAGE3.NUM_BLOCKS.1': expected int, got 'one'$"):
        build_model("hrnet", 11, config={**TINY_HRNET, "STAGE3": {**TINY_HRNET["STAGE3"], "NUM_BLOCKS": [1, "one", 1]}})
    with pytest.raises(InputError, match=r"HRNet config: key 'STAGE2\.NUM_BRANCHES': is 2 but NUM_BLOCKS is"):
        build_model("hrnet", 11, config={**TINY_HRNET, "STAGE2": {**TINY_HRNET["STAGE2"], "NUM_BLOCKS": [1]}})
    with pytest.raises(InputError, match=r"^HRNet config: key 'STAGE4': missing required key$"):
        build_model("hrnet", 11, config={k: v for k, v in TINY_HRNET.items() if k != "STAGE4"})


def test_tiny_hrnet_yaml_matches_the_written_out_config():
    assert load_hrnet_config(TINY_REF / "tiny_hrnet.yaml") == load_hrnet_config(TINY_HRNET)


def test_tiny_hrnet_has_the_reference_keys_and_reproduces_its_logits():
    ref = TINY_REF
    model = build_model("hrnet", num_classes=11, config=ref / "tiny_hrnet.yaml")
    assert key_table(model) == json.loads((ref / "tiny_hrnet_keys.json").read_text())["keys"]

    load_checkpoint(model, ref / "tiny_hrnet_seed0.pth")  # strict: raises on any missing/unexpected key
    model.eval()
    image = torch.from_numpy(np.load(ref / "input_1x3x97x129_f32.npy"))
    expected = np.load(ref / "logits_1x11x97x129_f32.npy")
    with torch.no_grad():
        logits = model(image).numpy()
    assert logits.shape == expected.shape == (1, 11, 97, 129)
    assert np.abs(logits - expected).max() < 1e-4
    assert np.array_equal(logits.argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.parametrize("arch", ["hrnet_w48", "pspnet50", "pspnet101"])
def test_full_size_models_have_the_original_keys_and_shapes(arch: str):
    reference = json.loads((DATA / "models" / f"{arch}_keys.json").read_text())
    with torch.device("meta"):  # shapes without allocating or initialising the weights
        model = build_model(arch, num_classes=reference["num_classes"])
    assert key_table(model) == reference["keys"]
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"]


def test_hrnet_w48_with_194_classes_has_65_985_554_parameters():
    with torch.device("meta"):
        model = build_model("hrnet_w48", num_classes=194)
    assert sum(p.numel() for p in model.parameters()) == 65_985_554
    assert model.arch == "hrnet_w48" and model.config == HRNET_W48 and model.num_classes == 194
    # hrnet_w48's stage configuration is fixed; a W48 config given explicitly is fine, another one is not.
    with torch.device("meta"):
        assert build_model("hrnet_w48", 19, config=HRNET_W48.to_dict()).num_classes == 19
    with pytest.raises(InputError, match="use arch 'hrnet'"):
        build_model("hrnet_w48", 19, config=TINY_HRNET)


def assert_every_parameter_has_a_gradient(model: torch.nn.Module) -> None:
    without = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_small_hrnet_forward_backward_and_output_sizes():
    torch.manual_seed(0)
    model = build_model("hrnet", num_classes=5, config=TINY_HRNET)
    image = torch.randn(2, 3, 33, 41)
    target = torch.randint(0, 5, (2, 33, 41))
    target[:, :4] = 255  # ignored pixels, as in training

    logits = model(image)  # train mode: logits only, no loss inside the model
    assert logits.shape == (2, 5, 33, 41)
    F.cross_entropy(logits, target, ignore_index=255).backward()
    assert_every_parameter_has_a_gradient(model)

    model.eval()
    with torch.no_grad():
        # Any input size: the original only allowed (H - 1) % 8 == 0, the output is still the input's size.
        assert model(torch.randn(1, 3, 30, 45)).shape == (1, 5, 30, 45)


def test_models_return_their_logits_before_the_final_resize():
    """``forward(x, resize=False)``: the logits that inference upsamples itself (only the pixels it keeps)."""
    torch.manual_seed(0)
    hrnet = build_model("hrnet", num_classes=5, config=TINY_HRNET).eval()
    pspnet = build_model("pspnet50", num_classes=3).eval()
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        for model, stride in [(hrnet, 4), (pspnet, 8)]:
            low = model(x, resize=False)
            assert low.shape == (1, model.num_classes, -(-37 // stride), -(-50 // stride))
            up = F.interpolate(low, size=(37, 50), mode="bilinear", align_corners=True)
            torch.testing.assert_close(up, model(x), rtol=0, atol=0)
        pspnet.train()
        logits, aux = pspnet(torch.randn(2, 3, 33, 33), resize=False)
    assert logits.shape == aux.shape == (2, 3, 5, 5)


@pytest.mark.parametrize("arch", ["hrnet", "pspnet50"])
def test_every_batchnorm_folds_into_the_convolution_before_it(arch: str):
    """``conv_bn_pairs()`` (what inference folds without tracing) is what the data flow says: every BatchNorm reads
    the output of the convolution paired with it, and nothing else reads that output."""
    options = {"config": TINY_HRNET} if arch == "hrnet" else {}
    with torch.device("meta"):
        model = build_model(arch, num_classes=5, **options)  # train mode: PSPNet's aux head runs too
    modules = dict(model.named_modules())
    found = []
    for node in torch.fx.symbolic_trace(model, concrete_args={"resize": False}).graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], torch.nn.BatchNorm2d):
            source = node.args[0]
            assert source.op == "call_module" and isinstance(modules[source.target], torch.nn.Conv2d)
            assert len(source.users) == 1
            found.append((source.target, node.target))
    assert len(found) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sorted(found) == sorted(model.conv_bn_pairs())


def test_pspnet50_forward_backward_train_and_eval_outputs():
    torch.manual_seed(0)
    model = build_model("pspnet50", num_classes=3)
    image = torch.randn(2, 3, 65, 65)  # batch 2: the 1x1 pyramid bin needs more than one value per channel
    target = torch.randint(0, 3, (2, 65, 65))

    logits, aux_logits = model(image)
    assert logits.shape == aux_logits.shape == (2, 3, 65, 65)
    loss = F.cross_entropy(logits, target, ignore_index=255) + 0.4 * F.cross_entropy(aux_logits, target)
    loss.backward()
    assert_every_parameter_has_a_gradient(model)

    model.eval()
    with torch.no_grad():
        out = model(image[:1])
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 65, 65)
