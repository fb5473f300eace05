"""Learning: the structured loss and its gradient, persistent messages, the training loop."""
from .messages import MessageStore
from .structured import (InferenceOptions, StructuredResult, backward, register_inference,
                         structured_loss)

__all__ = ["MessageStore", "InferenceOptions", "StructuredResult", "structured_loss", "backward",
           "register_inference"]
