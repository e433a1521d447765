"""Non-finite training steps: found on the device, skipped, counted; non-finite weights never saved.

A step is *non-finite* when one of its loss terms (summed over its micro-batches) or the norm of its
gradients (after fp16 unscaling) is NaN or infinite. Such a step changes no weight and no optimiser
state: :func:`step_if_finite` skips it (with fp16 the loss scaler also backs off its scale). Its
data and random draws are consumed as for any step, so a resumed run replays it identically.

Skipping is decided without waiting for the device where the optimiser allows it: the fused
optimisers (``fused=True``, what :func:`hcframe.engine.optim.build_optimizer` builds) take a
``found_inf`` tensor and skip on the device, the mechanism :class:`torch.amp.GradScaler` uses with
them. Others (and every optimiser's first step, see :func:`step_if_finite`) read the flag back.

:class:`NonFiniteSteps` (a built-in hook) reads the flags back in batches, logs each skipped step
with the loss terms that were not finite, counts them (``skipped_steps`` in ``metrics.jsonl``,
``nonfinite_steps`` in ``summary.json``) and stops the run when ``train.max_nonfinite_steps`` steps
in a row were skipped, or at once when the model's own weights or buffers are no longer finite
(no skipping can repair those). :func:`nonfinite_tensors` is what the checkpointer checks before
writing: a checkpoint never holds non-finite weights.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hcframe.components import Hook
from hcframe.engine.loop import RunFailed
from hcframe.metrics import MetricInfo

__all__ = ["NonFiniteSteps", "all_ranks_finite", "describe_nonfinite", "gradients_finite", "nonfinite_tensors", "step_if_finite"]

ADVICE = "lower optim.lr, set train.clip_grad, or check the loss for a division by zero or a log of 0"


def gradients_finite(params: Iterable[nn.Parameter]) -> Tensor:
    """Whether every gradient of ``params`` is finite: a bool scalar on their device (True when
    none has a gradient), computed without waiting for the device.

    Uses the check :class:`torch.amp.GradScaler` runs on every step (one multi-tensor kernel on
    CUDA; on CPU a tenth of the time of a norm over a video ResNet's 111 small tensors), with a
    scale of 1, which leaves the gradients as they are."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    device, dtype = grads[0].device, grads[0].dtype
    check = getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None)
    if check is not None and all(g.device == device and g.dtype == dtype for g in grads):
        found = torch.zeros(1, device=device)
        check(grads, found, torch.ones(1, device=device))
        return found[0] == 0
    # Mixed devices or dtypes: a norm per gradient, NaN or infinite with any non-finite entry.
    norms = [torch.linalg.vector_norm(g.detach().float()).to(device) for g in grads]
    return torch.isfinite(torch.stack(norms)).all()


def all_ranks_finite(finite: Tensor) -> Tensor:
    """``finite`` (a bool scalar) and-ed over the ranks of a distributed run, so that every rank
    skips the same steps (a loss term is per rank; the gradients are already the same)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return finite
    flag = finite.to(torch.int32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.reshape(()).bool()


def step_if_finite(optimizer: torch.optim.Optimizer, finite: Tensor) -> None:
    """``optimizer.step()`` unless ``finite`` (a bool scalar tensor) is False.

    A fused optimiser skips on the device (``found_inf``): no wait for the device. Its first step is
    decided on the host all the same: fused SGD with momentum allocates its momentum buffers
    uninitialised on its first step and a skipped first step leaves them so (torch 2.x; the next
    step then reads garbage), so a fused optimiser is only handed a possible skip once it has state
    (or when it never has any: SGD without momentum).
    """
    stateless = isinstance(optimizer, torch.optim.SGD) and all(g.get("momentum", 0) == 0 for g in optimizer.param_groups)
    if getattr(optimizer, "_step_supports_amp_scaling", False) and (optimizer.state or stateless):
        optimizer.grad_scale = None  # type: ignore[attr-defined]  # the gradients are unscaled already
        optimizer.found_inf = (~finite).to(torch.float32)  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]
    elif bool(finite):
        optimizer.step()


def nonfinite_tensors(tensors: Mapping[str, Any]) -> tuple[list[str], int]:
    """The names of the floating-point tensors of ``tensors`` (a state dict) holding a NaN or an
    infinity, and how many floating-point tensors there are."""
    names, total = [], 0
    for name, value in tensors.items():
        if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
            total += 1
            if value.numel() and not bool(torch.isfinite(value).all()):
                names.append(name)
    return names, total


def describe_nonfinite(names: Sequence[str], total: int, what: str = "tensors") -> str:
    """``"105 of 204 tensors are not finite (first: trunk.stem.0.weight)"``."""
    return f"{len(names)} of {total} {what} are not finite (first: {names[0]})"


def _format(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class NonFiniteSteps(Hook):
    """Counts and logs the steps :func:`step_if_finite` skipped; stops a run that keeps skipping.

    After every step it takes the trainer's ``step_finite`` (a bool on the device) and
    ``step_losses`` (the step's loss terms: names and a vector on the device, summed over
    micro-batches) without reading them; it reads them back every ``read_every`` steps and at
    log steps (``log_every``) and at the end. On CPU the trainer reads every step (nothing to wait
    for); on a GPU every ``train.max_nonfinite_steps`` steps, so a stop comes at most that many
    steps late, while the skipped steps change nothing.

    Stops the run (:class:`~hcframe.engine.loop.RunFailed`) when ``limit`` steps in a row were
    skipped, naming the steps, the task and the loss term (or the gradients when every term was
    finite), and at the first skipped step after which the model's weights or buffers hold a
    non-finite value. Logs ``skipped_steps`` (the count so far) in every log line and keeps
    ``summary["nonfinite_steps"]``; the counts are kept in checkpoints.
    """

    def __init__(self, limit: int, read_every: int = 1, log_every: int = 0) -> None:
        if limit < 1:
            raise ValueError(f"train.max_nonfinite_steps must be >= 1, got {limit}")
        self.limit = limit
        self.read_every = max(1, read_every)
        self.log_every = log_every
        self.pending: list[tuple[int, Tensor, tuple[str, ...], Tensor]] = []
        self.skipped = 0
        self.in_a_row = 0
        self.row_start = 0  # first step of the current row of skipped steps
        self.last: dict[str, Any] | None = None  # the last skipped step: {"step", "nonfinite"}

    def metric_info(self) -> list[MetricInfo]:
        return [MetricInfo("skipped_steps", "other", plot="skipped_steps")]

    def before_train(self) -> None:
        self._publish()

    def after_step(self) -> None:
        trainer = self.trainer
        keys, losses = trainer.step_losses
        self.pending.append((trainer.step, trainer.step_finite, tuple(keys), losses))
        step = trainer.step
        if step % self.read_every == 0 or (self.log_every and step % self.log_every == 0) or step >= trainer.max_steps:
            self.read()

    def after_train(self) -> None:
        if self.pending:
            self.read(stop=False)

    # --- reading the flags back ------------------------------------------------------------------
    def read(self, stop: bool = True) -> None:
        """Read the pending steps' flags (one wait for the device), log and count the skipped
        ones, and stop the run when it must (``stop``)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        flags = torch.stack([finite.reshape(()).to(torch.float32) for _, finite, _, _ in pending]).tolist()
        failure = None
        for (step, _, keys, losses), ok in zip(pending, flags):
            if ok:
                self.in_a_row = 0
                continue
            values = losses.tolist()  # only for the skipped steps
            terms = [(k, v) for k, v in zip(keys, values) if not math.isfinite(v)]
            self.skipped += 1
            self.in_a_row += 1
            if self.in_a_row == 1:
                self.row_start = step
            culprit = _culprit(terms)
            self.last = {"step": step, "nonfinite": [k for k, _ in terms] or ["gradients"]}
            self.trainer.log(f"step {step}: {culprit} is not finite; the step was skipped ({self.skipped} skipped so far)")
            if failure is None:
                failure = self._failure(step, culprit)
        self._publish()
        if failure is not None and stop:
            raise RunFailed(failure)

    def _failure(self, step: int, culprit: str) -> str | None:
        """Why the run cannot go on after skipped step ``step``, or None."""
        model = self.trainer.model
        params = {n: p for n, p in model.named_parameters()}
        bad, total = nonfinite_tensors(params)
        if bad:
            made = f"the update of step {self.row_start - 1} made them so" if self.row_start > 1 else "they were so when training began"
            return (f"step {step}: {culprit} is not finite because the weights are: "
                    f"{describe_nonfinite(bad, total, 'weight tensors')}; {made}; {ADVICE}")
        buffers = {n: b for n, b in model.named_buffers()}
        bad, total = nonfinite_tensors(buffers)
        if bad:
            return (f"step {step}: {culprit} is not finite, and the forward pass left non-finite values in the model's "
                    f"buffers, which skipping the step cannot undo: {describe_nonfinite(bad, total, 'buffers')}; {ADVICE}")
        if self.in_a_row >= self.limit:
            return (f"{self.in_a_row} optimisation steps in a row were not finite (steps {self.row_start}-{step}; "
                    f"train.max_nonfinite_steps = {self.limit}): at step {step} {culprit}; {ADVICE}")
        return None

    def _publish(self) -> None:
        self.trainer.metrics.set("skipped_steps", self.skipped)
        self.trainer.summary["nonfinite_steps"] = {"count": self.skipped, "last": self.last}

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.pending:
            self.read(stop=False)  # a checkpoint holds the counts up to its step
        if not self.skipped:
            return {}
        return {"skipped": self.skipped, "in_a_row": self.in_a_row, "row_start": self.row_start, "last": self.last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.in_a_row = int(state.get("in_a_row", 0))
        self.row_start = int(state.get("row_start", 0))
        last = state.get("last")
        self.last = {"step": int(last["step"]), "nonfinite": list(last["nonfinite"])} if last else None
        self._publish()


def _culprit(terms: list[tuple[str, float]]) -> str:
    """Which loss is not finite: the task terms (``<task>/<term>``) rather than the totals that
    contain them; the gradients when every loss was finite."""
    if not terms:
        return "the gradient (every loss term was finite)"
    own = [(k, v) for k, v in terms if k != "loss" and not k.endswith("/loss")]
    chosen = own or [(k, v) for k, v in terms if k.endswith("/loss")] or terms
    parts = []
    for key, value in chosen:
        if key == "loss":
            parts.append(f"the combined loss (= {_format(value)})")
        else:
            task, term = key.split("/", 1)
            parts.append(f"loss term {term!r} of task {task!r} (= {_format(value)})")
    return " and ".join(parts)
