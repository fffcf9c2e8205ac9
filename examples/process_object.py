"""The CNN-TreeVAE process object used directly, without the training loop.

    .venv/bin/python examples/process_object.py

Builds the MNIST-sized model, takes a few optimiser steps on real digits, splits a leaf with a
(here untrained) sub-tree, and reads leaf probabilities and per-leaf samples. The README shows
this file; tests/test_examples.py runs it.
"""
import torch

from structgen.data import TensorLoader, load_split
from structgen.models import ModelSpec, SubTree, TreeVAE
from structgen.models.elbo import Clamps, total_loss, tree_terms

torch.manual_seed(0)
digits = load_split("digits", "train")                       # uint8 N x 1 x 28 x 28, no download
loader = TensorLoader(digits.images, digits.labels, batch_size=64, seed=0)

model = TreeVAE(ModelSpec(image_shape=(1, 28, 28)))          # root + 2 leaves, reference MNIST sizes
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
for step, (x, _, _) in zip(range(5), loader):
    out = model(x)                                          # one inference pass: routing, latents, decoders
    terms = tree_terms(model, out, x, Clamps())             # rec, kl_root, kl_nodes, kl_decisions
    loss = total_loss(terms, alpha=0.1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.1f}  rec {terms['rec'].item():.1f}")

model.attach("r1", SubTree(model, "r1"))                    # split a leaf: the tree is plain data
print("tree:", model.tree.bfs(), "leaves:", model.tree.leaves())

model.eval()
probs = model.predict(x)                                    # (B, n_leaves) from the q-routers only
print("cluster of the first 8 images:", probs.argmax(1)[:8].tolist())
images, prior_probs, _ = model.generate(4)                  # (4, n_leaves, 1, 28, 28): one image per leaf
print("generated", tuple(images.shape), "leaf probabilities sum to", prior_probs.sum(1).tolist())
