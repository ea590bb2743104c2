"""Captioned images from files to batches: readers of each format, splits, protocols, caches, loader, augmentation."""
