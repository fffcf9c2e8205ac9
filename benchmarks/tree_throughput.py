"""Images/s of the CNN-TreeVAE hot paths, ours against a reference-style implementation
(`reference_style.py`) run in the same process on the same 10-leaf MNIST-sized tree.

    .venv/bin/python benchmarks/tree_throughput.py [--batch 256] [--repeats 5] [--threads 2 1]
                                                   [--spectral-norm reference]

Prints images/s for each path and the ratio ours / reference (> 1 means faster), once per
thread count; and ours again with torch's own convolutions (`dense_conv.native_convolutions`,
how the reference runs them), to show what the faster convolutions add. Timings interleave the
implementations so that machine noise hits them alike. The tree carries the MNIST profile's
spectral-norm placement (`reference`: encoder, bottom-up convs and grown denses) unless told
otherwise; both procedures share its modules, and each updates them with its own optimiser (ours:
the training phases' fused Adam, `structgen.train.optimizer`; the reference: torch's default).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from reference_style import DeadHeads, reference_forward, reference_predict, reference_subtree_loss
from structgen.models.elbo import Clamps, total_loss
from structgen.models.objective import FullTreeObjective, SubTreeObjective
from structgen.models.treevae import ModelSpec, SubTree, TreeVAE
from structgen.nn.dense_conv import native_convolutions
from structgen.train.optimizer import adam


def ten_leaf_model(spectral_norm: str = "none") -> TreeVAE:
    model = TreeVAE(ModelSpec((1, 28, 28), spectral_norm=spectral_norm))
    while len(model.tree.leaves()) < 10:
        leaf = min(model.tree.leaves(), key=len)
        model.attach(leaf, SubTree(model, leaf))
    return model


def timed(fn, batch: int, repeats: int, native: bool = False) -> float:
    with native_convolutions() if native else contextlib.nullcontext():
        fn()                                   # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (best is kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch thread counts to measure")
    parser.add_argument("--spectral-norm", default="reference", choices=("none", "decoders", "reference"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ten_leaf_model(args.spectral_norm)
    heads = DeadHeads(model)
    x = torch.rand(args.batch, 1, 28, 28)
    # Each procedure updates with its own optimiser: ours the training phases' (fused Adam), the
    # reference's torch's default Adam, which loops over the parameters in Python on CPU.
    ours_opt = adam(model.parameters(), lr=1e-3)
    ref_opt = torch.optim.Adam(list(model.parameters()) + list(heads.parameters()), lr=1e-3)
    ours_obj = FullTreeObjective(model, Clamps())
    leaf = model.tree.leaves()[-1]
    subtree = SubTree(model, leaf)
    sub_obj = SubTreeObjective(model, subtree, Clamps())
    sub_opt = adam(subtree.parameters(), lr=1e-3)
    ref_sub_opt = torch.optim.Adam(subtree.parameters(), lr=1e-3)

    def train_ours():
        model.train()
        loss = total_loss(ours_obj(x), 1.0)
        ours_opt.zero_grad(); loss.backward(); ours_opt.step()  # noqa: E702

    def train_ref():
        model.train()
        loss, _, _ = reference_forward(model, heads, x)
        ref_opt.zero_grad(); loss.backward(); ref_opt.step()  # noqa: E702

    def sub_ours():
        model.eval()
        loss = total_loss(sub_obj(x), 1.0)
        sub_opt.zero_grad(); loss.backward(); sub_opt.step()  # noqa: E702

    def sub_ref():
        model.eval()
        loss = reference_subtree_loss(model, heads, subtree, x)
        ref_sub_opt.zero_grad(); loss.backward(); ref_sub_opt.step()  # noqa: E702

    def route_ours():
        model.eval()
        model.predict(x)

    def route_ref():
        model.eval()
        reference_predict(model, heads, x)

    cases = {"full-tree train step (10 leaves)": (train_ours, train_ref),
             "sub-tree train step below a depth-4 leaf": (sub_ours, sub_ref),
             "routing pass (split selection / pruning / clustering)": (route_ours, route_ref)}
    print(f"torch {torch.__version__}, batch {args.batch}, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, tree depth {model.tree.max_depth()}, spectral norm: {args.spectral_norm}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s)\n{'path':<55}{'ours img/s':>12}{'reference img/s':>17}{'ratio':>8}"
              f"{'ours, torch convs':>19}{'ratio':>8}")
        for name, (ours, ref) in cases.items():
            best_ours = best_ref = best_plain = 0.0
            for _ in range(args.rounds):
                best_ours = max(best_ours, timed(ours, args.batch, args.repeats))
                best_ref = max(best_ref, timed(ref, args.batch, args.repeats, native=True))
                best_plain = max(best_plain, timed(ours, args.batch, args.repeats, native=True))
            print(f"{name:<55}{best_ours:>12.0f}{best_ref:>17.0f}{best_ours / best_ref:>8.2f}"
                  f"{best_plain:>19.0f}{best_plain / best_ref:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
