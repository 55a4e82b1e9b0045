"""Write the bring-your-own-model examples as ONNX files exported by PyTorch from Hugging Face transformers
(random weights, seeded: no hub download), for ``bench/variants.py --onnx`` and docs/models.md.

    python bench/export_examples.py --resnet18 resnet18.onnx      # ResNet-18 layout, 3×224×224 → 10 classes
    python bench/export_examples.py --bert bert.onnx              # BERT, input_ids + attention_mask (INT64)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export(module: torch.nn.Module, example: tuple, names: list[str], dynamic: tuple, path: Path) -> None:
    program = torch.onnx.export(
        module.eval(),
        example,
        input_names=names,
        output_names=["logits"],
        dynamic_shapes=dynamic,
        dynamo=True,
        external_data=False,
    )
    program.save(str(path), external_data=False)
    print(f"wrote {path}")


class Logits(torch.nn.Module):
    """A Hugging Face model's ``logits`` from keyword inputs, as an exporter takes a module."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *xs):
        return self.model(**dict(zip(self.names, xs, strict=True))).logits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resnet18", type=Path, help="write transformers' ResNet-18 (224×224) here")
    ap.add_argument("--bert", type=Path, help="write a small BERT text classifier here")
    args = ap.parse_args()
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=1024)
    if args.resnet18:
        from tests.integration.byo_factories import resnet18

        model = Logits(resnet18(), ["pixel_values"])
        export(model, (torch.rand(2, 3, 224, 224),), ["pixel_values"], (({0: batch},),), args.resnet18)
    if args.bert:
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
            num_labels=4,
        )
        names = ["input_ids", "attention_mask"]
        seq = torch.export.Dim("seq", min=2, max=128)
        example = (torch.randint(0, 1000, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
        dims = (({0: batch, 1: seq}, {0: batch, 1: seq}),)
        export(Logits(BertForSequenceClassification(config), names), example, names, dims, args.bert)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
