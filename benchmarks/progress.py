"""Progress display for a benchmark run: a rich progress bar on a terminal (rich is
a core dependency, the CLI draws with it too), else one line per finished step.
Owns only what is printed while running, never results."""

import sys


class Progress:
    def __init__(self, total, enabled=True, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

            self.bar = Bar(
                TextColumn("{task.description:<40}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self.task = self.bar.add_task("benchmarks", total=total)
            self.bar.start()

    def step(self, label, line):
        """One step finished: label = what ran, line = its result in a few words."""
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=label[:40])
            if "FAILED" in line:
                self.bar.console.print(f"{label}: {line}")
        else:
            print(f"[{self.done}/{self.total}] {label}: {line}", file=self.stream, flush=True)

    def note(self, text):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.stop()
