"""Training configs: the shipped ones give the original iteration counts; bad keys and values are named."""

from __future__ import annotations

import pytest

from mseg_semantic.cli import main
from mseg_semantic.errors import InputError
from mseg_semantic.training import iteration_count, list_train_configs, load_train_config, poly_lr


@pytest.mark.parametrize(
    ("name", "iterations", "classes"),
    [
        ("1080_release/mseg-relabeled-1m", 500_000, 194),
        ("1080_release/mseg-relabeled-3m", 600_000, 194),
        ("1080_release/mseg-unrelabeled", 200_000, 194),
        ("1080_release/mseg-naive-baseline", 250_000, 316),
        ("720_release/mseg-3m", 428_571, 194),
        ("480_release/mseg-3m", 250_000, 194),
    ],
)
def test_release_configs_give_the_original_iteration_counts(name, iterations, classes):
    _, config = load_train_config(name)
    assert config.total_iters() == iterations
    assert config.num_classes == classes
    assert len(config.datasets) == 7 and config.dataset_layout == "per_rank"
    assert (config.optim.base_lr, config.optim.momentum, config.optim.weight_decay, config.optim.power) == (
        0.01, 0.9, 1e-4, 0.9,
    )  # fmt: skip


def test_single_dataset_configs_take_the_dataset_from_the_command_line():
    with pytest.raises(InputError, match=r"key 'datasets': no dataset given.*--set datasets="):
        load_train_config("1080_release/single_universal")
    _, universal = load_train_config("1080_release/single_universal", ["datasets=[cityscapes-19-relabeled]"])
    assert (universal.total_iters(), universal.num_classes) == (31_250, 194)
    _, oracle = load_train_config("1080_release/single_oracle", ["datasets=[cityscapes-19]"])
    assert (oracle.num_classes, oracle.model_taxonomy) == (19, "cityscapes-19")


def test_camvid11_config_and_list(capsys):
    names = dict(list_train_configs())
    assert {"camvid11", "1080_release/mseg-relabeled-3m", "480_release/mseg-3m"} <= set(names)
    _, config = load_train_config("camvid11")
    assert (config.num_classes, config.model.arch, config.precision) == (11, "hrnet", "bf16")
    assert config.total_iters() == iteration_count(config.num_examples, config.batch_size, 1)
    assert main(["train", "--list-configs"]) == 0
    assert "camvid11" in capsys.readouterr().out


def test_overrides_use_dotted_keys_and_yaml_values():
    _, config = load_train_config(
        "camvid11",
        ["transform.crop=97", "optim.weight_decay=1e-4", "num_examples=1e3", "datasets.0.root=/data", "val.every=0"],
        max_iters=7,
    )
    assert config.transform.crop == (97, 97)
    assert config.optim.weight_decay == pytest.approx(1e-4)
    assert (config.num_examples, config.max_iters, config.total_iters()) == (1000, 7, 7)
    assert config.datasets[0].root == "/data" and config.datasets[0].train_list == "train.txt"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.bse_lr=0.1"], r"^--set: key 'optim.bse_lr': unknown key, did you mean 'base_lr'\? \(known: base_lr, "),
        (["batchsize=4"], r"^--set: key 'batchsize': unknown key, did you mean 'batch_size'\? \(known: datasets, "),
        (["datasets.3.root=/x"], r"^--set: key 'datasets.3': index out of range"),
        (["batch_size=four"], r"^--set: key 'batch_size': expected int, got 'four'$"),
        (["batch_size=2.5"], r"^--set: key 'batch_size': expected int, got 2.5$"),
        (["channels_last=maybe"], r"^--set: key 'channels_last': expected bool, got 'maybe'$"),
        (["transform.crop=[1, 2, 3]"], r"^--set: key 'transform.crop': expected 2 values, got \[1, 2, 3\]$"),
        (["precision=fp8"], r"^--set: key 'precision': must be one of fp32, bf16, fp16, got 'fp8'$"),
        (["transform.scale=[2, 1]"], r"^--set: key 'transform.scale': must be \[min, max\]"),
        (["checkpoint.keep=0"], r"^--set: key 'checkpoint.keep': must be at least 1, got 0$"),
        (["taxonomy=universal"], r"^config camvid11: key 'datasets.0.name': cannot train camvid-11 in the universal"),
        (["model.arch=pspnet50"], r"^config camvid11: key 'model.hrnet': is only for arch 'hrnet'"),
        (["model.arch=pspnet50", "model.hrnet=null"], r"key 'transform.crop': PSPNet needs crop sizes of the form"),
        (["datasets=[camvid-11, cityscapes-19]", "taxonomy=own"], r"^--set: key 'taxonomy.mode': 'own' trains one"),
        (["optim=3"], r"^--set: key 'optim': expected a mapping, got 3$"),
        (["seed.x=1"], r"^--set: key 'seed': is a value, not a section$"),
        (["model.hrnet.STAGE1.NUM_BLOCKS=[x]"], r"^--set: key 'model.hrnet.STAGE1.NUM_BLOCKS.0': expected int, got"),
        (["seed"], r"--set expects KEY=VALUE"),
        (["transform.haze.prob=1.5"], r"^--set: key 'transform.haze.prob': must lie in \[0, 1\], got 1.5$"),
        (["transform.grayscale_prob=-0.1"], r"^--set: key 'transform.grayscale_prob': must lie in \[0, 1\], got -0.1$"),
        (
            ["transform.color.brightness=[1.4, 0.6]"],
            r"^--set: key 'transform.color.brightness': must be \[min, max\] with min <= max, both in \(0, inf\), "
            r"got \[1.4, 0.6\]$",
        ),
        (
            ["transform.color.hue=[-200, 10]"],
            r"key 'transform.color.hue': .* both in \[-180, 180\], got \[-200.0, 10.0\]",
        ),
        (
            ["transform.jpeg.quality=[0, 50]"],
            r"^--set: key 'transform.jpeg.quality': .* both in \[1, 100\], got \[0, 50\]$",
        ),
        (["transform.jpeg.quality=[10.5, 50]"], r"^--set: key 'transform.jpeg.quality.0': expected int, got 10.5$"),
        (
            ["transform.hood.heigth=[0, 0.1]"],
            r"^--set: key 'transform.hood.heigth': unknown key, did you mean 'height'",
        ),
        (["transform.hood.shade=[0, 300]"], r"^--set: key 'transform.hood.shade': .* both in \[0, 255\]"),
        (["transform.haze=0.3"], r"^--set: key 'transform.haze': expected a mapping, got 0.3$"),
        (["transform.perspective.distortion=0.6"], r"key 'transform.perspective.distortion': must lie in \[0, 0.5\)"),
        (
            ["transform.blur_kernel=[4, 9]"],
            r"^--set: key 'transform.blur_kernel': must be \[min, max\] odd kernel sizes",
        ),
    ],
)
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(InputError, match=message):
        load_train_config("camvid11", overrides)


def test_augmentation_options_are_off_in_the_release_configs_and_on_in_camvid11_robust():
    from mseg_semantic.data.transforms import EXTRA_OPTIONS
    from mseg_semantic.training.data import train_transform

    for name, _ in list_train_configs():
        extra = ["datasets=[camvid-11]", "taxonomy=own"] if "single" in name else []
        _, config = load_train_config(name, extra)
        expected = list(EXTRA_OPTIONS) if name == "camvid11-robust" else []  # stage 2 of the bundled model
        assert train_transform(config).extras_on == expected, name
    _, config = load_train_config("camvid11-robust", ["transform.haze.prob=0", "transform.blur_kernel=[5, 5]"])
    assert "haze" not in train_transform(config).extras_on and "blur_kernel" not in train_transform(config).extras_on


def test_the_bundled_models_recorded_recipes_are_the_two_configs_in_the_repo(tmp_path):
    """camvid11-compact records both stages: its own recipe is camvid11-robust (from stage 1's weights) and the
    recipe of the weights it started from is camvid11 (the MSeg augmentation only)."""
    from mseg_semantic import zoo
    from mseg_semantic.models import read_metadata
    from mseg_semantic.training.data import train_transform

    meta = read_metadata(zoo.fetch("camvid11-compact"))
    for key, name, overrides in (
        ("training_recipe", "camvid11-robust", []),
        ("init_training_recipe", "camvid11", []),
    ):
        recipe = tmp_path / f"{key}.yaml"
        recipe.write_text(meta[key])
        _, recorded = load_train_config(recipe)
        _, config = load_train_config(name, overrides)
        assert train_transform(recorded) == train_transform(config), key
        assert (recorded.optim, recorded.loss) == (config.optim, config.loss), key
        assert recorded.num_examples == config.num_examples, key
        assert recorded.model == config.model and recorded.datasets == config.datasets, key
    assert "train camvid11-robust" in meta["training_command"] and "train camvid11 " in meta["init_training_command"]


def test_a_bad_augmentation_value_in_a_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("datasets: [camvid-11]\ntaxonomy: own\ntransform:\n  color: {prob: 0.5, gains: [1.2, 0.8]}\n")
    with pytest.raises(InputError, match=r"^.*mine.yaml: key 'transform.color.gains': must be \[min, max\]"):
        load_train_config(path)


def test_a_dataset_given_by_name_takes_keys_and_arguments_are_named():
    _, config = load_train_config("camvid11", ["datasets=[camvid-11]", "datasets.0.root=/data", "val.every=0"])
    assert config.datasets[0].name == "camvid-11" and config.datasets[0].root == "/data"
    with pytest.raises(InputError, match=r"^arguments: key 'max_iters': must be at least 1, got 0$"):
        load_train_config("camvid11", max_iters=0)


def test_unknown_key_and_wrong_type_in_a_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("datasets: [camvid-11]\ntaxonomy: own\noptim:\n  base_lr: 0.1\n  momentun: 0.9\n")
    with pytest.raises(
        InputError, match=r"mine.yaml: key 'optim.momentun': unknown key, did you mean 'momentum'\? \(known: base_lr, "
    ):
        load_train_config(path)
    path.write_text("datasets: [camvid-11]\ntaxonomy: own\nworkers: two\n")
    with pytest.raises(InputError, match=r"^.*mine.yaml: key 'workers': expected int, got 'two'$"):
        load_train_config(path)
    path.write_text("datasets: [camvid-11]\ntaxonomy: own\nmodel:\n  arch: hrnet\n  hrnet: {STAGE1: {}}\n")
    with pytest.raises(InputError, match=r"mine.yaml: key 'model.hrnet.STAGE1.NUM_MODULES': missing required key$"):
        load_train_config(path)
    path.write_text("datasets: [camvid-11\n")
    with pytest.raises(InputError, match=r"mine.yaml: not valid YAML \(.*\)$"):
        load_train_config(path)
    with pytest.raises(InputError, match=r"camvid1: unknown config; did you mean 'camvid11'"):
        load_train_config("camvid1")


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["train", "camvid11", "--set", "optim.bse_lr=1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "optim.bse_lr" in err and len(err.splitlines()) == 1
    missing = tmp_path / "no-such-folder"
    assert main(["train", "camvid11", "--data-root", str(missing), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mseg train: error: dataset camvid-11: {missing}: data root does not exist"
    assert main(["train", "camvid11", "--out", str(tmp_path / "run")]) == 2
    assert "pass --data-root DIR" in capsys.readouterr().err


def test_poly_schedule_is_per_iteration():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01  # the first step uses base_lr
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


def test_pspnet_head_gets_ten_times_the_lr():
    from mseg_semantic.models import build_model
    from mseg_semantic.training.optim import build_optimizer, set_lr

    optimizer = build_optimizer(build_model("pspnet50", 2), 0.01, 0.9, 1e-4, head_lr_mult=10.0)
    set_lr(optimizer, 0.005)
    groups = [(g["name"], g["lr"]) for g in optimizer.param_groups]
    assert groups == [(f"layer{i}", 0.005) for i in range(5)] + [
        (n, pytest.approx(0.05)) for n in ("ppm", "cls", "aux")
    ]
