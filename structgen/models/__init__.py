from structgen.models.treevae import ModelSpec, SubTree, TreeOutput, TreeVAE

__all__ = ["ModelSpec", "SubTree", "TreeOutput", "TreeVAE"]
