"""The total concentration the ELBO wants, from the likelihood's curvature.

A Dirichlet guide q(s_l) = Dirichlet(phi_l) splits into a mean m_l = phi_l / phi_l0 and a total
concentration phi_l0 = sum_j phi_lj, which alone sets the widths of its intervals:
Cov_q(s_l) = (diag(m_l) - m_l m_l^T) / (phi_l0 + 1). SVI finds m_l in an epoch or two, but moves
phi_l0 slowly (each step's gradient in phi_l0 is mostly the noise of the sampled switch), so after a
fixed budget phi_l0 still carries its initial value (docs/convergence.md). With m_l held, the
ELBO (eq. 7) as a function of phi_l0 is, to second order in s_l - m_l,

    L(phi_l0) = log p(D | m_l) - c_l / (phi_l0 + 1) - KL(Dirichlet(phi_l0 m_l) || Dirichlet(alpha0 1)),
    c_l = 1/2 tr(H_l (diag(m_l) - m_l m_l^T)),

with H_l the Hessian in s_l of the full-data negative log-likelihood at m_l (exact for a
log-likelihood quadratic in s_l; nearly so once phi_l0 is large, as it is with thousands of
examples). ``optimal_phi0`` maximises it (exact Dirichlet KL, bisection in log phi_l0);
``settle_concentrations`` sets a guide's phi_l to phi_l0* m_l for every layer, keeping the means.
On the reduced problem of ``benchmarks/nuts_reference.py`` phi_l0* is within 3% of what a
full-batch fit reaches after 3000 steps, and within 4% for LeNet-5's fully connected layers; for
its conv layers it is 24-41% below the fit's (the ReLU kinks a larger spread crosses add curvature
the Hessian at the mean does not see): a lower bound of the right order there
(``benchmarks/phi0_optimum.py``, docs/convergence.md).

``whole`` (the ``quadratic`` recipe) also moves the means, by a damped Newton step on that
expansion: the gradient g_l of the *whole* training set (a subsample's gradient is noise that
H_l^-1 amplifies along the directions the likelihood barely pins: on LeNet-5 the step's means
moved by 6-33 posterior sds between two disjoint 10,000-example subsamples, against at most 0.8
with the full-data gradient and H_l from either subsample), H_l on the subsample. The step is then
checked on the whole training set: taken if it raises
ELBO(phi) ~ log p(D | m) - 1/2 tr(H_l Cov_phi) - KL(phi) (the log-likelihood at the new means
exact, the spread to second order, phi_0 the optimum given the means), else a quarter of it, else
none. Where the log-likelihood is far from quadratic over the step (LeNet-5's conv1, whose whole
step lowers log p(D | m) by about 540 nats) a smaller step or the settled point is kept
(``benchmarks/settle_elbo.py``, docs/convergence.md).

Under the layer-by-layer schedule each layer's likelihood is its stage's: only that layer switched,
the others as the network has them; under the joint schedule the other layers sit at their
posterior means (their spread is ignored, as a mean-field guide ignores it).
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from ..data import Split
from ..loop import LoopCallback, LoopEvent
from ..models.common import evaluating
from ..models.switched import SwitchModel
from .frozen_head import FrozenHead, FrozenHeads, frozen_head, logit_batches
from .guides import DirichletGuide


ROUND_GAIN = 1.0
"""A further round of the whole settle (``rounds``) follows only a round that raised the whole data's
ELBO by at least this many nats: below it the posterior it changes is the same to the ELBO."""


def optimal_phi0(c: float, mean: torch.Tensor, alpha0: float) -> float:
    """The phi_0 > 0 that maximises -c / (phi_0 + 1) - KL(Dirichlet(phi_0 mean) || Dirichlet(alpha0 1)).

    ``c`` (the curvature term, >= 0) and ``mean`` (a point inside the simplex) as in the module
    docstring. With no curvature (c = 0) the answer is the prior's total, D alpha0, when ``mean`` is
    uniform, and as close to it as the KL allows otherwise."""
    if not (c >= 0 and math.isfinite(c)):
        raise ValueError(f"c must be a non-negative number, got {c!r}")
    if not (alpha0 > 0 and math.isfinite(alpha0)):
        raise ValueError(f"alpha0 must be positive, got {alpha0!r}")
    mean = torch.as_tensor(mean, dtype=torch.float64)
    if mean.dim() != 1 or not bool((mean > 0).all()) or abs(float(mean.sum()) - 1) > 1e-6:
        raise ValueError("mean must be a vector of positive entries summing to one")
    prior = Dirichlet(torch.full_like(mean, alpha0))

    def slope(t: float) -> float:  # d L / d log phi_0
        log_phi0 = torch.tensor(t, dtype=torch.float64, requires_grad=True)
        phi0 = log_phi0.exp()
        value = -c / (phi0 + 1) - kl_divergence(Dirichlet(phi0 * mean), prior)
        return float(torch.autograd.grad(value, log_phi0)[0])

    lo, hi = math.log(1e-3), math.log(1e12)
    if slope(lo) <= 0:
        return math.exp(lo)
    if slope(hi) >= 0:
        return math.exp(hi)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    return math.exp((lo + hi) / 2)


def layer_gradient_hessian(model: SwitchModel, layer: str, mean: torch.Tensor, data: Split | FrozenHead | Iterable,
                           others: Mapping[str, torch.Tensor] | None = None, batch_size: int = 1000,
                           max_examples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient g_l and the (symmetrised) Hessian H_l in s_l of the full-data negative
    log-likelihood at s_l = ``mean``, exactly (one backward pass per unit and minibatch), on the
    examples of ``data`` (``layer_curvature``'s arguments) scaled by ``model.num_data`` over the
    examples read."""
    _, h, g, _, scale = _curvature(model, layer, mean, data, others, batch_size, max_examples, None, None)
    return g * scale, (h + h.T) / 2 * scale


def _layer_mean(model: SwitchModel, layer: str, mean) -> torch.Tensor:
    """``mean`` as a float64 vector, checked to be one value per unit of switched ``layer``."""
    if layer not in model.widths:
        raise ValueError(f"layer: no switched layer named {layer!r}; the layers are {', '.join(model.layers)}")
    m = torch.as_tensor(mean, dtype=torch.float64).detach()
    if m.shape != (model.widths[layer],):
        raise ValueError(f"mean must have {model.widths[layer]} entries for {layer}, got shape {tuple(m.shape)}")
    return m


def layer_nll(model: SwitchModel, layer: str, mean: torch.Tensor, data: Split | FrozenHead | Iterable,
              others: Mapping[str, torch.Tensor] | None = None, batch_size: int = 256,
              gradient: bool = False) -> tuple[float, torch.Tensor | None]:
    """The negative log-likelihood -log p(D | s_l = ``mean``) summed over *every* example of
    ``data`` (no subsample, no scaling; ``others`` as in ``layer_curvature``) and, with
    ``gradient``, its gradient in s_l (else None): one pass over the data, a backward pass per
    minibatch only with ``gradient``."""
    m = _layer_mean(model, layer, mean)
    s = m.clone().requires_grad_(gradient)
    g = torch.zeros_like(m) if gradient else None
    total, seen = 0.0, 0
    with torch.set_grad_enabled(gradient), evaluating(model.network):
        for forward, y in logit_batches(model.network, layer, data, batch_size):
            scales = {**(others or {}), layer: model.factors[layer] * s.to(torch.get_default_dtype())}
            with model.network.scaled(scales):
                nll = F.cross_entropy(forward(), y, reduction="sum")
            if gradient:
                g += torch.autograd.grad(nll, s)[0]
            total += float(nll.detach())
            seen += len(y)
    if seen == 0:
        raise ValueError("data holds no examples")
    return total, g


def _spread_elbo(nll: float, h: torch.Tensor, phi: torch.Tensor, alpha0: float) -> float:
    """ELBO(phi) to second order in the spread: -nll(m) - 1/2 tr(H Cov_phi) - KL(phi || prior),
    with nll(m) the exact full-data negative log-likelihood at phi's means."""
    phi0 = phi.sum()
    m = phi / phi0
    cov = (torch.diag(m) - torch.outer(m, m)) / (phi0 + 1)
    kl = kl_divergence(Dirichlet(phi), Dirichlet(torch.full_like(phi, alpha0)))
    return float(-nll - 0.5 * torch.trace(h @ cov) - kl)


def checked_step(model: SwitchModel, layer: str, data: Split | FrozenHead | Iterable, others, h: torch.Tensor,
                 settled: torch.Tensor, nll_settled: float, step: torch.Tensor, floor: float = 0.0,
                 fractions: Sequence[float] = (1.0, 0.25)) -> tuple[torch.Tensor, float, float]:
    """Backtracking on the whole training set: the first of ``fractions`` of the way from
    ``settled``'s means to ``step``'s (in log phi) whose ELBO (``_spread_elbo``: exact
    log-likelihood at its means) is above the settled point's, else ``settled``. Each candidate's
    total is the optimum given its means, phi_0*(c(m)) (``optimal_phi0``, c from ``h``), as it is at
    the expansion's optimum itself: the widths then follow the means smoothly instead of
    interpolating two totals. Returns phi, the fraction taken (0: none) and the ELBO gained."""
    base = _spread_elbo(nll_settled, h, settled, model.alpha0)
    for t in fractions:
        mixed = settled.log() * (1 - t) + step.log() * t
        m = torch.softmax(mixed, 0)
        phi = (optimal_phi0(_trace_term(h, m), m, model.alpha0) * m).clamp_min(floor * (1 + 1e-6))
        nll, _ = layer_nll(model, layer, phi / phi.sum(), data, others)
        value = _spread_elbo(nll, h, phi, model.alpha0)
        if value > base:
            return phi, float(t), value - base
    return settled, 0.0, 0.0


def layer_curvature(model: SwitchModel, layer: str, mean: torch.Tensor, data: Split | FrozenHead | Iterable,
                    others: Mapping[str, torch.Tensor] | None = None, batch_size: int = 1000,
                    max_examples: int | None = None, probes: int | None = None,
                    generator: torch.Generator | None = None) -> float:
    """c_l = 1/2 tr(H_l (diag(m) - m m^T)) for ``layer`` at ``mean`` (module docstring).

    H_l is the exact Hessian (one backward pass per unit and minibatch) of the negative
    log-likelihood of ``data`` (a ``Split`` in batches of ``batch_size``, an iterable of
    ``(x, y[, idx])`` minibatches, or a ``FrozenHead`` of the layer: the layers below it computed
    once, ``inference.frozen_head``), scaled by ``model.num_data`` over the examples read, so that a
    subsample (``max_examples``) estimates the full-data curvature. ``others``: the scales
    (factor times switch) of other layers switched meanwhile.

    ``probes`` (a positive int) estimates the trace instead of building H_l: tr(H_l S) = E[z^T H_l z]
    for z ~ Normal(0, S), S = diag(m) - m m^T, drawn as z = sqrt(m) * e - m (sqrt(m) . e) with
    e ~ Normal(0, I) (``generator`` seeds it); each minibatch takes ``probes`` fresh draws, one
    Hessian-vector product each, instead of one backward pass per unit. Unbiased; it can pay only
    for a layer much wider than ``probes`` (on LeNet-5 the exact trace on a subsample is as cheap)."""
    m, h, _, quad, scale = _curvature(model, layer, mean, data, others, batch_size, max_examples, probes, generator)
    if probes is not None:
        return 0.5 * quad * scale
    return _trace_term((h + h.T) / 2 * scale, m)


def _trace_term(h: torch.Tensor, m: torch.Tensor) -> float:
    """c = 1/2 tr(H (diag(m) - m m^T)), the curvature term of the module docstring."""
    return 0.5 * float(torch.trace(h @ (torch.diag(m) - torch.outer(m, m))))


def _curvature(model, layer, mean, data, others, batch_size, max_examples, probes, generator):
    """The pass over ``data`` behind ``layer_curvature`` and ``layer_gradient_hessian``: the
    mean, the summed Hessian (exact; zeros with probes), the summed gradient, the probes' mean of
    ``z^T H z`` summed over minibatches (0 without), and the scale num_data / examples read."""
    m = _layer_mean(model, layer, mean)
    if probes is not None and (isinstance(probes, bool) or not isinstance(probes, int) or probes < 1):
        raise ValueError(f"probes must be a positive int or None, got {probes!r}")
    h = torch.zeros(len(m), len(m), dtype=torch.float64)
    g = torch.zeros(len(m), dtype=torch.float64)
    quad = 0.0
    root = m.sqrt()
    seen = 0
    s = m.clone().requires_grad_(True)
    with evaluating(model.network):
        for forward, y in logit_batches(model.network, layer, data, batch_size, max_examples):
            scales = {**(others or {}), layer: model.factors[layer] * s.to(torch.get_default_dtype())}
            with model.network.scaled(scales):
                nll = F.cross_entropy(forward(), y, reduction="sum")
            grad = torch.autograd.grad(nll, s, create_graph=True)[0]
            g += grad.detach()
            if probes is None:
                for j in range(len(m)):
                    h[j] += torch.autograd.grad(grad[j], s, retain_graph=j + 1 < len(m))[0].detach()
            else:
                for k in range(probes):
                    e = torch.randn(len(m), dtype=torch.float64, generator=generator)
                    z = root * e - m * (root @ e)
                    hz = torch.autograd.grad(grad @ z, s, retain_graph=k + 1 < probes)[0].detach()
                    quad += float(z @ hz) / probes
            seen += len(y)
    if seen == 0:
        raise ValueError("data holds no examples")
    return m, h, g, quad, model.num_data / seen


def settle_concentrations(model: SwitchModel, guide: DirichletGuide, data: Split | Iterable,
                          layers: Sequence[str] | None = None, schedule: str = "sequential",
                          batch_size: int = 1000, max_examples: int | None = None, probes: int | None = None,
                          seed: int = 0, whole: bool = False, heads: FrozenHeads | None = None,
                          rounds: int = 1) -> dict[str, dict[str, float]]:
    """Set every layer's phi_l to phi_l0* m_l: the fitted means kept, the total concentration the
    ELBO's optimum gives them (module docstring; entries are kept above the guide's floor).
    ``probes`` (with its draws seeded by ``seed``) estimates each layer's curvature stochastically
    (``layer_curvature``); None computes it exactly. With ``whole`` every phi_lj is then set to the
    optimum of the ELBO's quadratic expansion about the means (``optimal_concentrations``): the
    means move too, by a Newton-like step with the full-data gradient, checked on the whole data
    (``checked_step``; module docstring); needs the exact Hessian (no ``probes``).
    Returns, per layer, ``{"c", "phi0_before", "phi0_settled", "phi0"}`` (and, with ``whole``,
    ``surrogate_gain``, the expansion's ELBO gained by the full step, ``step``, the fraction of it
    taken, 0 when none raised the whole data's ELBO, and ``elbo_gain``, what the taken step gained
    on the whole data); ``rounds`` > 1 takes further checked steps, each from where the last one
    landed, until one takes none or gains less than ``ROUND_GAIN`` (``steps`` lists each round's
    fraction). The whole settle's passes over a ``Split`` compute the layers below each
    switch once (``inference.frozen_head``); ``heads``, ``FrozenHeads`` of the model's network on
    ``data`` (those switch learning built), lends it the ones already computed."""
    if not isinstance(guide, DirichletGuide):
        raise TypeError(f"guide must be a DirichletGuide, got {type(guide).__name__}")
    if schedule not in ("sequential", "joint"):
        raise ValueError(f"schedule must be 'sequential' or 'joint', got {schedule!r}")
    if whole and probes is not None:
        raise ValueError("probes: the whole settle (whole=True) needs the exact Hessian; leave probes None")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    if heads is not None and (heads.split is not data or heads.network is not model.network):
        raise ValueError("heads: FrozenHeads of another network or split than the model's and data")
    layers = list(model.layers if layers is None else layers)
    with torch.no_grad():
        phis = {k: guide.concentration(k).detach().double() for k in model.layers}
    means = {k: phi / phi.sum() for k, phi in phis.items()}
    out = {}
    for layer in layers:
        others = None
        if schedule == "joint":
            others = {k: model.factors[k] * means[k].to(torch.get_default_dtype()) for k in model.layers if k != layer}
        m = means[layer]
        out[layer] = {"phi0_before": float(phis[layer].sum())}
        if whole:  # several passes over the data: the layers below this one computed once (frozen_head)
            if heads is not None and others is None:  # the stage's, kept from switch learning
                source = heads.get(layer) or data
            else:
                source = (frozen_head(model.network, layer, data, others) if isinstance(data, Split) else None) or data
            value, record = _checked_newton(model, layer, m, source, others, batch_size, max_examples, guide.floor,
                                            rounds)
            out[layer].update(record)
        else:
            c = layer_curvature(model, layer, m, data, others, batch_size, max_examples, probes,
                                torch.Generator().manual_seed(seed))
            value = (optimal_phi0(c, m, model.alpha0) * m).clamp_min(guide.floor * (1 + 1e-6))
            out[layer].update(c=c, phi0_settled=float(value.sum()))
        guide.set_concentrations({layer: value})
        out[layer]["phi0"] = float(value.sum())
    return out


def _checked_newton(model, layer, m, source, others, batch_size, max_examples, floor, rounds):
    """The whole settle of one layer from means ``m``: up to ``rounds`` checked Newton steps, each
    from the point the last one reached (gradient and Hessian there, the step checked on the whole
    data, ``checked_step``), ending early at the first round that takes none or gains less than
    ``ROUND_GAIN`` nats. Returns phi and the record: ``c`` and ``phi0_settled`` of the first round,
    ``surrogate_gain`` of its full step, ``step`` its fraction taken, ``steps`` every round's,
    ``elbo_gain`` the sum."""
    record: dict = {"steps": []}
    gained = 0.0
    for r in range(rounds):
        _, h = layer_gradient_hessian(model, layer, m, source, others, batch_size, max_examples)
        c = _trace_term(h, m)
        nll, g = layer_nll(model, layer, m, source, others, gradient=True)  # every example
        value = (optimal_phi0(c, m, model.alpha0) * m).clamp_min(floor * (1 + 1e-6))
        step, gain = optimal_concentrations(g, h, m, model.alpha0, value, floor=floor)
        if r == 0:
            record.update(c=c, phi0_settled=float(value.sum()), surrogate_gain=gain)
        if not torch.allclose(value / value.sum(), m, rtol=0, atol=1e-9):  # the floor moved the means
            nll, _ = layer_nll(model, layer, value / value.sum(), source, others)
        value, taken, elbo_gain = checked_step(model, layer, source, others, h, value, nll, step, floor)
        record["steps"].append(taken)
        gained += elbo_gain
        if taken == 0 or elbo_gain < ROUND_GAIN:
            break
        m = value / value.sum()
    record.update(step=record["steps"][0], elbo_gain=gained)
    return value, record


def optimal_concentrations(g: torch.Tensor, h: torch.Tensor, mean: torch.Tensor, alpha0: float, start: torch.Tensor,
                           floor: float = 0.0, trust: float = 5.0, steps: int = 1000) -> tuple[torch.Tensor, float]:
    """The phi that maximises the ELBO's quadratic expansion about ``mean`` (m-hat),

        -[g^T (m - m-hat) + 1/2 (m - m-hat)^T H+ (m - m-hat) + 1/2 tr(H Cov_phi)] - KL(Dirichlet(phi) || Dirichlet(alpha0 1)),

    m = phi / phi_0 and Cov_phi = (diag(m) - m m^T) / (phi_0 + 1), with g and H the gradient and
    Hessian of the full-data negative log-likelihood at m-hat (``layer_gradient_hessian``; H+ its
    positive part, so that the step in the means is a damped Newton step). Adam on log phi from
    ``start`` for ``steps`` steps, within ``trust`` of it in every log phi_j, every phi_j above
    ``floor``. Returns phi and the expansion's gain over ``start``."""
    for name, value in (("trust", trust), ("alpha0", alpha0)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be positive, got {value!r}")
    m_hat = torch.as_tensor(mean, dtype=torch.float64).detach()
    g, h = g.double().detach(), h.double().detach()
    evals, evecs = torch.linalg.eigh((h + h.T) / 2)
    h_plus = evecs @ torch.diag(evals.clamp_min(0)) @ evecs.T
    prior = Dirichlet(torch.full_like(m_hat, alpha0))
    low = torch.as_tensor(start, dtype=torch.float64).detach().log()
    lo, hi = torch.clamp(low - trust, min=math.log(max(floor, 1e-300)) if floor > 0 else -math.inf), low + trust

    def loss(u: torch.Tensor) -> torch.Tensor:
        phi = u.exp()
        phi0 = phi.sum()
        m = phi / phi0
        d = m - m_hat
        cov = (torch.diag(m) - torch.outer(m, m)) / (phi0 + 1)
        return g @ d + 0.5 * d @ h_plus @ d + 0.5 * torch.trace(h @ cov) + kl_divergence(Dirichlet(phi), prior)

    u = low.clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss(u).backward()
        opt.step()
        with torch.no_grad():
            u.copy_(torch.maximum(torch.minimum(u, hi), lo))
    with torch.no_grad():
        gain = float(loss(low) - loss(u))
    if not gain > 0:  # nothing better found: keep the start
        return low.exp(), 0.0
    return u.detach().exp(), gain


class SettleEachEpoch(LoopCallback):
    """A ``fit`` callback: at every epoch end, set the active layers' total concentrations to their
    optimum given the current means (``settle_concentrations`` on the first ``max_examples``
    examples of ``data``).

    SVI alone moves phi_l0 up from its initial value over thousands of steps (docs/convergence.md);
    meanwhile its switch draws are far wider than the posterior's, and the means are learned under
    that noise. Settled after the first epoch, the draws are as tight as the ELBO wants them and
    the initial value is forgotten; the means then learn under the posterior's own spread, and
    SVI's steps in phi_l0 only jitter about the settled value (docs/convergence.md measures both).
    ``history`` keeps, per epoch end, the layers' settled phi_l0."""

    def __init__(self, model: SwitchModel, guide: DirichletGuide, data: Split | Iterable, schedule: str = "sequential",
                 max_examples: int | None = 2000, probes: int | None = None, seed: int = 0) -> None:
        if not isinstance(guide, DirichletGuide):
            raise TypeError(f"guide must be a DirichletGuide, got {type(guide).__name__}")
        self.model, self.guide, self.data, self.schedule = model, guide, data, schedule
        self.max_examples, self.probes, self.seed = max_examples, probes, seed
        self.history: list[dict[str, float]] = []

    def on_epoch_end(self, event: LoopEvent) -> None:
        layers = getattr(event, "layers", None) or self.model.active_layers
        out = settle_concentrations(self.model, self.guide, self.data, layers=layers, schedule=self.schedule,
                                    max_examples=self.max_examples, probes=self.probes,
                                    seed=self.seed + len(self.history))
        self.history.append({k: v["phi0"] for k, v in out.items()})
