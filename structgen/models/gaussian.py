"""Diagonal-Gaussian and Bernoulli helpers for the ladder posterior and the ELBO.

Variances, not standard deviations, flow between modules (softplus outputs are variances,
algorithm.md §0.3). EPS is the reference's 1e-7, added wherever it adds it, so that the
precision weighting and the KLs stay finite for tiny variances.

The Gaussian arithmetic runs in float32 whatever autocast gave its inputs: under fp16 a
variance below ~1.5e-5 has a precision 1/var above fp16's largest value (65,504), and the
inf turned the posterior into NaN (measured: one of four fresh 4-leaf trees had NaN gradients
on its first fp16 step). In fp32 runs the casts are no-ops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-7


def _f32(*tensors):
    return tuple(t.float() for t in tensors)


def precision_weighted(mu_bu, var_bu, mu_prior, var_prior):
    """Combine a bottom-up and a top-down Gaussian by precision weighting (§1.4)."""
    mu_bu, var_bu, mu_prior, var_prior = _f32(mu_bu, var_bu, mu_prior, var_prior)
    prec_bu = 1.0 / (var_bu + EPS)
    prec_prior = 1.0 / (var_prior + EPS)
    var = 1.0 / (prec_bu + prec_prior)
    mu = (mu_bu * prec_bu + mu_prior * prec_prior) * var
    return mu, var


def sample(mu, var, generator=None):
    """Reparameterised sample with std = sqrt(var + EPS)."""
    noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + noise * torch.sqrt(var + EPS)


def kl_normal(mu_q, var_q, mu_p, var_p, batch_dims: int = 1):
    """KL(N(mu_q, var_q+EPS) || N(mu_p, var_p+EPS)) summed over all but the first ``batch_dims``
    dims (the batch; or nodes and batch, for the nodes of one depth stacked)."""
    mu_q, var_q, mu_p, var_p = _f32(mu_q, var_q, mu_p, var_p)
    vq, vp = var_q + EPS, var_p + EPS
    kl = 0.5 * (torch.log(vp) - torch.log(vq) + (vq + (mu_q - mu_p) ** 2) / vp - 1.0)
    return kl.flatten(batch_dims).sum(batch_dims)


def kl_standard_normal(mu, var, batch_dims: int = 1):
    mu, var = _f32(mu, var)
    vq = var + EPS
    kl = 0.5 * (-torch.log(vq) + vq + mu**2 - 1.0)
    return kl.flatten(batch_dims).sum(batch_dims)


def log_normal(x, mu, var, batch_dims: int = 1):
    """log N(x; mu, var+EPS) summed over all but the first ``batch_dims`` dims."""
    x, mu, var = _f32(x, mu, var)
    v = var + EPS
    lp = -0.5 * (math.log(2 * math.pi) + torch.log(v) + (x - mu) ** 2 / v)
    return lp.flatten(batch_dims).sum(batch_dims)


def kl_bernoulli_logits(logit_q, logit_p):
    """KL(Bern(sigmoid(logit_q)) || Bern(sigmoid(logit_p))), exact and stable.

    The reference evaluates q·log(ε + q/(p+ε)) + … on probabilities; working on logits gives
    the same quantity without the ε bias and without overflow for confident routers.
    """
    q = torch.sigmoid(logit_q)
    log_q, log_1mq = F.logsigmoid(logit_q), F.logsigmoid(-logit_q)
    log_p, log_1mp = F.logsigmoid(logit_p), F.logsigmoid(-logit_p)
    return q * (log_q - log_p) + (1 - q) * (log_1mq - log_1mp)
