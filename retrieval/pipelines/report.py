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
        table.add_row(
            metric,
            *(f"{100 * values[metric]:.2f}" if metric in values else "-" for values in columns.values()),
        )
    return table


def print_metrics(columns: Mapping[str, Mapping[str, float]], title: str) -> None:
    Console().print(metrics_table(columns, title))


def comparison_metrics(protocol: str, names: list[str]) -> list[str]:
    """The table's metric columns: classic mAP, mP@k, AP@k; revisited E/M/H mAP and mP@k
    (the reference AP@k of the revisited setups stays in the JSON, to keep the table narrow)."""
    if protocol != "revisited":
        return names
    return [n for s in ("mAP", "mP@") for n in names if n.split("/", 1)[-1].startswith(s)]


def comparison_table(rows: Mapping[str, tuple[str, Mapping[str, float]]], title: str, protocol: str) -> Table:
    """One row per variant: its name, what it computes, its metrics in %."""
    table = Table(title=title)
    table.add_column("variant")
    table.add_column("setup", overflow="fold")
    names = list(dict.fromkeys(k for _, values in rows.values() for k in values))
    columns = comparison_metrics(protocol, names)
    for metric in columns:
        table.add_column(metric, justify="right")
    for name, (setup, values) in rows.items():
        table.add_row(name, setup, *(f"{100 * values[m]:.2f}" if m in values else "-" for m in columns))
    return table


def print_comparison(rows: Mapping[str, tuple[str, Mapping[str, float]]], title: str, protocol: str) -> None:
    console = Console()
    if not console.is_terminal:
        # Rich assumes 80 columns for a file or pipe, which would fold a wide comparison
        # (and break its lines for scripts that read it): let it take its natural width
        console = Console(width=240)
    console.print(comparison_table(rows, title, protocol))
