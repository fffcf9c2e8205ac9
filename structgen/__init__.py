"""structgen: learn a tree of clusters from unlabelled images (CNN-TreeVAE) and see it.

Importing the package is cheap: torch, Ray, FFCV and submitit load only when a submodule that
needs them is imported (`structgen.api`, `structgen.models`, ...).
"""
__version__ = "0.1.0"
