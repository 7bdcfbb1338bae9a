"""clr_lib: the tested library behind "SimCLR, built and trained by you".

The data path walks one way, one module a step, each named after the paper's term:
    data (uint8 images) -> augment (x_i, x_j, ...) -> models (f: h, g: z) -> loss (NT-Xent)
    -> optim (schedule, LARS, Muon) -> train (the loop) -> evaluate (kNN, linear probe)
    -> finetune (few labels, supervised baseline) -> maps (PCA, UMAP) -> viz (pictures).
config holds the hyperparameters, device says where they run, checkpoint reads and writes
runs, distributed and cli serve torchrun and the command lines, diagnostics and experiments
serve chapters 03 and 07.
"""

from clr_lib.config import Config, UserError, get_config
from clr_lib.data import (DatasetError, ImageData, Splits, balanced_subset, load_dataset,
                          load_splits, make_synthetic)
from clr_lib.device import pick_device, use_bf16
from clr_lib.augment import (CIFAR10_MEAN, CIFAR10_STD, SimCLRAugment, apply_params, augment_batch,
                             denormalize, make_views, normalize, reference_transform,
                             sample_params, two_views)
from clr_lib.models import (ConvNet, ProjectionHead, ResNetEncoder, SimCLR, build_encoder,
                            build_model, count_parameters, projection_head)
from clr_lib.loss import NTXentLoss, nt_xent, nt_xent_views, positive_index
from clr_lib.optim import LARS, Muon, build_optimizer, lr_at, peak_lr
from clr_lib.diagnostics import (alignment, embedding_report, embedding_std, positive_rank,
                                 positive_topk, uniformity)
from clr_lib.maps import map_2d, pca

# evaluate is imported on first use, so that `python -m clr_lib.evaluate` runs a fresh module
# (an eager import here makes Python warn that the module was already imported).
_EVALUATE = ("evaluate_model", "extract_features", "fit_linear_probe",
             "knn_accuracy", "knn_predict", "linear_probe", "nearest_neighbours")


def __getattr__(name: str):
    if name in _EVALUATE:
        from clr_lib import evaluate
        return getattr(evaluate, name)
    raise AttributeError(f"module 'clr_lib' has no attribute {name!r}")


__all__ = [
    "Config", "UserError", "get_config", "pick_device", "use_bf16",
    "DatasetError", "ImageData", "Splits", "balanced_subset", "load_dataset", "load_splits",
    "make_synthetic",
    "CIFAR10_MEAN", "CIFAR10_STD", "SimCLRAugment", "apply_params", "augment_batch",
    "denormalize", "make_views", "normalize", "reference_transform", "sample_params",
    "two_views",
    "ConvNet", "ProjectionHead", "ResNetEncoder", "SimCLR", "build_encoder", "build_model",
    "count_parameters", "projection_head",
    "NTXentLoss", "nt_xent", "nt_xent_views", "positive_index",
    "LARS", "Muon", "build_optimizer", "lr_at", "peak_lr",
    "alignment", "embedding_report", "embedding_std", "positive_rank", "positive_topk",
    "uniformity",
    "evaluate_model", "extract_features", "fit_linear_probe", "knn_accuracy",
    "knn_predict", "linear_probe", "nearest_neighbours", "map_2d", "pca",
]
