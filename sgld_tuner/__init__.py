"""sgld_tuner: gradient-based hyperparameter tuning with HPO-SGLD."""
__version__ = "0.1.0"
