"""The command line as a whole: lazy start-up, one frozen spec per run, the device rules, the option names."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from mseg_semantic import distributed
from mseg_semantic.cli import COMMANDS, build_parser, main
from mseg_semantic.errors import InputError

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")


# ---------------------------------------------------------------------------- start-up
@pytest.mark.parametrize("argv", [["taxonomy", "list"], ["--help"]])
def test_light_commands_do_not_import_torch(argv):
    # -X importtime lists every module the process imports (on stderr), as `python -X importtime -m ...` shows.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "mseg_semantic", *argv],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import")}
    assert "mseg_semantic.cli" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
    # Only the module of the command being run (importlib's imports of it are not listed), none of the others.
    assert {m for m in imported if m.startswith("mseg_semantic.cli.")} <= {"mseg_semantic.cli.text"}


def test_taxonomy_list_in_process_leaves_torch_unloaded():
    code = "import sys; from mseg_semantic.cli import main; main(['taxonomy', 'list']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_help_lists_every_command_as_the_full_parser_does(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    lazy = capsys.readouterr().out
    assert lazy == build_parser().format_help()  # the stubs show the same summaries as the loaded commands
    assert all(f"    {name}  " in lazy for name in COMMANDS)


def test_unknown_command_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["nope"])
    assert exc.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- devices
def test_device_names():
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    assert distributed.resolve_device(" CPU ") == torch.device("cpu")
    assert distributed.resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "mps", ""):
        with pytest.raises(InputError, match="is not one of auto, cpu, cuda, cuda:N"):
            distributed.resolve_device(bad)


@needs_no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_an_input_error(device):
    with pytest.raises(InputError, match="CUDA is not available"):
        distributed.resolve_device(device)


def test_one_process_needs_no_group():
    ctx = distributed.init_process("cpu")
    try:
        assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main, ctx.owns_group) == (0, 1, False, True, False)
        assert distributed.world_size() == 1 and distributed.is_main()
        values = torch.arange(3)
        assert distributed.all_reduce_sum(values) is values
        assert distributed.all_gather_objects("x") == ["x"]
        distributed.barrier()
    finally:
        distributed.close_process(ctx)


@needs_no_cuda
@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--example", "--device", "cuda"],
        ["eval", "--dataset", "camvid-11", "--data-root", ".", "--device", "cuda"],
        ["train", "camvid11", "--data-root", ".", "--device", "cuda:0"],
    ],
)
def test_unavailable_device_is_one_line_and_exit_2(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "CUDA is not available" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written: the device is checked before any work


@needs_no_cuda
def test_unavailable_device_from_the_shell(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mseg_semantic", "demo", "--example", "--device", "cuda"],
                            capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["mseg demo: error: device 'cuda': CUDA is not available on this "
                                                  "machine (use cpu, or auto)"]  # fmt: skip


# ---------------------------------------------------------------------------- one frozen spec, the option names
def demo_args(*argv: str):
    return build_parser(["demo"]).parse_args(["demo", *argv])


def test_demo_spec_is_made_once_and_frozen():
    from mseg_semantic.cli.demo import DemoSpec

    args = demo_args("a.jpg", "--example", "--preset", "360_ss", "--base-size", "96", "--fast", "--threads", "2")
    before = dict(vars(args))
    spec = DemoSpec.from_args(args)
    assert vars(args) == before  # the namespace is read, never rewritten
    assert spec.inputs[0] == "a.jpg" and spec.inputs[1].endswith("dashcam_comma2k19.png")
    assert spec.model.model == "camvid11-compact" and spec.model.default_model
    assert spec.model.device == torch.device("cpu") and spec.model.threads == 2
    config = spec.model.config  # the preset and the overrides, parsed into one config
    assert (config.name, config.base_size, config.head) == ("360_ss+fast", 96, "low_res")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.out = "elsewhere"  # type: ignore[misc]


def test_preset_and_output_taxonomy_names_and_their_aliases(capsys):
    from mseg_semantic.cli.demo import DemoSpec

    new = DemoSpec.from_args(demo_args("a.jpg", "--preset", "720_ss", "--output-taxonomy", "camvid-11"))
    old = DemoSpec.from_args(demo_args("a.jpg", "--config", "720_ss", "--taxonomy", "camvid-11"))
    assert new == old and new.model.config.name == "720_ss" and new.output_taxonomy == "camvid-11"
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = capsys.readouterr().out
    assert "--preset PRESET|FILE.yaml, --config PRESET|FILE.yaml" in help_text
    assert "--output-taxonomy T, --taxonomy T" in help_text


def test_the_zoo_preset_is_the_default(tmp_path, monkeypatch):
    from mseg_semantic.cli.demo import DemoSpec
    from mseg_semantic.cli.evaluate import EvalSpec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.safetensors").write_bytes(b"")  # only its existence is checked before loading

    assert DemoSpec.from_args(demo_args("a.jpg")).model.config.name == "compact_360_ss"  # the bundled model's
    assert DemoSpec.from_args(demo_args("a.jpg", "--model", "mseg-3m")).model.config.name == "360_ms"
    assert DemoSpec.from_args(demo_args("a.jpg", "--model", "m.safetensors")).model.config.name == "360_ms"
    parser = build_parser(["eval"])
    spec = EvalSpec.from_args(parser.parse_args(["eval", "--dataset", "camvid-11", "--data-root", "d",
                                                 "--model", "m.safetensors"]))  # fmt: skip
    assert spec.model.config.name == "360_ss" and str(spec.out) == "mseg_eval/m/camvid-11/360_ss"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a.jpg", "--preset", "999_ms"], "unknown inference preset '999_ms'"),
        (["a.jpg", "--output-taxonomy", "camvid11"], "unknown taxonomy 'camvid11'"),
        (["a.jpg", "--threads", "0"], "--threads must be at least 1"),
        (["a.jpg", "--device", "tpu"], "device 'tpu' is not one of"),
        ([], "nothing to segment"),
    ],
)
def test_demo_spec_reports_mistakes(argv, message):
    from mseg_semantic.cli.demo import DemoSpec
    from mseg_semantic.errors import MsegError

    with pytest.raises(MsegError, match=message):
        DemoSpec.from_args(demo_args(*argv))
