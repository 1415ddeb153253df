"""Encoders for the five methods: torchvision backbones and CaffeNet-BN, classifier removed.

`fastvid.models.audio` (GDT's audio ResNet-9) is imported from there directly.
"""
from fastvid.models.caffenet import CaffeNetBN
from fastvid.models.encoders import ARCHS, Encoder, build_backbone, load_backbone

__all__ = ["ARCHS", "CaffeNetBN", "Encoder", "build_backbone", "load_backbone"]
