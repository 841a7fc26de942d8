"""A live loss curve for training loops in notebooks."""

from __future__ import annotations

__all__ = ["LivePlot"]


class LivePlot:
    """A ``fit`` callback that redraws the loss curve every ``every`` steps in a notebook.

    Args:
        every: redraw period in steps.
        reference: an earlier loss curve drawn under the live one (e.g. autograd's).
        title: the plot title.

    Example:
        >>> plot = LivePlot(every=10**9)       # never redraws here
        >>> plot(0, 1.5); plot.losses
        [1.5]
    """

    def __init__(self, every: int = 20, reference: list[float] | None = None, title: str = ""):
        self.every, self.reference, self.title = int(every), reference, title
        self.losses: list[float] = []
        self._handle = None

    def __call__(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        if (step + 1) % self.every == 0:
            self.draw()

    def draw(self):
        """Draw (or redraw in place) the curve; returns the figure."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig, ax = plt.subplots(figsize=(5, 3))
        if self.reference is not None:
            ax.plot(self.reference, color="black", lw=3, alpha=0.35, label="autograd")
        ax.plot(self.losses, label="this run")
        ax.set_xlabel("step")
        ax.set_ylabel("loss E")
        ax.set_title(self.title, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)
        return fig
