"""Encoders for the five methods: torchvision backbones and CaffeNet-BN, classifier removed.

GDT's audio ResNet-9 (`fastvid.models.audio`) is in the same table as "resnet9".
"""
from fastvid.models.caffenet import CaffeNetBN
from fastvid.models.encoders import ARCHS, Encoder, build_backbone, load_backbone

__all__ = ["ARCHS", "CaffeNetBN", "Encoder", "build_backbone", "load_backbone"]
