"""Scaling laws on a ladder of tiny GPTs: loss against parameters and training FLOPs, the fitted exponent, and the
compute-optimal size for a budget (``python -m llm_core.labs.scaling --budget-s S --json``)."""

from llm_core.labs.scaling.fit import (
    CHINCHILLA_TOKENS_PER_PARAM,
    ComputeOptimal,
    JointLaw,
    PowerLaw,
    compute_optimal,
    fit_joint,
    fit_power_law,
    frontier,
)
from llm_core.labs.scaling.ladder import (
    LADDER,
    MIN_RUNG_S,
    LadderEvent,
    LadderPoint,
    Rung,
    ScalingArgs,
    ScalingResult,
    analyse,
    check_budget,
    run_ladder,
)

__all__ = ["CHINCHILLA_TOKENS_PER_PARAM", "ComputeOptimal", "JointLaw", "PowerLaw", "compute_optimal", "fit_joint",
           "fit_power_law",
           "frontier", "LADDER", "MIN_RUNG_S", "LadderEvent", "LadderPoint", "Rung", "ScalingArgs", "ScalingResult",
           "analyse", "check_budget", "run_ladder"]
