"""Demos: a small CNN on scikit-learn's bundled digits (no download), and its configuration."""

import os

from lightning_legr.demos.digits import DigitsClassifier, DigitsDataModule, SmallCNN

DEMO_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "demo.yaml")

__all__ = ["DEMO_CONFIG", "DigitsClassifier", "DigitsDataModule", "SmallCNN"]
