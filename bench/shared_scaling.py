"""Scaling on one gateway: several daemons on one MQTT 5 shared subscription,
where each process's CPU goes, core pinning, and a projection to more cores.

This machine has two cores, shared by the brokers, the load and the daemons,
so a larger gateway cannot be run here.  What can be measured is each
process's CPU per message at saturation (:class:`ProcessSplit`, from
``/proc/<pid>/task/*/stat``) and how the rate changes when processes are
pinned to cores (:func:`pin`).  :func:`project` turns the per-process costs
into the rate a machine with more cores would allow, each process held to
what it can use: a daemon's Python threads share one GIL (one core at most),
mosquitto is one thread, Tansu and librdkafka's threads use any core.  The
pinned runs check that model on this machine before it is trusted for four
cores: from the unpinned run's costs it predicts the pinned run's rate.

Only the standard library and bench/machine.py here: bench/run.py imports
this module, and the bench's spawned load and probe processes import
bench/run.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.machine import TICKS, cpu_seconds

if TYPE_CHECKING:
    from bench.ingest import IngestResult

#: Threads whose names start so run C code that never takes the GIL
#: (librdkafka's); every other thread of a daemon is counted as Python.
GIL_FREE_THREADS = ("rdk:",)
#: The part of a daemon that one core bounds: its Python threads.
GIL = " gil"
#: The split's entry for the whole machine's busy cores, every process on it
#: (other jobs included): what is left of the cores for the bench.
MACHINE = "machine"
#: Process families a gateway runs (Kafka and the publishers elsewhere).
GATEWAY = ("sut", "mosquitto")
#: Process families that are one thread (or one GIL) each.
SINGLE_CORE = ("mosquitto", "load")
#: The cores the projection is made for (issue 13: a 4-core gateway).
PROJECTED_CORES = 4


@dataclass(frozen=True)
class Layout:
    """Where a run's processes are pinned, as indices into the CPUs the bench
    may use: daemon ``i`` on ``daemons[i % len(daemons)]``, the brokers, load
    and probe on ``rest`` (``None``: unpinned)."""

    daemons: tuple[tuple[int, ...], ...]
    rest: tuple[int, ...] | None
    what: str

    def cpus(self, part: str) -> tuple[int, ...] | None:
        """The CPU indices of a process (``sut-1``, ``mosquitto``...)."""
        if part.startswith("sut-"):
            return self.daemons[int(part[4:]) % len(self.daemons)]
        return self.rest


LAYOUTS = {
    # The daemons get one core to themselves; everything else shares the other.
    "split": Layout(((1,),), (0,), "daemons on CPU 1, brokers + load + probe on CPU 0"),
    # Each daemon on a core of its own, the rest wherever the scheduler puts it.
    "own": Layout(((0,), (1,)), None, "daemon i on CPU i, brokers + load + probe unpinned"),
}


def roles(
    sut: Sequence[int], mosquitto: int, tansu: int, load: Sequence[int], probe: Sequence[int]
) -> dict[str, list[int]]:
    """The processes of one measurement by part name: ``sut-<i>`` for each
    process of the system under test, ``load-<i>`` for each publisher."""
    named = {f"sut-{i}": [pid] for i, pid in enumerate(sut)}
    named |= {"mosquitto": [mosquitto], "tansu": [tansu], "probe": list(probe)}
    named |= {f"load-{i}": [pid] for i, pid in enumerate(load)}
    return named


def _family(part: str) -> str:
    """``sut-1 gil`` -> ``sut``; ``mosquitto`` -> ``mosquitto``."""
    return part.split(" ")[0].split("-")[0]


def pin(layout: Layout, named: Mapping[str, list[int]], cpus: Sequence[int]) -> None:
    """Pin every thread of the named processes as ``layout`` says.

    ``sched_setaffinity`` sets one thread, so each of ``/proc/<pid>/task`` is
    set; threads started later inherit their creator's CPUs."""
    for part, pids in named.items():
        chosen = layout.cpus(part)
        if chosen is None:
            continue
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                    os.sched_setaffinity(int(task.name), {cpus[i] for i in chosen})


def _threads(pid: int) -> dict[int, tuple[float, bool]]:
    """CPU seconds so far of each live thread, and whether it is Python's."""
    out: dict[int, tuple[float, bool]] = {}
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                name = (task / "comm").read_text().strip()
                seconds = cpu_seconds(pid, int(task.name))
                out[int(task.name)] = (seconds, not name.startswith(GIL_FREE_THREADS))
    return out


def _machine_seconds() -> dict[str, float]:
    """CPU seconds the CPUs have been busy (not idle, not waiting for I/O),
    in all (``machine``) and each CPU the bench may use (``machine 0`` for
    the first); time stolen by the hypervisor counts as busy: not ours."""
    index = {f"cpu{cpu}": i for i, cpu in enumerate(sorted(os.sched_getaffinity(0)))}
    out: dict[str, float] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name == "cpu" or name in index:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            busy = (user + nice + system + irq + softirq + steal) / TICKS
            out[MACHINE if name == "cpu" else f"{MACHINE} {index[name]}"] = busy
    return out


def _process_seconds(pid: int) -> float:
    """:func:`cpu_seconds`, 0 for a process that has exited."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return cpu_seconds(pid)
    return 0.0


class ProcessSplit:
    """Cores each named process used between :meth:`start` and :meth:`stop`,
    and for the system under test also its Python threads (``sut-0 gil``):
    what the one-GIL bound applies to; and the machine's busy cores in all
    (``machine``) and per CPU (``machine 0``...), which show how much other
    jobs took, and where.  A Python thread that exits within the window
    takes its time out of the ``gil`` share (``/proc`` no longer lists it),
    so that share is, if anything, low."""

    def __init__(self, named: Mapping[str, list[int]]) -> None:
        self.named = dict(named)

    def _sample(self) -> tuple[dict[str, float], dict[str, dict[int, tuple[float, bool]]]]:
        totals = {part: sum(_process_seconds(p) for p in pids) for part, pids in self.named.items()}
        totals |= _machine_seconds()
        threads = {
            part: {tid: v for pid in pids for tid, v in _threads(pid).items()}
            for part, pids in self.named.items()
            if part.startswith("sut-")
        }
        return totals, threads

    def start(self, now: float) -> None:
        self._t0 = now
        self._totals0, self._threads0 = self._sample()

    def stop(self, now: float) -> dict[str, float]:
        span = now - self._t0
        totals, threads = self._sample()
        out = {part: round((totals[part] - self._totals0[part]) / span, 3) for part in totals}
        for part, now_threads in threads.items():
            before = self._threads0[part]
            python = sum(
                seconds - before.get(tid, (0.0, True))[0]
                for tid, (seconds, is_python) in now_threads.items()
                if is_python
            )
            out[part + GIL] = round(python / span, 3)
        return out


@dataclass(frozen=True)
class Projection:
    """A rate the per-process costs allow, and the bound that stops it there."""

    rate: float
    limit: str


def project(
    rate: float,
    split: Mapping[str, float],
    cores: int,
    *,
    families: Iterable[str] | None = None,
    layout: Layout | None = None,
    others: Mapping[tuple[int, ...], float] | None = None,
) -> Projection:
    """The rate a machine of ``cores`` cores allows, from one measured run:
    its ``rate`` and the cores each part used at it (:class:`ProcessSplit`).

    Each part's CPU per message is taken as fixed (``used / rate``), and the
    rate grows until the first of these is full: all processes together on
    ``cores``; one core for each one-thread process and for each daemon's
    Python threads; with a ``layout``, each pinned CPU set for what is pinned
    to it.  ``families`` limits the processes on the machine (``GATEWAY``:
    mosquitto and the daemons; Kafka and the publishers elsewhere).
    ``others`` is what other jobs took: cores on each pinned CPU set, and
    under ``()`` on the machine in all (nothing, by default).  A
    projection, not a measurement: it assumes perfect scheduling and no
    cost of contention, so it is an upper bound.
    """
    if rate <= 0:
        return Projection(0.0, "nothing measured")
    wanted = set(families) if families is not None else None
    parts = {
        p: u
        for p, u in split.items()
        if not p.startswith(MACHINE) and (wanted is None or _family(p) in wanted)
    }
    taken = others or {}

    def left(cpus: tuple[int, ...] | None) -> float:
        """The share of a CPU set (None: all cores) that other jobs left."""
        size = cores if cpus is None else len(cpus)
        return max(0.0, size - taken.get(cpus or (), 0.0)) / size

    def where(part: str) -> tuple[int, ...] | None:
        return layout.cpus(part.split(" ")[0]) if layout is not None else None

    processes = {p: u for p, u in parts.items() if GIL not in p}
    bounds: list[tuple[str, float, float]] = [
        (f"all processes on {cores} cores", sum(processes.values()), cores * left(None))
    ]
    for part, used in parts.items():
        if part.endswith(GIL):
            name = f"{part[: -len(GIL)]}'s Python threads (one GIL)"
            bounds.append((name, used, left(where(part))))
        elif _family(part) in SINGLE_CORE:
            bounds.append((f"{part} (one thread)", used, left(where(part))))
    groups: dict[tuple[int, ...], float] = {}
    for part, used in processes.items():
        chosen = where(part)
        if chosen is not None:
            groups[chosen] = groups.get(chosen, 0.0) + used
    for chosen, used in groups.items():
        name = f"CPU {','.join(map(str, chosen))} (pinned)"
        bounds.append((name, used, len(chosen) * left(chosen)))
    factor, limit = min(
        ((capacity / used, name) for name, used, capacity in bounds if used > 0),
        default=(math.inf, "nothing measured"),
    )
    return Projection(rate * factor, limit)


# --- the report -----------------------------------------------------------


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _us(cores: float, rate: float, spec: str) -> str:
    """Core-µs per message, or "-" for a run that delivered nothing."""
    return spec.format(cores * 1e6 / rate) if rate else "-"


def _daemons(result: IngestResult) -> list[str]:
    return sorted(p for p in result.split if p.startswith("sut-") and GIL not in p)


def _ours(result: IngestResult) -> float:
    """Cores the run's own processes used."""
    return sum(u for p, u in result.split.items() if GIL not in p and not p.startswith(MACHINE))


def _others(result: IngestResult) -> dict[tuple[int, ...], float]:
    """Cores other jobs took during the run: on the machine in all (``()``)
    and, for a run with every process pinned, on each pinned CPU set (its
    busy time less that of the run's processes pinned there)."""
    if MACHINE not in result.split:  # a run saved before the machine was read
        return {}
    out = {(): max(0.0, result.split[MACHINE] - _ours(result))}
    if result.pinning and LAYOUTS[result.pinning].rest is not None:
        layout = LAYOUTS[result.pinning]
        for cpus in {layout.cpus(p) for p in result.split if GIL not in p}:
            if cpus is None:
                continue
            busy = sum(result.split.get(f"{MACHINE} {c}", 0.0) for c in cpus)
            ours = sum(
                u for p, u in result.split.items()
                if GIL not in p and not p.startswith(MACHINE) and layout.cpus(p) == cpus
            )  # fmt: skip
            out[cpus] = max(0.0, busy - ours)
    return out


def with_references(chosen: Sequence[str]) -> list[str]:
    """The measurements to run: ``chosen``, and before it what a scaling run
    is compared to in the same run (the paho reference, one daemon, and for
    a pinned run the same daemons unpinned), when not chosen already."""
    wanted: list[str] = []
    for name in chosen:
        if "-shared" in name or "-pin-" in name:
            free = name.split("-pin-")[0]
            wanted += ["paho-qos1", free.replace("-shared2", ""), free]
    return list(dict.fromkeys([*(n for n in wanted if n not in chosen), *chosen]))


def _one_daemon(results: Mapping[str, IngestResult], name: str) -> IngestResult | None:
    """The run of one daemon a run of several is compared to: the same
    settings (``qos1-shared2-no-stream`` -> ``qos1-no-stream``), else ``qos1``."""
    same = results.get(name.split("-pin-")[0].replace("-shared2", ""))
    return same if same is not None and len(same.each) < 2 else results.get("qos1")


def _unpinned(results: Mapping[str, IngestResult], result: IngestResult) -> IngestResult | None:
    """The run whose costs predict a pinned run: the same daemons unpinned
    (``qos1-shared2-pin-own`` -> ``qos1-shared2``)."""
    return results.get(result.name.split("-pin-")[0])


def _predicted(free: IngestResult, result: IngestResult, cores: int) -> Projection:
    """``result``'s rate as ``free``'s per-process costs predict it on this
    machine, with ``result``'s pinning and the cores other jobs left it."""
    layout = LAYOUTS[result.pinning] if result.pinning else None
    return project(free.rate, free.split, cores, layout=layout, others=_others(result))


def _scaled(results: Mapping[str, IngestResult]) -> list[IngestResult]:
    """The runs the scaling tables show: several daemons, or pinned, and the
    runs of one daemon they are compared to."""
    scaled = [r for r in results.values() if len(r.each) > 1 or r.pinning]
    keep = {id(r) for r in scaled}
    keep |= {id(o) for r in scaled if (o := _one_daemon(results, r.name)) is not None}
    return [r for r in results.values() if id(r) in keep] if scaled else []


def scaling_rows(results: Mapping[str, IngestResult]) -> list[str]:
    """The scaling tables: each run of several daemons beside one daemon and
    the paho reference of the same run, where each process's CPU went, the
    projection to more cores, and the model's check on this machine."""
    runs = _scaled(results)
    if not runs:
        return []
    paho = results.get("paho-qos1")
    cores = len(os.sched_getaffinity(0))
    lines = [
        "",
        "Scaling on one gateway: daemons on one MQTT 5 shared subscription, QoS 1, same run",
        "",
        _row("run", "msgs/s on Kafka", "of one daemon", "of paho-qos1",
             "daemons' core-µs per message", "each daemon's share of messages",
             "peak RSS each, MiB"),
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in runs:
        one = _one_daemon(results, r.name)
        daemons = sum(r.split.get(p, 0.0) for p in _daemons(r))
        received = [e.get("received", 0.0) for e in r.each]
        shares = " / ".join(f"{n / sum(received):.0%}" for n in received) if sum(received) else "-"
        peaks = " / ".join(f"{e.get('peak_rss_mib', 0.0):.0f}" for e in r.each) or "-"
        lines.append(
            _row(
                r.name + (f" (pinned: {LAYOUTS[r.pinning].what})" if r.pinning else ""),
                f"{r.rate:,.0f}",
                f"{_ratio(r.rate, one.rate)} of {one.name}" if one and one is not r else "-",
                _ratio(r.rate, paho.rate if paho else None),
                _us(daemons, r.rate, "{:.0f}"),
                shares,
                peaks,
            )
        )
    lines += [
        "",
        "Core-µs per message by process over the steady window (in brackets: a daemon's "
        "Python threads, which one GIL serialises); cores busy with other jobs meanwhile",
        "",
        _row("run", "daemon 0", "daemon 1", "mosquitto", "tansu", "load", "probe", "all",
             "cores: this run / other jobs"),
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in runs:

        def us(parts: Iterable[str], r: IngestResult = r) -> str:
            return _us(sum(r.split.get(p, 0.0) for p in parts), r.rate, "{:.1f}")

        daemons = [f"{us([d])} ({us([d + GIL])})" for d in _daemons(r)]
        loads = [p for p in r.split if p.startswith("load-")]
        other = _others(r).get((), 0.0)
        lines.append(
            _row(r.name, *[*daemons, "-"][:2], us(["mosquitto"]), us(["tansu"]), us(loads),
                 us(["probe"]), _us(_ours(r), r.rate, "{:.1f}"), f"{_ours(r):.2f} / {other:.2f}")
        )  # fmt: skip
    lines += [
        "",
        f"PROJECTION to {PROJECTED_CORES} cores from the measured per-process CPU costs, "
        "not a measurement: each process's core-µs per message held fixed, the rate raised "
        "until a core bound is full (bench/shared_scaling.py project; an upper bound)",
        "",
        _row("from run", "on the machine", "projected msgs/s", "of paho-qos1 projected alike",
             "limited by"),
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for r in [*([paho] if paho and paho.rate else []), *runs]:
        if r.pinning:
            continue
        for families, what in (
            (None, "everything the bench runs (brokers, Tansu, load, the system)"),
            (GATEWAY, "mosquitto + the system (Kafka and the publishers elsewhere)"),
        ):
            far = project(r.rate, r.split, PROJECTED_CORES, families=families)
            ref = (
                project(paho.rate, paho.split, PROJECTED_CORES, families=families) if paho else None
            )
            of_paho = _ratio(far.rate, ref.rate if ref else None)
            lines.append(_row(r.name, what, f"{far.rate:,.0f}", of_paho, far.limit))
    lines += [
        "",
        f"The model's check on this machine ({cores} cores, what other jobs left of them): "
        "each run's rate predicted from its unpinned run's costs, with its pinning",
        "",
        _row("run", "predicted msgs/s", "measured", "measured / predicted", "predicted limit"),
        "|---|---|---|---|---|",
    ]
    for r in runs:
        free = _unpinned(results, r)
        if not r.pinning or free is None or not free.rate:
            continue
        guess = _predicted(free, r, cores)
        lines.append(
            _row(r.name, f"{guess.rate:,.0f}", f"{r.rate:,.0f}", _ratio(r.rate, guess.rate),
                 guess.limit)
        )  # fmt: skip
    return lines


def figures(results: Mapping[str, IngestResult]) -> dict[str, float]:
    """The scaling figures of one run, each a same-run ratio or a projection:
    what :func:`main` takes the median of across runs (the machine's speed
    drifts between runs; ratios within a run drift much less)."""
    out: dict[str, float] = {}
    paho = results.get("paho-qos1")
    cores = len(os.sched_getaffinity(0))
    for r in _scaled(results):
        if not r.rate:  # other jobs took the machine for the whole window: no figure
            continue
        one = _one_daemon(results, r.name)
        if one is not None and one is not r and one.rate:
            out[f"{r.name} / {one.name}"] = r.rate / one.rate
        if paho and paho.rate:
            out[f"{r.name} / paho-qos1"] = r.rate / paho.rate
        # The same at equal cores: CPU per message of all the run's processes,
        # which other jobs on the machine change much less than the rate.
        for other in (one, paho):
            if other is not None and other is not r and not r.pinning and _ours(r) and r.rate:
                out[f"{r.name} / {other.name} at equal cores"] = (
                    _ours(other) / other.rate * r.rate / _ours(r)
                )
        free = _unpinned(results, r)
        guess = _predicted(free, r, cores).rate if free is not None and r.pinning else 0.0
        if guess:
            out[f"{r.name}: measured / predicted here"] = r.rate / guess
        if r.pinning:
            continue
        for families, what in ((None, "bench"), (GATEWAY, "gateway")):
            far = project(r.rate, r.split, PROJECTED_CORES, families=families).rate
            out[f"{r.name} on {PROJECTED_CORES} cores ({what}), projected msgs/s"] = far
            if one is not None and one is not r and one.rate:
                alike = project(one.rate, one.split, PROJECTED_CORES, families=families).rate
                out[
                    f"{r.name} on {PROJECTED_CORES} cores ({what}), projected / {one.name} alike"
                ] = far / alike
            if paho and paho.rate:
                ref = project(paho.rate, paho.split, PROJECTED_CORES, families=families).rate
                out[f"{r.name} on {PROJECTED_CORES} cores ({what}), projected / paho alike"] = (
                    far / ref
                )
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the median over saved runs (``bench/run.py --json``) of each
    scaling figure, beside each run's own value:
    ``bench/shared_scaling.py run1.json run2.json run3.json``."""
    from bench.ingest import IngestResult

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(main.__doc__)
        return 2
    per_run = []
    for path in paths:
        saved = json.loads(Path(path).read_text())["results"]
        per_run.append(figures({k: IngestResult(**v) for k, v in saved.items()}))
    print(_row("figure", "median", *(Path(p).name for p in paths)))
    print("|---|---|" + "---|" * len(paths))
    for name in sorted(set().union(*per_run)):
        values = [run.get(name) for run in per_run]
        mid = statistics.median(v for v in values if v is not None)
        cells = [_figure(v) if v is not None else "-" for v in values]
        print(_row(name, _figure(mid), *cells))
    return 0


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}x"


if __name__ == "__main__":
    REPO_ROOT = Path(__file__).resolve().parents[1]
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
