"""How far a same-run ratio to the paho reference can go on this machine.

The bench's ratio compares two runs that do not pay for the same processes.
The paho reference is one Python thread that acknowledges on receipt: it is
held by its own core, and mosquitto and the load share the other.  A bridge
run also feeds Tansu, on the same cores, and the bridge's librdkafka threads
run beside its Python thread: when every process together fills the cores,
the rate is set by the CPU per message of all of them, the bridge's only one
term of the sum.  So a CPU target for the bridge ("1.2x paho") means a
different budget of the bridge's own CPU on each machine, and on some no
bridge reaches it.

:func:`ceiling` makes that explicit from one run's per-process CPU split
(bench/shared_scaling.py :class:`ProcessSplit`), with the same model as
:func:`bench.shared_scaling.project` (each part's CPU per message fixed, the
rate grown until the first bound is full; an upper bound, not a forecast):
the two runs compared at equal cores, the ratio a bridge that cost nothing
would reach, and the bridge's own core-µs per message that the target leaves
at this run's other costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bench.shared_scaling import GIL, MACHINE, project

#: The family name of the process under test in a run's split (``sut-0``).
SUT = "sut"


@dataclass(frozen=True)
class Ceiling:
    """One bridge run against the paho reference, both projected on ``cores``."""

    #: The bridge's projected rate over paho's: the ratio at equal cores,
    #: other jobs on the machine left out.
    equal_cores: float
    #: The same with the bridge's own CPU left out: mosquitto, Tansu and the
    #: load alone filling the cores.  No bridge goes past it on this machine.
    free_bridge: float
    #: The bridge's core-µs per message that ``target`` leaves: what all
    #: processes may spend at ``target`` times paho's rate, less the others'.
    #: Negative: not reachable even by a bridge that costs nothing.
    budget_us: float
    #: The bridge's core-µs per message in this run (every thread).
    spent_us: float


def _ours(part: str) -> bool:
    return part.startswith(SUT)


def ceiling(
    rate: float,
    split: Mapping[str, float],
    paho_rate: float,
    paho_split: Mapping[str, float],
    cores: int,
    target: float,
) -> Ceiling | None:
    """``rate`` and ``split``: a bridge run (msgs/s, cores per part); the
    paho reference's the same; ``target``: the ratio to paho wanted.  None
    when either run measured nothing."""
    paho = project(paho_rate, paho_split, cores).rate
    if rate <= 0 or paho <= 0:
        return None
    processes = {p: u for p, u in split.items() if not p.startswith(MACHINE) and GIL not in p}
    spent = sum(u for p, u in processes.items() if _ours(p)) / rate
    others = sum(u for p, u in processes.items() if not _ours(p)) / rate
    without_us = {p: u for p, u in split.items() if not _ours(p)}
    return Ceiling(
        equal_cores=project(rate, split, cores).rate / paho,
        free_bridge=project(rate, without_us, cores).rate / paho,
        budget_us=(cores / (target * paho) - others) * 1e6,
        spent_us=spent * 1e6,
    )
