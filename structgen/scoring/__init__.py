"""Scores of generated images, judged by a small classifier trained here (algorithm.md §6):
per-leaf class purity, agreement with the class of the images each leaf holds, and the
classifier-Fréchet distance (CFD, never called FID)."""
from structgen.scoring.classifier import SmallResNet, default_classifier_path, load_classifier, train_classifier
from structgen.scoring.frechet import (CFD_LABEL, classifier_features, classifier_frechet_distance,
                                       frechet_distance)
from structgen.scoring.leaf_agreement import (AGREEMENT_LABEL, leaf_majority_classes, majority_agreement,
                                              per_leaf_agreement)
from structgen.scoring.purity import PURITY_LABEL, generation_purity, leaf_class_histograms

__all__ = ["SmallResNet", "default_classifier_path", "load_classifier", "train_classifier", "CFD_LABEL",
           "classifier_features", "classifier_frechet_distance", "frechet_distance", "PURITY_LABEL",
           "generation_purity", "leaf_class_histograms", "AGREEMENT_LABEL", "leaf_majority_classes",
           "majority_agreement", "per_leaf_agreement"]
