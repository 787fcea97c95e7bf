"""One batch on the device: stack, normalise, run the method, score, cast, split per item."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .methods import BatchOutput, Method, MethodRequest, Target
from .models import ServedModel
from .preprocess import model_input, stack_batch

FAST_MODE_WARNING = (
    "fast mode: computed with bf16 autocast and channels_last, not exact fp32 "
    "(bench/load.py --fast reports the error)"
)


@dataclass
class ItemResult:
    """One request's share of a batch's output, on the CPU."""

    array: np.ndarray
    extras: dict[str, np.ndarray]
    target: Target
    predictions: list[tuple[int, float]]  # (class index, probability), best first
    warnings: tuple[str, ...]
    queue_ms: float
    compute_ms: float
    batch_size: int
    # (attribution sum, score, baseline score) for LRP and integrated gradients, else None.
    completeness: tuple[float, float, float] | None = None


class DeviceOutOfMemory(Exception):
    """The device could not hold the batch; the batcher splits it or fails the single item."""


class FatalDeviceError(Exception):
    """The device is unusable (a CUDA error other than out-of-memory): the process must restart."""


class WrongResultCount(Exception):
    """The method returned other than one result per item: a bug in the method, which no
    item of the batch can be answered from."""


def is_fatal_device_error(e: BaseException) -> bool:
    """CUDA errors other than OOM leave the context unusable; everything after them fails."""
    text = str(e)
    return (
        "CUDA error" in text
        or "device-side assert" in text
        or type(e).__name__ == "AcceleratorError"
    )


def check_result_count(out: BatchOutput, n: int, method: str) -> None:
    """Raises WrongResultCount unless every part of `out` has one entry per item."""
    counts = {
        "logits": _rows(out.logits),
        "arrays": _rows(out.arrays),
        "targets": len(out.targets),
        **{f"extras['{name}']": _rows(t) for name, t in out.extras.items()},
        **({"completeness": _rows(out.completeness)} if out.completeness is not None else {}),
    }
    wrong = [f"{count} {part}" for part, count in counts.items() if count != n]
    if wrong:
        raise WrongResultCount(
            f"method {method} returned {', '.join(wrong)} for a batch of {n} items"
        )


def _rows(t: torch.Tensor) -> int:
    return int(t.shape[0]) if t.dim() > 0 else 0


@dataclass
class Staged:
    """A batch's inputs made ready off the device thread (`BatchStep.stage`): on a CPU device
    the model input itself, on a GPU the stacked items in page-locked memory."""

    x: torch.Tensor
    on_device: bool  # x is the model input already

    def rows(self, keep: Sequence[int]) -> Staged:
        """The staged inputs of the items at `keep` only (others left the batch meanwhile)."""
        return Staged(self.x[list(keep)], self.on_device)


class BatchStep:
    """Runs batches of one model's items on its device: call it on the device thread only,
    except `stage`, which any thread may call."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None

    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's normalisation as [C, 1, 1] float32 tensors on its device (made once)."""
        if self._norm is None:
            spec, dev = self.model.spec, self.model.device
            self._norm = (
                torch.tensor(spec.mean, dtype=torch.float32, device=dev)[:, None, None],
                torch.tensor(spec.std, dtype=torch.float32, device=dev)[:, None, None],
            )
        return self._norm

    def _model_input(self, stacked: torch.Tensor) -> torch.Tensor:
        """A `stack_batch` result as the model's input on its device, normalised and laid out
        as the model is."""
        model = self.model
        return model_input(
            stacked, model.device, *self._mean_std(), channels_last=model.channels_last
        )

    def stage(self, inputs: Sequence[torch.Tensor]) -> Staged:
        """What of a batch's input preparation needs no device work, done on the calling
        thread while the device computes another batch: on a CPU device, all of it (stacked
        and normalised); on a GPU, the items stacked into page-locked memory."""
        if self.model.device.type == "cpu":
            return Staged(self._model_input(stack_batch(list(inputs), pin=False)), on_device=True)
        return Staged(stack_batch(list(inputs), pin=True), on_device=False)

    def __call__(
        self,
        method: Method,
        inputs: Sequence[torch.Tensor],
        requests: Sequence[MethodRequest],
        top_k: Sequence[int],
        half: bool,
        staged: Staged | None = None,
    ) -> list[ItemResult]:
        """One method call for the whole batch; each item's share of it, on the CPU.

        Args:
            method: the method every item asked for (they share a batch key).
            inputs: each item's input [C, H, W] on the CPU: uint8 pixels or a model tensor.
            requests: each item's prepared request.
            top_k: how many predictions each item wants.
            half: every item wants its main array as float16.
            staged: `stage(inputs)`, when it ran beforehand; None: prepared here.

        Raises:
            DeviceOutOfMemory: the batch did not fit on the device.
            FatalDeviceError: the device failed beyond repair.
            WrongResultCount: the method returned other than one result per item.
        """
        t0 = time.perf_counter()
        model = self.model
        n = len(inputs)
        try:
            if staged is None:
                staged = Staged(stack_batch(list(inputs), pin=model.device.type == "cuda"), False)
            x = staged.x if staged.on_device else self._model_input(staged.x)
            fast = model.spec.fast
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=fast):
                out = method.compute(model, x, requests)
            check_result_count(out, n, method.name)
            if fast:
                out.warnings = (*out.warnings, FAST_MODE_WARNING)
            k = min(max(top_k), model.spec.num_classes)
            top_p, top_i = out.logits.float().softmax(dim=1).topk(k, dim=1)
            # On a GPU, when every item wants float16, the cast runs once for the batch there:
            # half the bytes to copy back, and none of the event loop's time per answer. On
            # the CPU it measured slower than casting each answer on the loop (3.3 -> 5.7 ms
            # of server CPU per request in bench/overhead.py: the batch-wide cast wakes the
            # device thread's OpenMP team), so there the answers are cast one by one.
            on_gpu = model.device.type == "cuda"
            wire = torch.float16 if on_gpu and half and method.half_on_device else torch.float32
            arrays = out.arrays.detach().to(wire).cpu().numpy()
            extras = {name: t.detach().float().cpu().numpy() for name, t in out.extras.items()}
            top_p_np, top_i_np = top_p.cpu().numpy(), top_i.cpu().numpy()
            sums = None if out.completeness is None else out.completeness.double().cpu().numpy()
        except torch.OutOfMemoryError as e:
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            raise DeviceOutOfMemory(str(e)) from None
        except RuntimeError as e:
            if is_fatal_device_error(e):
                raise FatalDeviceError(str(e)) from e
            raise
        compute_ms = (time.perf_counter() - t0) * 1000.0
        return [
            ItemResult(
                array=arrays[i],
                extras={name: e[i] for name, e in extras.items()},
                target=out.targets[i],
                predictions=[
                    (int(c), float(p))
                    for c, p in zip(top_i_np[i, : top_k[i]], top_p_np[i, : top_k[i]], strict=True)
                ],
                warnings=out.warnings,
                queue_ms=0.0,
                compute_ms=compute_ms,
                batch_size=n,
                completeness=None
                if sums is None
                else (float(sums[i, 0]), float(sums[i, 1]), float(sums[i, 2])),
            )
            for i in range(n)
        ]
