"""posttrain: the post-training pipeline for language models, end to end."""

__version__ = "0.1.0"
