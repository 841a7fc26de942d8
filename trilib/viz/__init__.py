"""Pictures of systems and solvers, drawn with Matplotlib from systems and traces."""

from .graphs import dag_and_spy, draw_dag, level_colors, plot_graph_steps, spy_levels
from .rnn import plot_loss_curves, plot_steps, rnn_spy_pair, rnn_steps
from .sparsity import spy, spy_mlp, spy_pair
from .timelines import convergence, gantt, gantt_grid
from .training import LivePlot
from .trees import plot_counts, plot_tree, plot_trees, tree_trace

__all__ = [
    "LivePlot", "convergence", "dag_and_spy", "draw_dag", "gantt", "gantt_grid", "level_colors",
    "plot_counts", "plot_graph_steps", "plot_loss_curves", "plot_steps", "plot_tree", "plot_trees",
    "rnn_spy_pair", "rnn_steps", "spy", "spy_levels", "spy_mlp", "spy_pair", "tree_trace",
]
