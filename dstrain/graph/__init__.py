"""Region graphs: one sample's structure (RegionGraph), builders, specs, and batches (GraphBatch)."""
from .batch import GraphBatch
from .builders import chain, fully_connected, grid, regions
from .region_graph import COUNTING_PRESETS, RegionGraph, structure_of
from .spec import GraphSpec

__all__ = ["GraphBatch", "GraphSpec", "RegionGraph", "COUNTING_PRESETS", "chain",
           "fully_connected", "grid", "regions", "structure_of"]
