"""2-D test functions for watching optimizers move: Rosenbrock, Beale, a noisy bowl.

Each has its value and analytic gradient, a classic starting point, the
minimum and a plotting window. ``trajectory`` runs one of gdfast's
optimizers on a 2-element float32 array, exactly as it would run on a
network's parameters.
"""
from dataclasses import dataclass

import numpy as np

__all__ = ["TestFunction", "ROSENBROCK", "BEALE", "NOISY_BOWL", "FUNCTIONS", "trajectory"]


@dataclass(frozen=True)
class TestFunction:
    name: str
    value: object        # f(x, y) on scalars or arrays
    gradient: object     # (x, y, rng) -> (df/dx, df/dy); rng feeds the noise, if any
    start: tuple
    minimum: tuple
    xlim: tuple
    ylim: tuple
    log_contours: bool = False

    __test__ = False     # not a pytest class, despite the name


def _rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def _rosenbrock_grad(x, y, rng=None):
    return -2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)


def _beale_terms(x, y):
    return 1.5 - x + x * y, 2.25 - x + x * y ** 2, 2.625 - x + x * y ** 3


def _beale(x, y):
    t1, t2, t3 = _beale_terms(x, y)
    return t1 ** 2 + t2 ** 2 + t3 ** 2


def _beale_grad(x, y, rng=None):
    t1, t2, t3 = _beale_terms(x, y)
    dx = 2 * t1 * (y - 1) + 2 * t2 * (y ** 2 - 1) + 2 * t3 * (y ** 3 - 1)
    dy = 2 * t1 * x + 4 * t2 * x * y + 6 * t3 * x * y ** 2
    return dx, dy


_BOWL_NOISE = 2.0


def _bowl(x, y):
    return 0.5 * (x ** 2 + 10 * y ** 2)


def _bowl_grad(x, y, rng=None):
    """An elongated bowl (condition number 10) seen through Gaussian gradient noise,
    the way a mini-batch sees the true gradient."""
    noise = rng.normal(0.0, _BOWL_NOISE, 2) if rng is not None else (0.0, 0.0)
    return x + noise[0], 10 * y + noise[1]


ROSENBROCK = TestFunction("rosenbrock", _rosenbrock, _rosenbrock_grad, (-1.5, 2.0), (1.0, 1.0),
                          (-2.0, 2.0), (-1.0, 3.0), log_contours=True)
BEALE = TestFunction("beale", _beale, _beale_grad, (1.0, 1.4), (3.0, 0.5),
                     (-0.5, 4.0), (-1.5, 2.0), log_contours=True)
NOISY_BOWL = TestFunction("noisy-bowl", _bowl, _bowl_grad, (-4.0, 2.0), (0.0, 0.0),
                          (-5.0, 5.0), (-3.0, 3.0))
FUNCTIONS = {f.name: f for f in (ROSENBROCK, BEALE, NOISY_BOWL)}


def trajectory(func, make_optimizer, steps, seed=0):
    """Run ``make_optimizer([p])`` for `steps` steps from ``func.start``.

    p and its gradient are 2-element float32 arrays updated in place by the
    optimizer, the same call path as a model's parameters. Returns the
    (steps + 1, 2) float64 path; stops early if the point leaves every
    reasonable range (a diverging optimizer is part of the picture).
    """
    rng = np.random.default_rng(seed)
    p = np.array(func.start, dtype=np.float32)
    g = np.zeros(2, dtype=np.float32)
    opt = make_optimizer([p])
    path = [p.astype(np.float64)]
    for _ in range(steps):
        g[...] = func.gradient(float(p[0]), float(p[1]), rng)
        opt.step([g])
        if not np.all(np.isfinite(p)) or np.abs(p).max() > 1e6:
            break
        path.append(p.astype(np.float64))
    return np.array(path)
