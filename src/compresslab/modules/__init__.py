"""Thin LightningModules around plain models: classification, compressed fine-tuning, distillation."""

from compresslab.modules.classifier import Classifier, build_optimizer

__all__ = ["Classifier", "build_optimizer"]
