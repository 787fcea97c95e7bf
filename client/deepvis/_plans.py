"""Plans of the client's calls (what each sends, what it makes of the answers), and the methods."""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import grpc

from deepvis import _convert
from deepvis._exceptions import DeepvisError, Internal, NotFound
from deepvis._models import Evaluation, EvaluationProgress, Explanation, Visualization
from deepvis._transport import Attempts, Metadata
from deepvis.v1 import deepvis_pb2

if TYPE_CHECKING:
    from deepvis._client import AsyncClient, Client

__all__ = [
    "Call",
    "Plan",
    "ProgressT",
    "Public",
    "ResultT",
    "Stream",
    "StreamRun",
    "T",
    "batch_results",
    "evaluate_stream",
    "folded",
    "no_result",
    "single",
    "streaming",
    "unary",
]

T = TypeVar("T")
P = ParamSpec("P")
PlanT = TypeVar("PlanT")
# A stream's progress items and its result, which its plan's type names.
ProgressT = TypeVar("ProgressT")
ResultT = TypeVar("ResultT")
ClientT = TypeVar("ClientT")
# What a public call returns on a Client, and on an AsyncClient.
BlockingT = TypeVar("BlockingT")
AsyncT = TypeVar("AsyncT")


def no_result(rpc: str = "Visualize") -> Internal:
    """The error of a stream (Visualize, DeepDream, Evaluate) that ended without its result."""
    return Internal(f"the {rpc} stream ended without a result", grpc.StatusCode.INTERNAL)


# --- plans: made by `_client._BaseClient` from a call's arguments, run by each client's I/O ------


@dataclass(kw_only=True)
class Plan:
    """What any call needs before it goes out: its timeout, and whether to name the model."""

    timeout: float | None
    # Messages to name the server's default model in before sending; empty: named by the caller.
    unnamed: list[Any] = field(default_factory=list)

    def name(self, model: str | None) -> None:
        """Names `model` (the server's first listed model) in the unnamed messages."""
        if model is None:
            raise NotFound("the server lists no models", grpc.StatusCode.NOT_FOUND)
        for message in self.unnamed:
            _convert.set_model(message, model)


def _only(answers: list[Any]) -> Any:
    return answers[0]


@dataclass(kw_only=True)
class Call(Plan, Generic[T]):
    """Unary calls of one method of the channel, in order, and how their answers become a result."""

    # The channel's callable of the RPC: a stub method, or the health check.
    method: Callable[..., Any]
    # One call each.
    requests: list[Any]
    # A call's answer from its request and response, made as soon as the response arrives.
    answer: Callable[[Any, Any], Any]
    # The result from the answers, in order; by default the only one.
    result: Callable[[list[Any]], T] = _only


def single(
    method: Callable[..., Any],
    request: Any,
    convert: Callable[[Any], T],
    *,
    timeout: float | None,
    unnamed: bool = False,
) -> Call[T]:
    """One call, whose result `convert` makes from the response; `unnamed`: name the server's
    default model in `request` first."""
    return Call(
        method=method,
        requests=[request],
        answer=lambda _request, response: convert(response),
        unnamed=[request] if unnamed else [],
        timeout=timeout,
    )


@dataclass(kw_only=True)
class Stream(Plan, Generic[ProgressT, ResultT]):
    """One streaming call (Visualize, Evaluate, DeepDream): progress items, then one result;
    with `visualize`, `evaluate` or `dream`, also who sees its progress."""

    request: Any
    rpc: str = "Visualize"  # the stub's method
    # One message as a progress item or the result (None: a kind this client does not know).
    decode: Callable[[Any], Any] = _convert.visualize_item_from_pb
    result_type: type = Visualization
    on_progress: Callable[[Any], None] | None = None

    def fold(self, item: Any) -> Any:
        """The result, when `item` is it; else hands the progress to `on_progress`."""
        if isinstance(item, self.result_type):
            return item
        if self.on_progress is not None:
            self.on_progress(item)
        return None


def evaluate_stream(
    request: deepvis_pb2.EvaluateRequest, *, timeout: float | None
) -> Stream[EvaluationProgress, Evaluation]:
    """The plan of one Evaluate call."""
    return Stream(
        request=request,
        rpc="Evaluate",
        decode=_convert.evaluate_item_from_pb,
        result_type=Evaluation,
        unnamed=[request] if not request.model else [],
        timeout=timeout,
    )


class StreamRun:
    """One streaming call (Visualize, Evaluate) across its replays: the state both clients'
    stream loops share.

    A call that fails with UNAVAILABLE before its first message is replayed (see `Attempts`);
    after it, a replay would repeat the messages already yielded, so the call fails instead.
    """

    def __init__(
        self,
        plan: Stream,
        *,
        method: Callable[..., Any],
        metadata: Metadata | None,
        timeout: float | None,
    ) -> None:
        self._request = plan.request
        self._plan = plan
        self._method = method
        self._metadata = metadata
        self._attempts = Attempts(timeout)
        self._result: Any = None

    @property
    def backoff(self) -> float:
        """Seconds to wait before the next attempt."""
        return self._attempts.backoff

    def call(self) -> Any:
        """Starts an attempt: the call, to iterate inside `with attempt(call)`."""
        return self._method(
            self._request, timeout=self._attempts.remaining(), metadata=self._metadata
        )

    @contextlib.contextmanager
    def attempt(self, call: Any) -> Iterator[None]:
        """Ends an attempt: swallows an error to replay, raises others as `DeepvisError`s."""
        try:
            with self._attempts:
                yield
        finally:
            # A no-op once the call has ended; otherwise (the consumer stopped early, a
            # message failed to decode) it tells the server to stop the job.
            call.cancel()

    def take(self, response: Any) -> Any:
        """The progress a message carries, to yield; the result is kept for `result()`."""
        item = self._plan.decode(response)
        self._attempts.started = True
        if isinstance(item, self._plan.result_type):
            # The stream ends after the result; reading on collects the status.
            self._result = item
            return None
        return item

    def result(self) -> Any:
        """The result, once the stream has ended."""
        if self._result is None:
            raise no_result(self._plan.rpc)
        return self._result


def batch_results(
    return_errors: bool, answers: list[list[Explanation | DeepvisError]]
) -> list[Any]:
    """`explain_batch`'s result from its chunks' items; without `return_errors`, the first
    failed item's error, raised with its index."""
    results = [item for answer in answers for item in answer]
    if not return_errors:
        for i, r in enumerate(results):
            if isinstance(r, DeepvisError):
                raise type(r)(f"item {i}: {r.details}", r.code)
    return results


# --- public methods: a plan's maker, for its signature and docs, and a client's runner ---------


def _public(method: Any, build: Callable[..., Any], run: Callable[..., Any]) -> None:
    """Gives `method`, which runs the plan `build` makes with `run`, the public face of `build`.

    Its name without the underscore, in the class of `run`; the docstring and signature of
    `build` (which `help()`, `inspect.signature` and IDEs show), returning what `run` makes of
    the plan: `run`'s return type, with the types the plan's names (T of a `Call[T]`, ProgressT
    and ResultT of a `Stream[ProgressT, ResultT]`) as `build`'s plan names them.
    """
    functools.update_wrapper(method, build)
    name = build.__name__.removeprefix("_")
    method.__name__ = name
    method.__qualname__ = f"{run.__qualname__.rpartition('.')[0]}.{name}"
    returns = inspect.signature(run).return_annotation
    taken = list(inspect.signature(run).parameters.values())[1].annotation  # after self
    kind, parameters = _type_arguments(taken)
    made, arguments = _type_arguments(build.__annotations__["return"])
    if made != kind or len(arguments) != len(parameters):
        raise TypeError(f"{build.__qualname__} must be annotated to return {taken}")
    for parameter, argument in zip(parameters, arguments, strict=True):
        returns = re.sub(rf"\b{parameter}\b", argument, returns)
    method.__signature__ = inspect.signature(build).replace(return_annotation=returns)
    method.__annotations__ = {**build.__annotations__, "return": returns}


# What the docstring of every call that reads its stream to the end says, around its own
# summary and Returns.
_READ_TO_END = """{summary}

The call is `{stream}`'s, read to its end.

Args:
    on_progress: Called with each `{progress}` as it arrives; an exception it
        raises cancels the call and propagates.
    {arguments}, timeout, **options: As for `{stream}`.

{returns}

Raises:
    DeepvisError: The call failed (a subclass per gRPC status), or (`Internal`) the
        stream ended without a result.
    TypeError, ValueError: An argument is invalid; nothing was sent.
    OSError: An input file cannot be read.
"""


def _type_arguments(annotation: str) -> tuple[str, list[str]]:
    """A generic type's name and its arguments: "Call[list[int]]" -> ("Call", ["list[int]"])."""
    name, bracket, inside = annotation.partition("[")
    arguments, depth, start = [], 0, 0
    for i, char in enumerate(inside.removesuffix("]")):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            arguments.append(inside[start:i].strip())
            start = i + 1
    arguments.append(inside.removesuffix("]")[start:].strip())
    return name, arguments if bracket else []


def _read_to_end_docs(build: Callable[..., Any]) -> None:
    """Completes the docstring of `build`, `_<name>`, a call that is `<name>_stream`'s read to
    its end with `on_progress` seeing the progress: its own summary and Returns, and what
    every such call says of its arguments and errors."""
    summary, returns = inspect.cleandoc(build.__doc__ or "").split("\n\n", 1)
    hint = re.fullmatch(
        r"Callable\[\[(\w+)\], None\] \| None", build.__annotations__["on_progress"]
    )
    if hint is None:
        raise TypeError(f"{build.__qualname__}'s on_progress must take one progress item")
    parameters = list(inspect.signature(build).parameters.values())[1:]  # after self
    build.__doc__ = _READ_TO_END.format(
        summary=summary,
        stream=build.__name__.removeprefix("_") + "_stream",
        progress=hint[1],
        arguments=", ".join(p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD),
        returns=returns,
    )


def method_of(
    build: Callable[Concatenate[Any, P], PlanT],
    run: Callable[[ClientT, PlanT], T],
) -> Callable[Concatenate[ClientT, P], T]:
    """The public method that checks its arguments with `build` and runs the plan with `run`."""

    def method(self: ClientT, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return run(self, build(self, *args, **kwargs))

    _public(method, build, run)
    return method


def coroutine_of(
    build: Callable[Concatenate[Any, P], PlanT],
    run: Callable[[ClientT, PlanT], Awaitable[T]],
) -> Callable[Concatenate[ClientT, P], Coroutine[Any, Any, T]]:
    """`method_of` as a coroutine function, for the awaitable `run`s of `AsyncClient`."""

    async def method(self: ClientT, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await run(self, build(self, *args, **kwargs))

    _public(method, build, run)
    return method


class Public(Generic[P, BlockingT, AsyncT]):
    """A public call, declared once in `_client._BaseClient` beside `build`, which makes its plan
    (`models = unary(_models)`). Each client has it as a method (`method_for`) that runs the
    plan with the client's runner of its kind (`_run`, `_stream` or `_fold`); to type checkers
    it is that method: the arguments of `build`, returning BlockingT on a `Client` and AsyncT on
    an `AsyncClient`.
    """

    def __init__(self, build: Callable[..., Any], runner: str) -> None:
        self.build = build
        self.runner = runner

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Public[P, BlockingT, AsyncT]: ...
    @overload
    def __get__(self, client: Client, owner: type[Any]) -> Callable[P, BlockingT]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type[Any]) -> Callable[P, AsyncT]: ...
    def __get__(self, client: Any, owner: type[Any]) -> Any:
        # Read on _BaseClient only: the clients have the methods `method_for` made instead.
        return self

    def method_for(self, client: type[Any]) -> Callable[..., Any]:
        """The method of the class `client`: a coroutine function where its runner is one."""
        run = getattr(client, self.runner)
        make = coroutine_of if inspect.iscoroutinefunction(run) else method_of
        return make(self.build, run)


def unary(
    build: Callable[Concatenate[Any, P], Call[T]],
) -> Public[P, T, Coroutine[Any, Any, T]]:
    """A call of unary calls, their answers made into its result."""
    return Public(build, "_run")


class _Streaming(
    Public[P, Generator[ProgressT | ResultT, None, None], AsyncGenerator[ProgressT | ResultT, None]]
):
    """A public streaming call, typed by its stream's progress and result types: inferred from
    the build's Stream[...] as they are, where mypy would make both their union."""


def streaming(
    build: Callable[Concatenate[Any, P], Stream[ProgressT, ResultT]],
) -> _Streaming[P, ProgressT, ResultT]:
    """A streaming call, yielding its progress and finally its result."""
    return _Streaming(build, "_stream")


def folded(
    build: Callable[Concatenate[Any, P], Stream[ProgressT, ResultT]],
) -> Public[P, ResultT, Coroutine[Any, Any, ResultT]]:
    """`_<name>`, `<name>_stream` read to its end, `on_progress` seeing the progress: its
    result; its docstring completed with what every such call says (`_READ_TO_END`)."""
    _read_to_end_docs(build)
    return Public(build, "_fold")
