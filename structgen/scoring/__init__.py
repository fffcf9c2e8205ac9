"""Scores of generated images, judged by a small classifier trained here (algorithm.md §6):
per-leaf class purity and the classifier-Fréchet distance (CFD, never called FID)."""
from structgen.scoring.classifier import SmallResNet, default_classifier_path, load_classifier, train_classifier
from structgen.scoring.frechet import (CFD_LABEL, classifier_features, classifier_frechet_distance,
                                       frechet_distance)
from structgen.scoring.purity import PURITY_LABEL, generation_purity, leaf_class_histograms

__all__ = ["SmallResNet", "default_classifier_path", "load_classifier", "train_classifier", "CFD_LABEL",
           "classifier_features", "classifier_frechet_distance", "frechet_distance", "PURITY_LABEL",
           "generation_purity", "leaf_class_histograms"]
