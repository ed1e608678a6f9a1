"""GitHub Markdown tables from data frames whose cells are already formatted (the ledger pages' tables)."""

from __future__ import annotations

import pandas as pd


def markdown(cells: pd.DataFrame, index: str | None = None) -> str:
    """`cells` as a Markdown table, one line per row; `index`: the index becomes a first column of that name."""
    shown = cells.reset_index().rename(columns={cells.index.name or "index": index}) if index else cells
    lines = ["| " + " | ".join(str(c) for c in shown.columns) + " |", "|" + "|".join(" --- " for _ in shown.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"
