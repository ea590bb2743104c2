"""clip_lab: train and evaluate CLIP-style image-text retrieval models (ResNet image tower, frozen CLIP text tower)."""

__version__ = "0.1.0"
