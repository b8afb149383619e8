"""sgld_tuner: gradient-based hyperparameter tuning with HPO-SGLD.

``SGLDHyperTuner`` is imported lazily so that ``import sgld_tuner.core`` (pure torch)
never pulls in scikit-learn or skorch.
"""
__version__ = "0.1.0"
__all__ = ["SGLDHyperTuner", "SamplerSettings", "OuterSettings", "check_hyperparameter",
           "minimize"]


def __getattr__(name):
    if name == "SGLDHyperTuner":
        from .tuner import SGLDHyperTuner

        return SGLDHyperTuner
    if name == "check_hyperparameter":
        from .checks import check_hyperparameter

        return check_hyperparameter
    if name in ("SamplerSettings", "OuterSettings"):
        from . import search

        return getattr(search, name)
    if name == "minimize":
        from .core import minimize

        return minimize
    raise AttributeError(f"module 'sgld_tuner' has no attribute {name!r}")
