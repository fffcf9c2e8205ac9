"""Per-node heads of the top-down tree (algorithm.md §1.4): dense, transformation, router."""
from __future__ import annotations

from torch import Tensor, nn

from .blocks import ConvBlock, conv3x3, make_activation
from .vector_math import softplus


class Dense(nn.Module):
    """Bottom-up feature (B, C_d, r, r) -> the node's bottom-up Gaussian (mu, var), each (B, C_z, r, r).

    Named "dense" after the original TreeVAE; here it is two bias-free 3x3 convs.
    """

    def __init__(self, in_ch: int, latent_ch: int):
        super().__init__()
        self.mu = conv3x3(in_ch, latent_ch)
        self.var = conv3x3(in_ch, latent_ch)

    def forward(self, d: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(d), softplus(self.var(d))


class Transformation(nn.Module):
    """Parent sample (B, C_z, r, r) -> the child's prior (mu_p, var_p), each (B, C_z, r, r).

    A ConvBlock C_z -> C_d with heads back to C_z. ``residual`` is accepted for config parity
    but only acts when C_z == C_d: the block's input and output differ in channels otherwise.
    In every reference config C_z != C_d, so (as in the reference, algorithm.md §8.7) it never
    fires; ``self.block.residual`` says whether it does.
    """

    def __init__(self, latent_ch: int, hidden_ch: int, act: str, residual: bool):
        super().__init__()
        self.block = ConvBlock(latent_ch, hidden_ch, latent_ch, act, residual, with_heads=True)

    def forward(self, z_parent: Tensor) -> tuple[Tensor, Tensor]:
        _, mu, var = self.block(z_parent)
        return mu, var


class Router(nn.Module):
    """(B, in_ch, r, r) -> logit of P(go left), shape (B,).

    conv3x3(in->1) -> flatten r^2 -> [Linear(no bias) -> BN1d -> act -> Dropout] x 2 -> Linear(H, 1).
    The prior router reads the node's sample z, the posterior router (router_q) the bottom-up
    feature. Returning the logit (not the sigmoid) lets the caller compute Bernoulli KLs and
    log-probabilities stably.
    """

    def __init__(self, in_ch: int, r: int, hidden: int, act: str, dropout: float):
        super().__init__()
        self.squeeze = conv3x3(in_ch, 1)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(r * r, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            make_activation(act),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            make_activation(act),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.squeeze(x)).squeeze(-1)
