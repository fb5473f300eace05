"""Potential nets (torch modules) and how their outputs fill a batch's flat potential vector."""
from .potentials import PairwiseTables, UnaryCNN, UnaryMLP
from .word_model import ChainLayout, WordCRF

__all__ = ["UnaryMLP", "UnaryCNN", "PairwiseTables", "WordCRF", "ChainLayout"]
