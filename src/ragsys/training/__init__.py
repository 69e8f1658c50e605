"""Training: the end-to-end RAG trainer, checkpoints, length-grouped batching."""

from ragsys.training.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
