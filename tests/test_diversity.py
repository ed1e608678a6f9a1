"""The diversity benchmark (Table 1): its settings, the table's arithmetic, the command line end to end on a quick
run of both built-in models, the re-render, refusals, and its notebook."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import command

from spell_lab.analysis import diversity as dv
from spell_lab.experiments import diversity as ex

QUICK = ["--quick", "--models", "digits", "gmm", "--radius", "{gmm: 1.0}", "--steps", "6", "--devices", "1",
         "--no_progress"]


def cli(*args):
    return command("spell_lab.experiments.diversity", *args, env={"WANDB_MODE": "offline"})


# ----------------------------------------------------------------------------------------------- settings

def test_settings_pair_the_arms_on_disjoint_seed_sets():
    s = ex.diversity_settings(3.0, 1.6, 8, 4, 3, (0, 2), seed=7)
    assert [x.name for x in s] == ["without-s0", "spell-s0", "without-s1", "spell-s1", "without-s2", "spell-s2"]
    for without, spell in zip(s[::2], s[1::2]):
        assert without.seed == spell.seed and without.rounds == spell.rounds == (4, 4)
        assert without.radius == 0.0 and spell.radius == 3.0 and spell.overcomp == 1.6
        assert all(x.method["intra_batch"] and x.method["memory"] for x in (without, spell))
    seeds = [set(range(x.seed, x.seed + x.samples)) for x in s[::2]]
    assert seeds[0].isdisjoint(seeds[1]) and seeds[1].isdisjoint(seeds[2]) and min(seeds[0]) == 7 + 100_000


def test_radius_comes_from_the_selection_or_the_flag():
    assert ex.radius_for("digits", None) == 26.11 and ex.radius_for("digits", {"digits": 5}) == 5.0
    with pytest.raises(ValueError, match="selects 0"):
        ex.radius_for("gmm", None)
    assert ex.radius_for("gmm", {"gmm": 1.5}) == 1.5


def test_fresh_starts_a_new_run_directory_beside_an_existing_one(tmp_path):
    (tmp_path / "run" / "digits" / "store.zarr").mkdir(parents=True)
    p = ex.parser()
    assert ex.run_root(p.parse_args(["--out", str(tmp_path / "run")]), "x") == tmp_path / "run"  # resume
    assert ex.run_root(p.parse_args(["--out", str(tmp_path / "run"), "--fresh"]), "x") == tmp_path / "run-2"


# ----------------------------------------------------------------------------------------------- the table

def test_table_means_stds_and_changes_by_hand():
    rows = []
    for k, (a, b) in enumerate([(0.5, 0.6), (0.4, 0.6), (0.6, 0.6)]):  # recall without / with, per seed set
        rows += [dict(model="m", arm="without", seed_set=k, radius=0.0, recall=a, precision=1.0),
                 dict(model="m", arm="spell", seed_set=k, radius=2.0, recall=b, precision=0.9)]
    t = dv.benchmark_table(pd.DataFrame(rows))
    assert t.loc[("m", "without"), "recall"] == pytest.approx(0.5)
    assert t.loc[("m", "without"), "recall_std"] == pytest.approx(0.1)  # ddof 1 over 0.5, 0.4, 0.6
    assert t.loc[("m", "spell"), "recall_std"] == 0.0
    assert t.loc[("m", "change"), "recall"] == pytest.approx(0.2)  # 0.6 / 0.5 - 1
    paired = np.array([0.2, 0.5, 0.0])
    assert t.loc[("m", "change"), "recall_std"] == pytest.approx(paired.std(ddof=1))
    assert t.loc[("m", "change"), "precision"] == pytest.approx(-0.1)
    md = dv.to_markdown(t)
    assert "| m | 0.500 ± 0.100 |" in md and "+20.0% ± 25.2" in md and "+ SPELL (r = 2)" in md


# ----------------------------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diversity") / "quick"
    res = cli(*QUICK, "--out", out, "--wandb", "offline")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "relative change" in res.stdout and "±" in res.stdout
    return out


def test_quick_run_layout_and_table(quick_run):
    from spell_lab.store import open_run

    for model in ("digits", "gmm"):
        groups = open_run(quick_run / model)
        assert sorted(groups) == sorted(f"{a}-s{k}" for a in ("without", "spell") for k in range(3))
        for k in range(3):  # the same seeds with and without SPELL; SPELL acted, the other arm never did
            w, s = groups[f"without-s{k}"], groups[f"spell-s{k}"]
            assert (w["seed"].values == s["seed"].values).all()
            assert int(w["active_shields"].max()) == 0 and bool(s["intervened"].any())
        firsts = [int(groups[f"without-s{k}"]["seed"].min()) for k in range(3)]
        assert firsts == [100_000, 200_000, 300_000]
    figs = quick_run / "figures"
    table = pd.read_csv(figs / "diversity_table.csv", index_col=[0, 1])
    assert list(table.index) == [(m, s) for m in ("digits", "gmm") for s in ("without", "spell", "change")]
    assert (table["n_seed_sets"] == 3).all() and np.isfinite(table[["recall_std", "vendi_std", "fd_std"]]).all().all()
    assert np.isfinite(table.loc["digits", "fidelity"]).all() and table.loc["gmm", "fidelity"].isna().all()
    per_seed = pd.read_csv(figs / "diversity_per_seed_set.csv")
    w = per_seed[(per_seed.model == "gmm") & (per_seed.arm == "without")]["recall"]
    s = per_seed[(per_seed.model == "gmm") & (per_seed.arm == "spell")]["recall"]
    assert table.loc[("gmm", "without"), "recall"] == pytest.approx(w.mean())
    assert table.loc[("gmm", "change"), "recall"] == pytest.approx(s.mean() / w.mean() - 1)
    md = (figs / "diversity_table.md").read_text()
    assert md.count("relative change") == 2 and "± " in md
    for name in ("relative_change", "gallery_digits"):
        assert (figs / f"{name}.png").stat().st_size > 10_000
    assert len(list((quick_run / "wandb").glob("offline-run-*"))) == 2  # one W&B run per model


def test_without_spell_is_the_plain_sampler_bit_for_bit(quick_run):
    """Each without-SPELL group equals a radius-0 run of the same seeds: the plain sampler, round by round."""
    from spell_lab.models import load_model
    from spell_lab.samplers import generate
    from spell_lab.store import open_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run's CPU process
    try:
        for name in ("digits", "gmm"):
            model, groups = load_model(name), open_run(quick_run / name)
            for k in range(3):
                ds = groups[f"without-s{k}"]
                cond, seeds, rnd = ds["condition"].values, ds["seed"].values, ds["round"].values
                x0 = ds["x0"].values
                for c in np.unique(cond):
                    for r in np.unique(rnd):
                        idx = np.flatnonzero((cond == c) & (rnd == r))
                        out = generate(model, cond[idx], seeds[idx].tolist(), steps=6, spell=None, record=False)
                        assert np.array_equal(out.x0.numpy(), x0[idx]), (name, k, c, r)
                assert not np.array_equal(groups[f"spell-s{k}"]["x0"].values, x0)
    finally:
        torch.set_num_threads(threads)


def test_rerender_gives_the_same_table(quick_run, tmp_path, capsys):
    assert dv.main([str(quick_run), "--wandb", "disabled", "--out", str(tmp_path)]) == 0
    assert "relative change" in capsys.readouterr().out
    a = pd.read_csv(quick_run / "figures" / "diversity_table.csv", index_col=[0, 1])
    b = pd.read_csv(tmp_path / "diversity_table.csv", index_col=[0, 1])
    pd.testing.assert_frame_equal(a, b, rtol=1e-9)
    assert dv.main([str(tmp_path / "nothing")]) == 2 and "does not exist" in capsys.readouterr().err


BAD = [
    (["--models", "digits", "--per_condition", "5"], "--per_condition must be >= 6"),
    (["--models", "digits", "--per_condition", "10", "--batch", "4"], "multiple of --batch"),
    (["--models", "gmm"], "has no selected radius"),
    ([], "model 'fashion' has no selected radius (calibrate --select --model fashion --full selects 0"),  # the default
    (["--models", "digits", "--radius", "{digits: -1}"], "must be > 0"),
    (["--radius", "{gmm: 1}"], "which --models does not run"),
    (["--models", "some/pipeline"], "held-out real data"),
    (["--models", "digits", "gmm", "--radius", "{gmm: 1}", "--devices", "2"], "one model per command"),
    (["--seed_sets", "0"], "--seed_sets must be >= 1"),
    (["--bogus"], "bogus"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_exits_2_and_creates_nothing(tmp_path, capsys, args, message):
    from spell_lab.experiments.common import run_cli

    out = tmp_path / "run"
    assert run_cli(ex.main, ["--quick", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_notebook_on_the_quick_run(quick_run, execute_notebook):
    images, text = execute_notebook("diversity", quick_run)
    assert len(images) == 2  # the relative change and the digits gallery
    assert str(quick_run) in text and "relative change" in text
