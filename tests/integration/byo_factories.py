"""Factories (``package.module:factory``) for ``tritune build --torch`` in the tests: Hugging Face transformers'
own ResNet, at a size that trains in seconds on two cores, with random initial weights (no hub download)."""

from __future__ import annotations

from transformers import ResNetConfig, ResNetForImageClassification


def resnet_tiny() -> ResNetForImageClassification:
    """The ResNet-18 block layout (basic blocks), two stages of one block each, 16 and 32 channels."""
    config = ResNetConfig(
        num_channels=3, num_labels=10, layer_type="basic", depths=[1, 1], hidden_sizes=[16, 32], embedding_size=16
    )
    return ResNetForImageClassification(config)


def resnet_student() -> ResNetForImageClassification:
    """Half the widths of :func:`resnet_tiny`: the distillation student."""
    config = ResNetConfig(
        num_channels=3, num_labels=10, layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8
    )
    return ResNetForImageClassification(config)


def resnet18() -> ResNetForImageClassification:
    """ResNet-18 as torchvision and microsoft/resnet-18 lay it out, for ImageNet-size inputs (224×224)."""
    config = ResNetConfig(
        num_channels=3,
        num_labels=10,
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[64, 128, 256, 512],
        embedding_size=64,
    )
    return ResNetForImageClassification(config)
