"""The ``memvee`` command line: rebuild and verify the projections of a database."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from events import EventStore, sqlite_url
from projections import rebuild as rebuild_projections
from projections import verify as verify_projections

__all__ = ["app", "main"]

app = typer.Typer(help="memvee: long-term memory for LLM agents.", no_args_is_help=True)
console = Console()

DbOption = Annotated[str, typer.Option("--db", help="SQLite file of the memory.")]
DbUrlOption = Annotated[
    str | None, typer.Option("--db-url", help="SQLAlchemy URL instead of --db.")
]


def _store(db: str, db_url: str | None) -> EventStore:
    return EventStore(db_url or sqlite_url(db))


@app.command()
def rebuild(
    db: DbOption = "memvee.db",
    db_url: DbUrlOption = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted rebuild.")] = False,
) -> None:
    """Drop every projection and fold the whole event log again."""
    store = _store(db, db_url)
    try:
        with Progress(
            TextColumn("rebuilding"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            job = bar.add_task("rebuild", total=store.max_position())
            folded = rebuild_projections(
                store, resume=resume, progress=lambda done, total: bar.update(job, completed=done)
            )
        console.print(f"rebuilt the projections from {folded} events")
    finally:
        store.close()


@app.command()
def verify(db: DbOption = "memvee.db", db_url: DbUrlOption = None) -> None:
    """Rebuild into scratch tables and report every difference from the live ones."""
    store = _store(db, db_url)
    try:
        differences = verify_projections(store)
    finally:
        store.close()
    if not differences:
        console.print("projections match the log")
        return
    table = Table("table", "live", "rebuilt", title=f"{len(differences)} differences")
    for d in differences[:50]:
        table.add_row(d.table, repr(d.live), repr(d.rebuilt))
    console.print(table)
    raise typer.Exit(code=1)


def main() -> None:
    """Entry point of the ``memvee`` console script."""
    app()
