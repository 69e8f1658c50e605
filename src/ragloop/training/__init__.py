"""Training: the end-to-end RAG trainer, checkpoints, length-grouped batching."""

from ragloop.training.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
