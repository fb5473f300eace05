"""dstrain: sample-parallel training of deep structured models (Chen, Schwing, Yuille, Urtasun 2015)."""
__version__ = "0.1.0"
