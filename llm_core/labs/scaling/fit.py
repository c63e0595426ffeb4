"""Fitting the scaling laws: ``L(x) = a * x^-alpha + c`` by least squares, the compute frontier, and the
compute-optimal model size for a budget (Chinchilla's IsoFLOP method).

Pure numbers (numpy + scipy): no torch here, so the fits are tested on synthetic points in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: compute-optimal models see ~20 tokens per parameter


@dataclass
class PowerLaw:
    """``L(x) = a * x^-alpha + c``; ``*_err`` are one standard error from the fit's covariance."""

    a: float
    alpha: float
    c: float
    a_err: float
    alpha_err: float
    c_err: float
    r2: float  # share of the loss's variance the curve explains (1 = every point on it)
    n_points: int

    def __call__(self, x: Any) -> Any:
        return self.a * np.power(np.asarray(x, dtype=float), -self.alpha) + self.c

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    """Least-squares fit of ``y = a * x^-alpha + c`` with ``a > 0``, ``0 < alpha < 3``, ``0 <= c < min(y)``.

    x is rescaled to its geometric mean before fitting (parameter counts of 1e5..1e7 and FLOPs of 1e12..1e15
    make ``a`` otherwise span dozens of orders of magnitude, which breaks the optimiser's conditioning); ``a`` and
    its error are mapped back to the original units. Needs at least 4 points (3 parameters and one to spare,
    or the covariance is undefined)."""
    from scipy.optimize import curve_fit

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-D and the same length, got {xs.shape} and {ys.shape}")
    if len(xs) < 4:
        raise ValueError(f"fitting a*x^-alpha + c needs at least 4 points, got {len(xs)}")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys)) and np.all(xs > 0)):
        raise ValueError("the points must be finite with x > 0")
    scale = float(np.exp(np.mean(np.log(xs))))
    u = xs / scale

    def f(u_: np.ndarray, a: float, alpha: float, c: float) -> np.ndarray:
        return a * np.power(u_, -alpha) + c

    lo = float(ys.min())
    span = max(float(ys.max() - lo), 1e-3)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for alpha0 in (0.1, 0.3, 1.0):  # a few starts: the surface has shallow valleys when c and a trade off
        p0 = [span, alpha0, max(lo - span, 0.0) if lo - span > 0 else lo * 0.5]
        try:
            popt, pcov = curve_fit(f, u, ys, p0=p0, bounds=([1e-12, 1e-4, 0.0], [np.inf, 3.0, lo]),
                                   maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((f(u, *popt) - ys) ** 2))
        if best is None or sse < best[0]:
            best = (sse, popt, pcov)
    if best is None:
        raise ValueError("the power law did not converge on these points")
    sse, (a_u, alpha, c), pcov = best
    errs = np.sqrt(np.clip(np.diag(pcov), 0.0, None)) if np.all(np.isfinite(pcov)) else np.full(3, np.inf)
    sst = float(np.sum((ys - ys.mean()) ** 2))
    # back to original units: a_u * (x/scale)^-alpha = (a_u * scale^alpha) * x^-alpha (delta method for a's error)
    a = a_u * scale ** alpha
    da = math.hypot(errs[0] * scale ** alpha, a * math.log(scale) * errs[1]) if math.isfinite(errs[1]) else math.inf
    return PowerLaw(a=float(a), alpha=float(alpha), c=float(c), a_err=float(da), alpha_err=float(errs[1]),
                    c_err=float(errs[2]), r2=1.0 - sse / sst if sst > 0 else 1.0, n_points=len(xs))


def frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The compute frontier: of (flops, loss) points from every model's learning curve, those that beat every
    point at lower compute. It falls with compute by construction: the best loss money (FLOPs) can buy."""
    out: list[tuple[float, float]] = []
    for f, loss in sorted((float(f), float(v)) for f, v in points if f > 0 and math.isfinite(v)):
        if not out or loss < out[-1][1]:
            out.append((f, loss))
    return out


@dataclass
class ComputeOptimal:
    """The model size that reaches the lowest loss for the budget, and what Chinchilla's rule would choose."""

    params: float  # N_opt
    tokens: float  # D_opt = flops / (6 N_opt)
    tokens_per_param: float
    flops: float  # the budget in training FLOPs (median over the ladder: each model had the same wall-clock)
    loss: float  # at N_opt (parabola's minimum, else the best model's loss)
    method: str  # "parabola" (IsoFLOP minimum between models) | "best model" | "edge: smallest"/"edge: largest"
    chinchilla_params: float  # sqrt(flops / (6 * 20)): the size Chinchilla's ~20 tokens/parameter would choose
    chinchilla_tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def compute_optimal(params: Sequence[float], losses: Sequence[float], flops: Sequence[float]) -> ComputeOptimal:
    """Chinchilla's approach 2 on one IsoFLOP profile: the loss of each size at the same budget is U-shaped in
    log N (small models run out of capacity, large ones out of tokens); a parabola through the best model and
    its two neighbours puts the minimum between them. At an end of the ladder the best model is the answer and
    ``method`` says the optimum may lie beyond it."""
    n, loss, c = (np.asarray(v, dtype=float) for v in (params, losses, flops))
    if len(n) == 0 or not (len(n) == len(loss) == len(c)):
        raise ValueError("need the same number (> 0) of sizes, losses and FLOPs")
    budget = float(np.median(c))
    i = int(np.argmin(loss))
    n_opt, l_opt, method = float(n[i]), float(loss[i]), "best model"
    if len(n) >= 3 and i in (0, len(n) - 1):
        method = "edge: smallest" if i == 0 else "edge: largest"
    elif len(n) >= 3:
        x = np.log10(n[i - 1:i + 2])
        k2, k1, k0 = np.polyfit(x, loss[i - 1:i + 2], 2)
        if k2 > 0:  # a true minimum (the middle point is the lowest, so it lies between the neighbours)
            x_opt = -k1 / (2 * k2)
            n_opt, l_opt, method = float(10 ** x_opt), float(k2 * x_opt ** 2 + k1 * x_opt + k0), "parabola"
    tokens = budget / (6 * n_opt)
    return ComputeOptimal(params=n_opt, tokens=tokens, tokens_per_param=tokens / n_opt, flops=budget, loss=l_opt,
                          method=method, chinchilla_params=math.sqrt(budget / (6 * CHINCHILLA_TOKENS_PER_PARAM)))


@dataclass
class JointLaw:
    """Chinchilla's ``L(N, D) = E + A * N^-alpha + B * D^-beta`` (Hoffmann et al. 2022, approach 3): the loss falls
    as a power of the model size N and of the training tokens D, down to the irreducible E. At a fixed D it is
    ``a * N^-alpha + c`` with ``a = A`` and ``c = E + B * D^-beta``."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    alpha_err: float
    beta_err: float
    E_err: float
    r2: float
    n_points: int

    def __call__(self, n: Any, d: Any) -> Any:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A * n ** -self.alpha + self.B * d ** -self.beta

    def optimal_params(self, flops: float) -> float:
        """N minimising L(N, C / 6N) at a compute of ``flops``: G * (C/6)^(beta/(alpha+beta))."""
        a, b = self.alpha, self.beta
        g = (a * self.A / (b * self.B)) ** (1 / (a + b))
        return float(g * (flops / 6) ** (b / (a + b)))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fit_joint(params: Sequence[float], tokens: Sequence[float], losses: Sequence[float]) -> JointLaw:
    """Least-squares fit of ``L(N, D) = E + A N^-alpha + B D^-beta`` to (N, D, loss) points: each model's final
    loss and its evaluations along the way (the same N at growing D). N and D are rescaled to their geometric
    means for the optimiser, and several starting exponents are tried (the surface has long shallow valleys).
    Needs at least 8 points (5 parameters and 3 to spare) from at least 3 sizes."""
    from scipy.optimize import curve_fit

    n, d, y = (np.asarray(v, dtype=float) for v in (params, tokens, losses))
    if not (n.shape == d.shape == y.shape) or n.ndim != 1:
        raise ValueError("params, tokens and losses must be 1-D and the same length")
    if len(y) < 8 or len(set(n.tolist())) < 3:
        raise ValueError(f"it needs at least 8 validation losses from 3 sizes, got {len(y)} from "
                         f"{len(set(n.tolist()))} (more evaluations per model, or a larger budget)")
    if not (np.all(np.isfinite(y)) and np.all(n > 0) and np.all(d > 0)):
        raise ValueError("the points must be finite with N > 0 and D > 0")
    sn, sd = float(np.exp(np.log(n).mean())), float(np.exp(np.log(d).mean()))
    u, v = n / sn, d / sd

    def f(x: np.ndarray, e: float, a: float, alpha: float, b: float, beta: float) -> np.ndarray:
        return e + a * x[0] ** -alpha + b * x[1] ** -beta

    lo, span = float(y.min()), max(float(np.ptp(y)), 1e-3)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for alpha0 in (0.2, 0.5, 1.0):
        for beta0 in (0.2, 0.5, 1.0):
            p0 = [0.7 * lo, span / 2, alpha0, span / 2, beta0]
            try:
                popt, pcov = curve_fit(f, np.vstack([u, v]), y, p0=p0, maxfev=20000,
                                       bounds=([0.0, 1e-9, 0.01, 1e-9, 0.01], [lo, np.inf, 2.0, np.inf, 2.0]))
            except (RuntimeError, ValueError):
                continue
            sse = float(np.sum((f(np.vstack([u, v]), *popt) - y) ** 2))
            if best is None or sse < best[0]:
                best = (sse, popt, pcov)
    if best is None:
        raise ValueError("the joint law did not converge on these points")
    sse, (e, a_u, alpha, b_u, beta), pcov = best
    errs = np.sqrt(np.clip(np.diag(pcov), 0.0, None)) if np.all(np.isfinite(pcov)) else np.full(5, np.inf)
    sst = float(np.sum((y - y.mean()) ** 2))
    return JointLaw(E=float(e), A=float(a_u * sn ** alpha), alpha=float(alpha), B=float(b_u * sd ** beta),
                    beta=float(beta), alpha_err=float(errs[2]), beta_err=float(errs[4]), E_err=float(errs[0]),
                    r2=1.0 - sse / sst if sst > 0 else 1.0, n_points=len(y))
