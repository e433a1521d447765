"""hcframe data plugin: decoding, datasets, augmentation, and the synthetic human-action world."""
__version__ = "0.1.0"
