"""The model interface (StructuredModel, Batch, RegionPotentials, RegionLayout) and the potential
nets models are built from (unary MLP and CNN, pair tables)."""
from .base import (Batch, DenseCRFPotentials, NoOptions, RegionPotentials, StructuredModel,
                   stacked_potentials)
from .layout import RegionLayout
from .potentials import Linear, PairwiseTables, UnaryCNN, UnaryMLP

__all__ = ["StructuredModel", "Batch", "RegionPotentials", "RegionLayout", "NoOptions", "stacked_potentials",
           "DenseCRFPotentials",
           "UnaryMLP", "UnaryCNN", "PairwiseTables", "Linear"]
