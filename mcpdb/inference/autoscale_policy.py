"""When to add or remove inference workers: a pure policy, fed one observation a second by the leader.

Demand is the requests in the system (in flight plus queued) over the live
workers, per slot. The policy averages it over the last ``window``
observations, then:

- scales up when utilisation is above ``target_per_slot``, straight to the
  number of workers that brings it back to the target (at most ``max``);
- scales down by one worker when utilisation is below ``scale_down_below``
  (at least ``min``, and to zero only when there is no demand at all);
- holds in between (the hysteresis band), and for ``cooldown_s`` after any
  change, so a worker that is still loading its model is not counted as
  missing capacity and the next decision sees the effect of the last.

Why it cannot flap under a steady load: a scale-down leaves utilisation at
most ``scale_down_below * w / (w - 1)`` (at most twice it), which the policy
requires to stay below the target; a scale-up to ``ceil(demand / target)``
workers leaves utilisation above half the target, which it requires to be
above ``scale_down_below``. tests/test_autoscale.py checks these properties.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalePolicy:
    min_workers: int
    max_workers: int
    target_per_slot: float = 1.0
    scale_down_below: float = 0.3
    cooldown_s: float = 15.0
    window: int = 5

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers or self.max_workers < 1:
            raise ValueError(
                f"autoscale bounds must be 0 <= MIN <= MAX, MAX >= 1; got {self.min_workers}:{self.max_workers}"
            )
        if self.target_per_slot <= 0 or self.cooldown_s < 0 or self.window < 1:
            raise ValueError("target per slot must be positive, cooldown non-negative, window at least 1")
        if not 0 <= 2 * self.scale_down_below < self.target_per_slot:
            raise ValueError(
                "scale-down threshold must be below half the target (else a scale-down could "
                "push utilisation over the target and the count would flap)"
            )

    @staticmethod
    def parse_bounds(text: str) -> tuple[int, int]:
        """``"1:4"`` -> (1, 4)."""
        low, sep, high = text.partition(":")
        if not sep or not low.isdigit() or not high.isdigit():
            raise ValueError(f"--autoscale takes MIN:MAX, e.g. 1:4; got {text!r}")
        return int(low), int(high)

    @classmethod
    def from_flags(cls, bounds: str, **settings: float) -> ScalePolicy:
        """The policy ``--autoscale MIN:MAX`` and the other settings ask for (e.g. ``cooldown_s``);
        ValueError says what is wrong with them."""
        low, high = cls.parse_bounds(bounds)
        return cls(low, high, **settings)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Observation:
    at: float  # seconds (monotonic)
    workers: int  # live workers serving
    slots: int  # their slots in total
    demand: float  # requests in flight or queued on them


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str  # up | down | hold | cooldown | bounds
    utilisation: float


class Autoscaler:
    """The policy's memory: recent observations, the current target count, when it last changed."""

    def __init__(self, policy: ScalePolicy, started_at: float = -math.inf) -> None:
        """``started_at``: begin as if the count had just changed then (a new leader waits a cooldown)."""
        self.policy = policy
        self._recent: collections.deque[Observation] = collections.deque(maxlen=policy.window)
        self._changed_at = started_at
        self.desired: int | None = None

    def _set(self, desired: int, at: float, reason: str, utilisation: float) -> Decision:
        if desired != self.desired:
            self._changed_at = at
        self.desired = desired
        return Decision(desired, reason, utilisation)

    def observe(self, observation: Observation) -> Decision:
        policy = self.policy
        self._recent.append(observation)
        if self.desired is None:
            self.desired = observation.workers
        slots_per_worker = observation.slots / observation.workers if observation.workers else 1.0
        demand = sum(o.demand for o in self._recent) / len(self._recent)
        capacity = max(observation.workers, 0) * slots_per_worker
        utilisation = demand / capacity if capacity else (math.inf if demand else 0.0)
        if not policy.min_workers <= self.desired <= policy.max_workers:
            bounded = min(max(self.desired, policy.min_workers), policy.max_workers)
            return self._set(bounded, observation.at, "bounds", utilisation)
        if observation.at - self._changed_at < policy.cooldown_s:
            return Decision(self.desired, "cooldown", utilisation)
        needed = math.ceil(demand / (policy.target_per_slot * slots_per_worker))
        if demand > 0:
            needed = max(needed, 1)  # any demand needs a worker, however small the ratio rounds
        if utilisation > policy.target_per_slot and self.desired < policy.max_workers and needed > self.desired:
            return self._set(min(policy.max_workers, needed), observation.at, "up", utilisation)
        # To zero workers only when idle: any demand needs a worker (else it would return at once).
        floor = max(policy.min_workers, 1 if demand > 0 else 0)
        if utilisation < policy.scale_down_below and self.desired > floor and observation.workers >= self.desired:
            return self._set(self.desired - 1, observation.at, "down", utilisation)
        return Decision(self.desired, "hold", utilisation)
