"""Learning: the structured loss and gradient, persistent messages, the training loop."""
from .messages import MessageStore
from .structured import InferenceOptions, StructuredResult, message_sizes, structured_loss

__all__ = ["MessageStore", "InferenceOptions", "StructuredResult", "message_sizes",
           "structured_loss"]
