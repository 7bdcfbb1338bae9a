"""clr_lib: the tested library behind "SimCLR, built and trained by you".

The data path walks one way, one module a step, each named after the paper's term:
    data (uint8 images) -> augment (x_i, x_j) -> models (f: h, g: z) -> loss (NT-Xent)
    -> train (the loop) -> evaluate (kNN, linear probe) -> viz (pictures).
"""

from clr_lib.config import Config, get_config, pick_device
from clr_lib.data import DatasetError, ImageData, Splits, load_dataset, load_splits, make_synthetic

__all__ = ["Config", "get_config", "pick_device",
           "DatasetError", "ImageData", "Splits", "load_dataset", "load_splits", "make_synthetic"]
