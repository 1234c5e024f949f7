"""``mseg train CONFIG``: train a model with the MSeg recipe, in one process or under torchrun (DDP)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mseg_semantic.cli import add_command_parser
from mseg_semantic.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "train",
        description="Train HRNet or PSPNet with the MSeg recipe: SGD with poly LR decay, the original augmentation, "
        "labels mapped to the universal (or naive, or the dataset's own) taxonomy, equal crops per dataset in "
        "every step. CONFIG is a shipped config (--list-configs) or a YAML file. The output folder receives "
        "config.yaml, log.csv, checkpoints/ (original .pth layout plus .safetensors, a 'last' pointer) and, at the "
        "end, model.safetensors for 'mseg demo'. Several processes: torchrun --nproc-per-node N -m mseg_semantic "
        "train ... (NCCL on GPUs, gloo on CPUs).",
        epilog="examples:\n"
        "  mseg train --list-configs\n"
        "  mseg train camvid11 --data-root data/camvid11 --out runs/camvid11\n"
        "  mseg train camvid11 --data-root data/camvid11 --out runs/camvid11 --resume   # continue after a stop\n"
        "  mseg train camvid11 --data-root data/camvid11 --set batch_size=4 optim.base_lr=0.005 --print-config\n"
        "  torchrun --nproc-per-node 7 -m mseg_semantic train 1080_release/mseg-relabeled-3m --data-root /data/mseg "
        "\\\n      --set model.backbone_weights=hrnetv2_w48_imagenet_pretrained.pth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", metavar="CONFIG", help="config name or YAML file")
    parser.add_argument("--list-configs", action="store_true", help="list the shipped configs and exit")
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder of the data: an MSeg root holding every dataset's folder, or the dataset's own folder",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/<config name>)")
    parser.add_argument("--max-iters", type=int, metavar="N", help="iterations (default: from num_examples)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out (starts fresh if there is none)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config values: dotted keys, YAML values (optim.base_lr=0.02 transform.crop=[473,473] "
        "datasets.0.root=/data/camvid)",
    )
    parser.add_argument(
        "--device",
        help="auto (cuda when available, else cpu), cpu, cuda, cuda:N; under torchrun cuda is each process's own GPU "
        "(default: the config's, normally auto)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and iteration count, then exit"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mseg_semantic.training import config_to_dict, list_train_configs, load_train_config, train

    if args.list_configs:
        from mseg_semantic.cli.text import format_table

        print(format_table(["config", "description"], list_train_configs()))
        return 0
    if not args.config:
        raise InputError("give a CONFIG (a shipped config name or a YAML file); 'mseg train --list-configs' lists them")
    name, config = load_train_config(
        args.config, args.overrides, data_root=args.data_root, max_iters=args.max_iters, device=args.device
    )
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        per_dataset = config.batch_size // len(config.datasets)
        derived = (
            "set by max_iters"
            if config.max_iters
            else (f"num_examples {config.num_examples} per dataset / {per_dataset} crops per dataset per step")
        )
        print(f"# {config.total_iters()} iterations ({derived}); {config.num_classes} classes")
        return 0
    out = Path(args.out) if args.out else Path("runs") / name.replace("/", "_")

    def log(message: str) -> None:
        print(message, flush=True)

    result = train(config, out, resume=args.resume, progress=not args.quiet, log=log)
    return 0 if result.iterations >= result.max_iters else 1
