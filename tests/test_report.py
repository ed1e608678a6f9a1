"""The W&B report: its specification (panels, runsets, grouping) without network, and the refusal without a login."""

import subprocess
import sys

from spell_lab.report import RADIUS_LINES, SPARSITY_LINES, build_report


def test_report_specification():
    import wandb_workspaces.reports.v2 as wr

    report = build_report("proj", "me", group="sparsity-digits-r25")
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert [b.text for b in report.blocks if isinstance(b, wr.H1)][0].startswith("Sparsity")
    sparsity, radius = grids
    assert sparsity.runsets[0].project == "proj" and sparsity.runsets[0].entity == "me"
    assert sparsity.runsets[0].groupby == ["config.setup"]  # one line per setup, as in Fig. 5
    assert "sparsity-analysis" in sparsity.runsets[0].filters and "sparsity-digits-r25" in sparsity.runsets[0].filters
    lines = [p for p in sparsity.panels if isinstance(p, wr.LinePlot)]
    by_t, by_noise = lines[:len(SPARSITY_LINES)], lines[len(SPARSITY_LINES):]
    assert [p.y for p in by_t] == [y for _, y in SPARSITY_LINES.values()] and all(p.x == "curve/t" for p in by_t)
    assert [p.y for p in by_noise] == [p.y for p in by_t]  # each curve again against the noise level, log scale
    assert all(p.x == "curve/sigma_alpha" and p.log_x for p in by_noise)
    assert any(isinstance(p, wr.BarPlot) and "active_at_paper_0_8" in p.metrics for p in sparsity.panels)
    assert any(isinstance(p, wr.BarPlot) and "active_at_0_8" in p.metrics for p in sparsity.panels)
    assert any(isinstance(p, wr.MediaBrowser) and p.media_keys == ["figure/gallery"] for p in sparsity.panels)
    assert [p.y for p in radius.panels] == [y for _, y in RADIUS_LINES.values()]
    assert all(p.x == "curve/radius" for p in radius.panels) and "radius-analysis" in radius.runsets[0].filters


def test_without_a_login_it_says_so_and_exits_2(tmp_path):
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, "-m", "spell_lab.report", "--project", "p"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2 and "needs a login" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
