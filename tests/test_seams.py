"""The seams later work builds on: the layers never import upward, a shield source is one line of the schema plus
its class, and a method is one registry entry plus its function, each running end to end through the run layer."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import spell_lab
from spell_lab import methods, protect, schema, store
from spell_lab.analysis import activity, load, plots
from spell_lab.analysis import sparsity as sp
from spell_lab.analysis import sparsity_figures as spf
from spell_lab.methods import Hooks, spell_method
from spell_lab.models import load_model
from spell_lab.plan import Setting
from spell_lab.repellency import Correction, Spell, SpellStep
from spell_lab.run.launch import run_generation

PACKAGE = Path(spell_lab.__file__).parent
LAYERS = [  # low to high: a module imports only from its own layer or below
    {"__init__", "cli", "schema", "plan", "activity", "schedules", "parameterisation", "shield_schedules"},
    {"repellency"},
    {"protect", "models"},
    {"methods", "metrics", "semantic"},
    {"samplers"},
    {"diffusers", "store", "calibration"},
    {"run"},
    {"analysis"},
    {"experiments", "report"},
]


def layer_of(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def imports(path: Path, root: Path):
    """(line, imported spell_lab part) of each import outside `if __name__ == "__main__":` (entry-point wiring)."""
    tree = ast.parse(path.read_text())
    main_blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    skip = {id(x) for b in main_blocks for x in ast.walk(b)}
    package = path.relative_to(root).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            target = list(package[: len(package) - node.level + 1]) + (node.module.split(".") if node.module else [])
            yield node.lineno, target[0] if target else "__init__"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spell_lab."):
            yield node.lineno, node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("spell_lab."):
                    yield node.lineno, a.name.split(".")[1]


def upward_imports(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        for line, part in imports(path, root):
            if layer_of(part) > layer_of(rel[0]):
                found.append(f"{'/'.join(rel)}.py:{line} imports {part}")
    return found


def module_graph(root: Path) -> dict[str, set[str]]:
    """spell_lab module -> the spell_lab modules it imports, at module level or inside a function (not in a
    `__main__` block); `from pkg import name` counts as importing pkg.name where that is a module."""
    def name_of(path: Path) -> str:
        parts = path.relative_to(root.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    paths = {name_of(p): p for p in root.rglob("*.py")}
    graph = {m: set() for m in paths}
    for m, path in paths.items():
        tree = ast.parse(path.read_text())
        main = {id(x) for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for x in ast.walk(n)}
        package = m.split(".") if path.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in main:
                continue
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + (node.module or "").split(".")) \
                    if node.level else node.module or ""
                base = base.strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t not in paths and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in paths and t != m:
                    graph[m].add(t)
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    graph, index, low, stack, on, found = module_graph(root), {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert import_cycles(PACKAGE) == []


def test_the_cycle_test_finds_a_lazy_cycle(tmp_path):
    root = tmp_path / "spell_lab"
    (root / "experiments").mkdir(parents=True)
    (root / "experiments" / "a.py").write_text("from .b import x\n")
    (root / "experiments" / "b.py").write_text("def f():\n    from . import c\n")
    (root / "experiments" / "c.py").write_text("import spell_lab.experiments.a\n")
    (root / "store.py").write_text("if __name__ == '__main__':\n    from .experiments import a\n")
    assert import_cycles(root) == [["spell_lab.experiments.a", "spell_lab.experiments.b", "spell_lab.experiments.c"]]


def test_no_module_imports_a_layer_above_it():
    assert upward_imports(PACKAGE) == []
    assert layer_of("store") > layer_of("plan") and layer_of("samplers") > layer_of("models")  # the two old ones


def test_the_layer_test_finds_an_upward_import(tmp_path):
    root = tmp_path / "spell_lab"
    (root / "models").mkdir(parents=True)
    (root / "schema.py").write_text("from .run import launch\n")
    (root / "models" / "digits.py").write_text("from ..samplers import generate\nfrom ..schedules import VPLinear\n")
    assert upward_imports(root) == ["models/digits.py:1 imports samplers", "schema.py:1 imports run"]


# --- a fake shield source: one name in the schema, one index class ---------------------------------------------


class EveryoneIsNear:
    """A protected 'index' that reports one active shield for every sample and pushes nowhere."""

    name = "fake"

    def __init__(self, items):
        self.items = items

    def __call__(self, x0, radius, overcomp, cond):
        b = x0.shape[0]
        return Correction(torch.zeros_like(x0), torch.ones(b, dtype=torch.long), torch.full((b,), 0.5))


@pytest.mark.e2e
def test_a_fake_source_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "SOURCES", schema.SOURCES + ("fake",))  # the one-place change
    monkeypatch.setitem(protect.INDEXES, "fake", EveryoneIsNear)  # its index kind
    model = load_model("gmm")
    items = tmp_path / "set.npy"
    np.save(items, np.zeros((3, *model.sample_shape), np.float32))
    spec = protect.protected_spec(items, "fake")
    setting = Setting("fake", spell_method(1.0), spec, rounds=(2, 2), conditions=(0, 1))
    run = _run(model, [setting], tmp_path / "run")
    ds = store.open_run(run)["fake"]
    assert "active_fake" in ds and (ds["active_fake"].values == 1).all()
    assert (ds["active_shields"].values >= ds["active_fake"].values).all()
    src = activity.active_by_source(ds)
    assert "fake" in src["source"].values and float(src.sel(source="fake").mean()) == 1.0
    assert "active_fake_mean" in sp.curves(ds)
    assert plots.source_color("fake") not in {plots.source_color(s) for s in ("batch", "memory", "protected")}
    labels = [t.get_text() for t in spf.plot_active_by_source({"fake": load.drop_unwritten(ds.load())}).legends[0].texts]
    assert "fake" in labels


# --- a fake method: one registry entry, one function -----------------------------------------------------------


class Shift:
    """Moves every x0_hat by `amount` in every coordinate."""

    def __init__(self, amount):
        self.amount = amount

    def __call__(self, x0, cond, **context):
        assert {"x_t", "t", "alpha", "sigma"} <= set(context)
        delta = torch.full_like(x0, self.amount)
        return SpellStep(x0 + delta, delta, {}, torch.full((x0.shape[0],), math.inf))


@pytest.mark.e2e
def test_a_fake_method_runs_end_to_end(tmp_path, monkeypatch):
    def shift(params, protected=None):
        return Hooks(params, interventions=(Shift(params["amount"]),), guidance=lambda t, a, s, w: params["weight"])

    monkeypatch.setitem(methods.REGISTRY, "shift", methods.MethodSpec("shift", {"amount": 0.0, "weight": 1.0}, shift))
    model = load_model("gmm")
    plain = Setting("plain", spell_method(0.0), rounds=(3,), conditions=(0, 2))
    moved = Setting("moved", {"name": "shift", "amount": 0.25}, rounds=(3,), conditions=(0, 2))
    ds = store.open_run(_run(model, [plain, moved], tmp_path / "run", guidance=1.0))
    d = math.prod(model.sample_shape)
    assert json.loads(ds["moved"].attrs["method"]) == {"name": "shift", "amount": 0.25, "weight": 1.0}
    assert "radius" not in ds["moved"].attrs and load.method_of(ds["plain"])["name"] == "spell"
    assert np.allclose(ds["moved"]["correction_norm"].values, 0.25 * math.sqrt(d), rtol=1e-5)
    assert (ds["moved"]["active_shields"].values == 0).all() and not ds["moved"]["intervened"].values.any()
    assert not np.allclose(ds["moved"]["x0"].values, ds["plain"]["x0"].values)  # the same seeds, moved outputs
    assert bool(ds["moved"]["unit_complete"].all())


def test_method_errors_say_what_to_change():
    import pytest

    with pytest.raises(ValueError, match="unknown method 'nope'; choose from"):
        methods.resolve({"name": "nope"})
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['radiu'\]"):
        methods.resolve({"name": "spell", "radiu": 3})


def test_spell_hooks_equal_a_built_spell(gmm):
    from spell_lab.samplers import generate

    cond = torch.tensor([0, 0, 1, 1])
    hooks = methods.resolve(spell_method(2.0, 1.6, intra_batch=True))
    a = generate(gmm, cond, range(4), steps=8, method=hooks)
    b = generate(gmm, cond, range(4), steps=8, spell=Spell.build(2.0, 1.6, intra_batch=True))
    assert torch.equal(a.x0, b.x0) and all(torch.equal(a.records[k], b.records[k]) for k in a.records)


def _run(model, settings, out, guidance=None):
    result = run_generation(experiment="seams", settings=settings, model=model, model_spec={"name": "gmm"},
                            sampler="ddim", steps=6, guidance=model.default_guidance if guidance is None else guidance,
                            out=out, config={}, progress=False)
    return result.run_dir
