"""Running models over data sets: logits in batches, accuracy, agreement with the ANN."""

from __future__ import annotations

import dataclasses

import click
import numpy as np
import onnxruntime as ort

from snncc.errors import SnnccError


def check_input(session: ort.InferenceSession, x: np.ndarray, source: str) -> None:
    """Raise SnnccError unless `x` fits the model's single input (dtype float32, static dims)."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise SnnccError(f"{source}: the model has {len(inputs)} inputs; evaluation needs exactly one")
    expected = inputs[0].shape
    if x.dtype != np.float32:
        raise SnnccError(f"{source}: data has dtype {x.dtype}, the model wants float32")
    if len(expected) != x.ndim or any(isinstance(d, int) and d != n for d, n in zip(expected[1:], x.shape[1:])):
        raise SnnccError(f"{source}: data of shape {list(x.shape)} does not fit the model input "
                         f"'{inputs[0].name}' of shape {expected}")


def predict(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256, label: str = "running") -> np.ndarray:
    """The first output of `session` for every row of `x`, computed in batches with a progress bar."""
    name = session.get_inputs()[0].name
    starts = range(0, len(x), batch_size)
    return np.concatenate([session.run(None, {name: x[s:s + batch_size]})[0] for s in progress(starts, label)])


def progress(items, label: str):
    """Iterate over `items` with a progress bar on stderr."""
    with click.progressbar(items, label=label, file=click.get_text_stream("stderr")) as bar:
        yield from bar


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


@dataclasses.dataclass(frozen=True)
class Agreement:
    argmax: float  # fraction of inputs where SNN and ANN pick the same class
    max_abs_logit_diff: float
    relative_close: float  # fraction of inputs with |SNN - ANN| <= 1e-4 * max|ANN logit|


def agreement(snn: np.ndarray, ann: np.ndarray) -> Agreement:
    diff = np.abs(snn - ann).max(axis=1)
    scale = np.abs(ann).max(axis=1)
    return Agreement(
        argmax=float(np.mean(snn.argmax(1) == ann.argmax(1))),
        max_abs_logit_diff=float(diff.max()),
        relative_close=float(np.mean(diff <= 1e-4 * scale)),
    )
