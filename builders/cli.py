"""``tritune build`` (and ``python -m builders``): options and entry point."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from builders.data import DATASETS
from builders.onnx_utils import CALIBRATION_METHODS
from tritune.settings import CsvList


def add_arguments(p: argparse.ArgumentParser) -> None:
    from builders.build import VARIANTS, BuildOptions
    from builders.targets import TARGETS
    from builders.targets.tensorrt import COMPILERS

    d = BuildOptions()
    g = p.add_argument_group("output")
    g.add_argument(
        "--repository", type=Path, default=d.repository, help="model repository folder (default: %(default)s)"
    )
    g.add_argument(
        "--variants",
        type=CsvList(),
        default=d.variants,
        help=f"comma-separated variants to build (default: {','.join(VARIANTS)})",
    )
    g.add_argument("--target", default=d.target, choices=sorted(TARGETS), help="compile target (default: %(default)s)")
    g.add_argument(
        "--compiler",
        default=d.compiler,
        choices=COMPILERS,
        help="gpu target: tensorrt (ONNX parser; the default) or torch-tensorrt (from the PyTorch module; fp32/fp16)",
    )
    g.add_argument(
        "--trt-profile",
        default=None,
        metavar="NAME=MIN/OPT/MAX;…",
        help="gpu target: per-sample min/opt/max shapes of an input's dynamic dims, e.g. input_ids=1/128/512 "
        "(default: from the model's signature; dynamic dims 1/16/256)",
    )
    g.add_argument(
        "--max-batch-size", type=int, default=d.max_batch_size, help="Triton max_batch_size (default: %(default)s)"
    )
    g.add_argument(
        "--public-model", default=d.public_model, help="the one model name clients call (default: %(default)s)"
    )
    g.add_argument(
        "--public-variant",
        default=d.public_variant,
        help="variant the public model serves at first (default: %(default)s)",
    )
    g.add_argument(
        "--model-prefix",
        default=d.model_prefix,
        help="per-variant model names are PREFIX+variant (default: %(default)s)",
    )
    g = p.add_argument_group("bring your own model (docs/models.md)")
    g.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="FILE",
        help="build fp32/fp16/int8 variants of this ONNX model instead of the seed CNN; names and shapes are read "
        "from its graph",
    )
    g.add_argument(
        "--torch",
        default=None,
        metavar="MODULE:FACTORY",
        help="build this PyTorch module's variants (fp32, pruned, fp16, int8; distilled with --student): "
        "package.module:factory, called without arguments, e.g. torchvision.models:resnet18",
    )
    g.add_argument("--weights", type=Path, default=None, metavar="FILE", help="--torch: the module's state_dict")
    g.add_argument(
        "--student",
        default=None,
        metavar="MODULE:FACTORY",
        help="--torch: a smaller module distilled from the fp32 teacher into the 'distilled' variant",
    )
    g.add_argument(
        "--input-shape",
        default=None,
        metavar="SHAPES",
        help="--torch: per-sample input shapes, '3,224,224' or 'name:3,224,224;other:16' (FP32); default: from an "
        ".npz given as --eval-data",
    )
    g.add_argument(
        "--fit-epochs",
        type=int,
        default=d.fit_epochs,
        help="--torch: first train the fp32 module this many epochs on --train-data (needs labels; default: use "
        "its weights as given)",
    )
    g.add_argument(
        "--eval-data",
        type=Path,
        default=None,
        metavar="PATH",
        help="samples the variants are measured on: an .npz (one array per input name, optional 'labels'), a folder "
        "of class folders of images, or perf_analyzer's --input-data JSON (default: random samples, said so)",
    )
    g.add_argument(
        "--train-data",
        type=Path,
        default=None,
        metavar="PATH",
        help="int8 calibration samples, same formats (default: the evaluation samples)",
    )
    g.add_argument(
        "--eval-size", type=int, default=d.eval_size, help="evaluate the first N samples (default: all; 256 random)"
    )
    g.add_argument(
        "--output",
        default=None,
        help="the output judged for accuracy (default: the first that reads as class scores, else every output "
        "within a tolerance of fp32's)",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=d.dataset,
        choices=DATASETS,
        help="auto: CIFAR-10 if a local copy exists, else Fashion-MNIST if installed, else scikit-learn's bundled "
        "digits (default: %(default)s)",
    )
    g.add_argument(
        "--data-dir",
        type=Path,
        default=d.data_dir,
        help="where CIFAR-10 lives or is downloaded to (default: %(default)s)",
    )
    g.add_argument("--download", action="store_true", help="download CIFAR-10 if missing (needs the internet)")
    g.add_argument(
        "--subset",
        type=int,
        default=d.subset,
        help="train on N images (default: 2,000 of Fashion-MNIST's 60,000, all of the others; 0: all)",
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--checkpoint", type=Path, default=None, help="bring your own fp32 SeedCNN weights instead of training"
    )
    g.add_argument("--epochs", type=int, default=d.epochs, help="fp32 training epochs (default: %(default)s)")
    g.add_argument(
        "--finetune-epochs",
        type=int,
        default=d.finetune_epochs,
        help="fine-tuning after pruning (default: %(default)s)",
    )
    g.add_argument(
        "--distill-epochs", type=int, default=d.distill_epochs, help="student training epochs (default: %(default)s)"
    )
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size (default: %(default)s)")
    g.add_argument(
        "--lr", type=float, default=d.lr, help="peak learning rate, one-cycle schedule (default: %(default)s)"
    )
    g.add_argument(
        "--prune-ratio", type=float, default=d.prune_ratio, help="share of filters/units removed (default: %(default)s)"
    )
    g.add_argument("--distill-temperature", type=float, default=d.distill_temperature, help="(default: %(default)s)")
    g.add_argument(
        "--distill-alpha",
        type=float,
        default=d.distill_alpha,
        help="weight of the soft-target loss (default: %(default)s)",
    )
    g.add_argument(
        "--calibration-size",
        type=int,
        default=d.calibration_size,
        help="INT8 calibration images (default: %(default)s)",
    )
    g.add_argument(
        "--calibration-method", default=d.calibration_method, choices=CALIBRATION_METHODS, help="(default: %(default)s)"
    )
    g.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    g = p.add_argument_group("machine")
    g.add_argument("--cache-dir", type=Path, default=d.cache_dir, help="checkpoint cache (default: %(default)s)")
    g.add_argument("--threads", type=int, default=d.threads, help="torch threads for training (default: all cores)")
    g.add_argument(
        "--latency-runs",
        type=int,
        default=d.latency_runs,
        help="runs per in-process latency median (default: %(default)s)",
    )
    g.add_argument("--json", action="store_true", help="print the manifest as JSON when done")


def options_from_args(args: argparse.Namespace):
    from builders.build import BuildOptions

    fields = BuildOptions.__dataclass_fields__
    return BuildOptions(**{k: v for k, v in vars(args).items() if k in fields})


def run(args: argparse.Namespace) -> int:
    from builders.build import build

    manifest = build(options_from_args(args), log=lambda msg: print(msg, flush=True))
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2))
    return 0
