"""Shared by the recursion and sampler tests: a warm chain at fixed lam against the
closed-form ridge hypergradient (float64)."""
import torch

from sgld_tuner.core import BilevelProblem, ChainState, hypergradient
from sgld_tuner.problems import RidgePerFeature


def warm_chain_relative_error(settings, rounds: int, lam: float = -1.0) -> float:
    """Relative error of the last of ``rounds`` hypergradients of a persistent chain at a
    fixed ``lam`` (6 per-feature log-penalties), against the exact one."""
    prob = RidgePerFeature(n=60, d=6, random_state=1)
    problem = BilevelProblem(prob.outer_loss, prob.inner_loss, None, prob.theta0,
                             mixed_vjp=prob.mixed_vjp)
    lam_value = torch.full((6,), lam, dtype=torch.float64)
    leaves = [lam_value.clone().requires_grad_(True)]
    state, gen = ChainState(), torch.Generator().manual_seed(0)
    for _ in range(rounds):
        res = hypergradient(problem, leaves, state, settings, gen)
    exact = prob.exact_hypergradient(lam_value)
    return float((res.grad[0] - exact).norm() / exact.norm())
