"""Data layer: the synthetic word generator and the reader for the HDF5 contract (DESIGN.md §5).

    generate_words(out_path, ...)   render the Word50-style data set to an HDF5 file
    open_words(path, split)         open one split of any contract file -> WordsData
"""
from dstrain.data.hdf5 import DataError, WordsData, open_words
from dstrain.data.words import generate_words

__all__ = ["generate_words", "WordsData", "open_words", "DataError"]
