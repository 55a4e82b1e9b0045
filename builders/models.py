"""The seed CNN, its distillation student, and the checkpoint format.

The article's network is conv(3→64) → relu → conv(64→128) → relu → maxpool → fc → fc → fc, with fc1 expecting
128·8·8 features after "one 2×2 pool" — which a 32×32 input cannot give (it gives 16×16). We keep the 32×32
CIFAR input and pool 4×4 with stride 4 (32 → 8), so fc1's 128·8·8 holds. ReLU and max-pooling commute (ReLU is
monotone), so we pool *before* the second ReLU: the same function, 16× fewer ReLUs, and — what matters — an INT8
graph in which the pool runs on quantized values instead of a dequantize/quantize round trip (1.2× → 1.8× faster
than fp32 on an AVX2 CPU, measured with ONNX Runtime).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tritune.errors import CheckpointError
from tritune.signature import Signature, Tensor

# The seed CNN's interface, owned here (its builder): one image, float32 in [0, 1], in; class logits out. Every
# other module reads a model's interface from the model (tritune/signature.py), never from these.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_SHAPE = (3, 32, 32)  # channels, height, width
NUM_CLASSES = 10
INPUT_DATATYPE = "FP32"  # Triton's wire datatype of both tensors
SEED_SIGNATURE = Signature(
    (Tensor(INPUT_NAME, INPUT_DATATYPE, INPUT_SHAPE),), (Tensor(OUTPUT_NAME, INPUT_DATATYPE, (NUM_CLASSES,)),), True
)


def seed_export_args() -> tuple[tuple[torch.Tensor, ...], list[str], list[str]]:
    """The example input and the tensor names the seed CNN (and its students) are exported with."""
    return (torch.rand(2, *INPUT_SHAPE),), [INPUT_NAME], [OUTPUT_NAME]


class Normalize(nn.Module):
    """Per-channel standardization baked into the graph, so clients send images scaled to [0, 1]."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SeedCNN(nn.Module):
    """The article's CIFAR-10 CNN with its shapes fixed; widths are parameters so a pruned copy is the same class."""

    def __init__(
        self,
        c1: int = 64,
        c2: int = 128,
        f1: int = 256,
        f2: int = 128,
        num_classes: int = NUM_CLASSES,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.25, 0.25, 0.25),
    ):
        super().__init__()
        self.norm = Normalize(list(mean), list(std))
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=4, stride=4)
        self.fc1 = nn.Linear(c2 * 8 * 8, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(self.norm(x)))
        x = torch.relu(self.pool(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)

    def arch_kwargs(self) -> dict[str, Any]:
        """Constructor arguments read back from the layer shapes (they change when pruned)."""
        return {
            "c1": self.conv1.out_channels,
            "c2": self.conv2.out_channels,
            "f1": self.fc1.out_features,
            "f2": self.fc2.out_features,
            "num_classes": self.fc3.out_features,
            "mean": tuple(self.norm.mean.flatten().tolist()),
            "std": tuple(self.norm.std.flatten().tolist()),
        }


class CompressedNet(nn.Module):
    """The article's CompressedNet, the distillation student: half the conv widths, one hidden fc layer.

    ``crop`` and ``down`` make the smaller students of the accuracy ladder: the network sees only the centre
    ``crop``×``crop`` pixels, average-pooled by ``down``, so its compute falls with the area it looks at and its
    accuracy with the information it loses. Both happen inside the graph: every variant takes the same input.
    """

    def __init__(
        self,
        c1: int = 32,
        c2: int = 64,
        f1: int = 128,
        num_classes: int = NUM_CLASSES,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.25, 0.25, 0.25),
        crop: int = INPUT_SHAPE[-1],
        down: int = 1,
        pool: int = 4,
    ):
        super().__init__()
        side = INPUT_SHAPE[-1]
        if not (0 < crop <= side and crop % (down * pool) == 0):
            raise CheckpointError(
                f"CompressedNet: crop {crop} must be in 1..{side} and divisible by down × pool ({down}×{pool})"
            )
        self.crop, self.down, self.pool_size = crop, down, pool
        self._lo = (side - crop) // 2
        self.norm = Normalize(list(mean), list(std))
        self.downsample = nn.AvgPool2d(down, down) if down > 1 else nn.Identity()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=pool, stride=pool) if pool > 1 else nn.Identity()
        cells = crop // down // pool
        self.fc1 = nn.Linear(c2 * cells * cells, f1)
        self.fc2 = nn.Linear(f1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.crop != x.shape[-1]:
            x = x[:, :, self._lo : self._lo + self.crop, self._lo : self._lo + self.crop]
        x = torch.relu(self.conv1(self.downsample(x)))
        x = torch.relu(self.pool(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))

    def arch_kwargs(self) -> dict[str, Any]:
        return {
            "c1": self.conv1.out_channels,
            "c2": self.conv2.out_channels,
            "f1": self.fc1.out_features,
            "num_classes": self.fc2.out_features,
            "mean": tuple(self.norm.mean.flatten().tolist()),
            "std": tuple(self.norm.std.flatten().tolist()),
            "crop": self.crop,
            "down": self.down,
            "pool": self.pool_size,
        }


ARCHITECTURES: dict[str, type[nn.Module]] = {"SeedCNN": SeedCNN, "CompressedNet": CompressedNet}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """Multiply-adds ×2 of the Conv2d and Linear layers for one image (the layers that dominate; pooling,
    ReLU and normalization add under 1%)."""
    flops = 0

    def conv_hook(mod: nn.Conv2d, _inp, out):
        nonlocal flops
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        flops += 2 * k * out[0].numel()

    def linear_hook(mod: nn.Linear, _inp, out):
        nonlocal flops
        flops += 2 * mod.in_features * mod.out_features

    hooks = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return flops


def save_checkpoint(model: nn.Module, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Architecture name, constructor arguments and weights: loadable with ``weights_only=True`` (no pickled code)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "arch": type(model).__name__,
            "kwargs": model.arch_kwargs(),
            "state_dict": model.state_dict(),
            "meta": meta or {},
        },
        tmp,
    )
    tmp.replace(path)


def load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`, or a bare SeedCNN ``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or drop --checkpoint to train one")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch file ({type(exc).__name__}); delete it and rebuild"
        ) from exc
    if isinstance(blob, dict) and "state_dict" in blob and "arch" in blob:
        arch, kwargs, state, meta = blob["arch"], dict(blob.get("kwargs", {})), blob["state_dict"], blob.get("meta", {})
    elif isinstance(blob, dict) and all(isinstance(v, torch.Tensor) for v in blob.values()):
        arch, kwargs, state, meta = "SeedCNN", {}, blob, {}
    else:
        raise CheckpointError(f"checkpoint {path} holds neither a tritune checkpoint nor a state_dict; re-save it")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"checkpoint {path} is for unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}"
        )
    for key in ("mean", "std"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    model = ARCHITECTURES[arch](**kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit {arch}: {first}; delete it and rebuild") from exc
    return model.eval(), meta
