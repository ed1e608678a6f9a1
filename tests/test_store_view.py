"""spell_lab.store.view (python -m spell_lab.store) on real stores written by the sparsity command (gmm: no images; digits: images)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr
from PIL import Image

from spell_lab.experiments import sparsity
from spell_lab.store.view import describe, export_images, main


def make_run(out, *args):
    assert sparsity.main([*args, "--quick", "--out", str(out), "--wandb", "disabled", "--no_progress"]) in (0, None)
    return out


@pytest.fixture
def gmm_run(gmm_quick_run):
    return gmm_quick_run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):  # two conditions: two work units per group, 8 images each
    args = ["--model", "digits", "--steps", "2", "--setups", "iterative", "--classes", "3", "5"]
    return make_run(tmp_path_factory.mktemp("digits") / "run", *args)


def partial_copy(run, tmp_path, group, unit):
    copy = shutil.copytree(run, tmp_path / "partial")
    zarr.open_group(str(copy / "store.zarr"), mode="r+")[group]["unit_complete"][unit] = False
    return copy


def expected_lines(run) -> dict[str, tuple[str, str]]:
    """The two lines of each group, recomputed from the zarr arrays."""
    root = zarr.open_group(str(run / "store.zarr"), mode="r")
    out = {}
    for name, g in root.groups():
        done = g["unit_complete"][:]
        keep = np.repeat(done, g["seed"].shape[0] // len(done))
        final = g["final_nearest_distance"][:][keep]
        final = final[np.isfinite(final)]
        head = f"{name}: {g['seed'].shape[0]} samples, {g['step'].shape[0]} steps, units {done.sum()}/{len(done)} complete, "
        head += f"spell(radius={g.attrs['radius']}, overcomp={g.attrs['overcomp']}, "
        out[name] = (
            head,
            f"  {keep.sum()} samples of complete units: intervened {g['intervened'][:][keep].mean():.1%}, "
            f"inside_shield {g['inside_shield'][:][keep].mean():.1%}, "
            f"median final_nearest_distance {np.median(final):.4g} (of {len(final)} with a reference)",
        )
    return out


def check_description(text: str, run) -> None:
    lines = text.splitlines()
    attrs = zarr.open_group(str(run / "store.zarr"), mode="r").attrs
    assert lines[0] == f"run {run}"
    assert lines[1] == f"experiment sparsity, created {attrs['created']}, git {attrs['git_commit']}"
    want = expected_lines(run)
    assert len(lines) == 2 + 2 * len(want)
    for name, (head, summary) in want.items():
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: "))
        assert lines[at].startswith(head) and lines[at + 1] == summary, (lines[at], lines[at + 1])


def test_describe_gives_each_group_its_counts_attributes_and_summary(gmm_run):
    text = describe(gmm_run)
    check_description(text, gmm_run)
    main_line = next(line for line in text.splitlines() if line.startswith("main: "))
    assert "units 4/4 complete" in main_line
    assert "spell(radius=3.0, overcomp=1.6, intra_batch=True, memory=True, overlap=single, max_iter=10, weight=None) rounds=[4, 4]" in main_line
    assert describe(gmm_run / "store.zarr") == text  # the store itself names the run too


def test_describe_of_a_partial_store_counts_and_summarises_complete_units_only(gmm_run, tmp_path):
    copy = partial_copy(gmm_run, tmp_path, "main", 1)
    lines = describe(copy).splitlines()
    check_description("\n".join(lines), copy)
    at = next(i for i, line in enumerate(lines) if line.startswith("main: "))
    assert "units 3/4 complete" in lines[at] and lines[at + 1].startswith("  24 samples of complete units")


def test_describe_reads_stores_made_before_the_method_attribute(gmm_run, tmp_path):
    copy = shutil.copytree(gmm_run, tmp_path / "old_style")
    group = zarr.open_group(str(copy / "store.zarr"), mode="r+")["intra"]
    del group.attrs["method"]
    group.attrs["setting"] = json.dumps({"intra_batch": True, "memory": False, "rounds": [4]})  # the old layout
    line = next(line for line in describe(copy).splitlines() if line.startswith("intra: "))
    assert "radius=3.0 overcomp=1.0 intra_batch=True memory=False rounds=[4]" in line


def test_export_images_writes_every_stored_image_as_png(digits_run, tmp_path):
    paths = export_images(digits_run, tmp_path / "png")
    g = zarr.open_group(str(digits_run / "store.zarr"), mode="r")
    want = {}
    for name, grp in g.groups():
        for i, (c, r, s) in enumerate(zip(grp["condition"][:], grp["round"][:], grp["seed"][:])):
            want[f"{name}_c{c}_r{r}_s{s}.png"] = grp["image"][i]
    assert len(want) == 2 * 16 and sorted(p.name for p in paths) == sorted(want)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(want)
    for p in paths:
        assert np.array_equal(np.asarray(Image.open(p)), want[p.name]), p.name


def test_export_images_skips_incomplete_units_and_groups_without_images(digits_run, gmm_run, tmp_path):
    copy = partial_copy(digits_run, tmp_path, "iterative", 0)  # condition 3's unit
    names = [p.name for p in export_images(copy, tmp_path / "png", groups=["iterative"])]
    assert len(names) == 8 and all(n.startswith("iterative_c5_") for n in names)
    assert export_images(gmm_run, tmp_path / "none") == []


def test_module_command_prints_the_description_and_exports(digits_run, tmp_path):
    out = tmp_path / "png"
    done = subprocess.run(
        [sys.executable, "-m", "spell_lab.store", str(digits_run), "--export-images", str(out), "--groups", "baseline"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"wrote 16 images to {out}" and len(list(out.iterdir())) == 16
    assert [line.split(":")[0] for line in lines[2:-1] if not line.startswith(" ")] == ["baseline"]


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda run, tmp: [str(tmp / "missing")], "error: no run store at"),
        (lambda run, tmp: [str(run), "--export-images", str(tmp / "file.png")], "is an existing file"),
        (lambda run, tmp: [str(run), "--groups", "nope"], "error: no group 'nope'"),
        (lambda run, tmp: [], "error: the following arguments are required: run"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(gmm_run, tmp_path, capsys, args, message):
    (tmp_path / "file.png").write_bytes(b"")
    assert main(args(gmm_run, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_export_images_refuses_a_file_as_folder(gmm_run, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file is an existing file; give a folder"):
        export_images(gmm_run, tmp_path / "file")
