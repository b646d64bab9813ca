"""Progress display for a benchmark run: a tqdm bar on a terminal when tqdm is installed (the `bench`
extra), else one line per finished step. Owns only what is printed while running, never results."""
import shutil
import sys


class Progress:
    def __init__(self, total, enabled=True, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled
        if enabled and self.stream.isatty():
            try:
                from tqdm import tqdm
                cols = shutil.get_terminal_size((100, 24)).columns or 100   # a pty may say 0 columns
                self.bar = tqdm(total=total, file=self.stream, unit="run", leave=True, ncols=min(cols, 120))
            except ImportError:
                pass

    def step(self, label, line):
        """One step finished: label = what ran, line = its result in a few words."""
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(label[:40])
            self.bar.update(1)
            if "FAILED" in line:
                self.bar.write(f"{label}: {line}")
        else:
            print(f"[{self.done}/{self.total}] {label}: {line}", file=self.stream, flush=True)

    def note(self, text):
        if not self.enabled:
            return
        (self.bar.write if self.bar is not None else lambda t: print(t, file=self.stream, flush=True))(text)

    def close(self):
        if self.bar is not None:
            self.bar.close()
