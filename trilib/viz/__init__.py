"""Pictures of systems and solvers, drawn with Matplotlib from systems and traces."""

from .spy import spy, spy_pair

__all__ = ["spy", "spy_pair"]
