"""Plain nn.Modules: image encoders and heads, the frozen CLIP towers, trainable text towers, the InfoNCE loss."""
