"""Printing results for people: Rich tables of metrics."""
from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table


def metrics_table(columns: Mapping[str, Mapping[str, float]], title: str) -> Table:
    """One row per metric, one column per run (e.g. 'untrained', 'trained'); values in %."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    names = list(dict.fromkeys(k for values in columns.values() for k in values))
    for metric in names:
        table.add_row(metric, *(f"{100 * values[metric]:.2f}" if metric in values else "-"
                                for values in columns.values()))
    return table


def print_metrics(columns: Mapping[str, Mapping[str, float]], title: str) -> None:
    Console().print(metrics_table(columns, title))
