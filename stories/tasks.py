"""Worker tasks of the story pipeline. Their dotted paths are stored in the database: keep them."""

from __future__ import annotations

from stories import runner


def feed() -> str:
    """Place the ready steps of every story on the Ollama nodes with room."""
    return f"queued {runner.feed()} step(s)"


def step(run_pk: int) -> str:
    """Run one claimed step (and, on its node, what is ready next)."""
    return runner.execute(run_pk)


def export(movie_pk: int) -> str:
    """Join a movie's rendered shots into the film."""
    from stories import movie

    return movie.export(movie_pk)
