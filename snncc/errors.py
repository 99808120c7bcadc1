"""User-facing errors. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import dataclasses


class SnnccError(Exception):
    """A problem with the user's input (model, data, options), not a bug in snncc."""


class SnnccWarning(UserWarning):
    """Something about the user's input that snncc works around but the user should know (the CLI
    prints it as one line `snncc: warning: ...`)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One non-convertible node: where it is, what it is, and why it cannot be converted."""

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"node '{self.node}' ({self.op}): {self.reason}"


class ConversionError(SnnccError):
    """The graph cannot be converted; lists every offending node, not only the first."""

    def __init__(self, problems: list[Problem], source: str = "model"):
        self.problems = list(problems)
        self.source = source
        listed = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{source}: cannot convert {len(self.problems)} node(s): {listed}")
