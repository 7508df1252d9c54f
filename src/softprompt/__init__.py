"""softprompt: prompt tuning (Lester et al., 2021) for frozen T5 models, as an MLOps workflow."""

__version__ = "0.1.0"
