"""What a run generates: settings (one store group each) and their work units (all rounds of one condition).
Plain data only: nothing here imports another layer of the package.

Sample layout inside a group: condition-major, then round, then position in the round's batch. A sample's seed is
`seed + its index in the group`, so two settings with the same plan (e.g. a setup and its radius-0 baseline) use
the same seeds sample for sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Setting:
    """One generation protocol: a method (plain data, resolved by `spell_lab.methods`), an optional protected set,
    and the rounds per condition."""

    name: str
    method: dict  # {"name": "spell", "radius": 25.0, ...}: the method and its parameters (spell_lab.methods)
    protected: dict | None = None  # {"path": ..., "index": "exact", ...}: a protected set every round repels from
    rounds: tuple[int, ...] = (8,)  # batch size of each round, in order
    conditions: tuple[int, ...] = (0,)
    seed: int = 0
    measure_from_round: int = 0  # earlier rounds only build the memory (e.g. the first 8 of `iterative`)
    note: str = ""

    @property
    def radius(self) -> float:
        """SPELL's radius (0 for methods without shields): outputs closer than this count as inside a shield."""
        return float(self.method.get("radius", 0.0))

    @property
    def overcomp(self) -> float:
        return float(self.method.get("overcomp", 1.0))

    @property
    def unit_size(self) -> int:
        return sum(self.rounds)

    @property
    def samples(self) -> int:
        return self.unit_size * len(self.conditions)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WorkUnit:
    """Every round of one condition of one setting: rounds repel from earlier rounds, so they run in one process."""

    setting: Setting
    index: int  # unit index within the setting (= condition index)
    condition: int
    start: int  # first sample index in the group; the unit owns [start, start + setting.unit_size)
    rounds: tuple = field(default=())  # ((round, seeds tuple), ...)

    @property
    def stop(self) -> int:
        return self.start + self.setting.unit_size


def work_units(setting: Setting) -> list[WorkUnit]:
    units = []
    for i, cond in enumerate(setting.conditions):
        start = i * setting.unit_size
        rounds, offset = [], start
        for r, size in enumerate(setting.rounds):
            rounds.append((r, tuple(setting.seed + offset + p for p in range(size))))
            offset += size
        units.append(WorkUnit(setting, i, cond, start, tuple(rounds)))
    return units


def plan(settings: list[Setting]) -> list[WorkUnit]:
    """All work units of a run, setting by setting; the order is the order of the progress bar."""
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ValueError(f"setting names must be unique (they name store groups), got {names}.")
    return [u for s in settings for u in work_units(s)]
