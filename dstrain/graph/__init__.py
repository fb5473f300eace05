"""Region graphs: one sample's structure (RegionGraph), builders, and batches (GraphBatch)."""
from .batch import GraphBatch
from .builders import chain, fully_connected, grid
from .region_graph import COUNTING_PRESETS, RegionGraph, structure_of

__all__ = ["GraphBatch", "RegionGraph", "COUNTING_PRESETS", "chain", "fully_connected", "grid",
           "structure_of"]
