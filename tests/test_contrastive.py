"""The CIFAR contrastive extension: batched two-view augmentation and the extra loss terms,
on real CIFAR-10 images from the shared JPEG copy."""
import torch

from structgen.config import load_config
from structgen.data import load_split
from structgen.data.augment import two_views
from structgen.models.elbo import Clamps, total_loss
from structgen.models.objective import Contrastive, FullTreeObjective, SubTreeObjective
from structgen.models.treevae import ModelSpec, SubTree, TreeVAE


def cifar_batch(n=8):
    ds = load_split("cifar10", "test", test_fraction=0.2)
    return torch.from_numpy(ds.images[:n]).float() / 255


def test_two_views_are_random_per_image_and_in_range():
    x = cifar_batch()
    g = torch.Generator().manual_seed(0)
    views = two_views(x, g)
    assert views.shape == (16, 3, 32, 32) and views.min() >= 0 and views.max() <= 1
    assert not torch.allclose(views[:8], views[8:])               # two different views per image
    again = two_views(x, torch.Generator().manual_seed(0))
    assert torch.equal(views, again)                              # seeded
    gray = two_views(torch.rand(4, 1, 28, 28), g)
    assert gray.shape == (8, 1, 28, 28)                           # colour ops skip grayscale


def test_contrastive_terms_train_the_cifar_model():
    cfg = load_config("configs/cifar10.yml")
    torch.manual_seed(0)
    model = TreeVAE(ModelSpec.from_config(cfg.model, (3, 32, 32), contrastive=True))
    contrastive = Contrastive(cfg.training.aug_decisions_weight, cfg.training.augmentation_method)
    assert contrastive.on_decisions and contrastive.on_instances
    objective = FullTreeObjective(model, Clamps.from_config(cfg.training), contrastive)
    x = two_views(cifar_batch(4))
    terms = objective(x)
    assert terms["aug"].item() > 0
    loss = total_loss(terms, 0.01, terms["aug"])
    loss.backward()
    assert all(p.grad is not None for p in model.projections.parameters())
    objective.eval()
    assert "aug" not in objective(x)                              # training mode only
    sub = SubTreeObjective(model.eval(), SubTree(model, "r0"), Clamps(), contrastive).train()
    assert sub(x)["aug"].item() > 0
