"""A batch of embeddings spread over an embedding server's single-thread instances
(:func:`caelum_mcp.engine.backends.embedded.embed_across`)."""

from __future__ import annotations

import anyio
import pytest

from caelum_mcp.core.errors import HostUnavailableError, MalformedResponseError
from caelum_mcp.core.types import EmbedRequest, EmbedResponse, Usage
from caelum_mcp.engine.backends.embedded import embed_across


class Instance:
    """An instance that embeds text ``t`` as ``(len(t), index)`` after ``seconds_per_input`` each."""

    def __init__(self, index: int, seconds_per_input: float = 0.01, fail_on: str | None = None) -> None:
        self.index = index
        self.seconds_per_input = seconds_per_input
        self.fail_on = fail_on
        self.pieces: list[tuple[str, ...]] = []
        self.busy = False
        self.overlapped = False  # another instance was busy while this one was
        self.peers: list[Instance] = []
        self.limits: list[float | None] = []
        self.cancelled = 0

    async def embed(self, request: EmbedRequest, *, limit_s: float | None = None) -> EmbedResponse:
        self.pieces.append(request.inputs)
        self.limits.append(limit_s)
        self.busy = True
        self.overlapped |= any(p.busy for p in self.peers if p is not self)
        try:
            try:
                await anyio.sleep(self.seconds_per_input * len(request.inputs))
            except anyio.get_cancelled_exc_class():
                self.cancelled += 1
                raise
            if self.fail_on in request.inputs:
                raise HostUnavailableError("instance down", host="embedded-embeddings")
        finally:
            self.busy = False
        return EmbedResponse(
            model="all-minilm:l6-v2",
            embeddings=tuple((float(len(t)), float(self.index)) for t in request.inputs),
            usage=Usage(input_tokens=len(request.inputs) * 3),
        )


def instances(*seconds: float) -> list[Instance]:
    made = [Instance(i, s) for i, s in enumerate(seconds)]
    for one in made:
        one.peers = made
    return made


def texts(n: int) -> tuple[str, ...]:
    return tuple("x" * (i + 1) for i in range(n))


async def test_the_inputs_are_spread_over_every_instance_at_once_and_come_back_in_order() -> None:
    pair = instances(0.01, 0.01)
    answer = await embed_across(pair, EmbedRequest(model="m", inputs=texts(40)), limit_s=None)
    assert [v[0] for v in answer.embeddings] == [float(i + 1) for i in range(40)]  # in order
    assert answer.usage.input_tokens == 120 and answer.model == "all-minilm:l6-v2"
    assert all(one.pieces for one in pair) and all(one.overlapped for one in pair)
    sizes = [len(p) for one in pair for p in one.pieces]
    assert sum(sizes) == 40 and max(sizes) == 10  # a quarter first (the rest over twice the instances)
    assert pair[0].pieces[0] == texts(10)  # the first instance takes the first piece


async def test_a_starved_instance_takes_one_piece_and_the_first_redoes_it_rather_than_wait() -> None:
    fast, slow = instances(0.002, 0.05)  # as a niced instance on a busy machine
    answer = await embed_across([fast, slow], EmbedRequest(model="m", inputs=texts(60)), limit_s=None)
    assert [v[0] for v in answer.embeddings] == [float(i + 1) for i in range(60)]
    assert len(slow.pieces) == 1 and len(slow.pieces[0]) == 12  # a quarter of the 45 left
    assert slow.pieces[0] in fast.pieces  # redone by the first instance
    assert slow.cancelled == 1  # and its own request dropped: the batch did not wait 12 x 0.05 s
    assert all(v[1] == 0.0 for v in answer.embeddings)  # every vector came from the first instance


async def test_instances_as_fast_as_each_other_do_no_work_twice() -> None:
    pair = instances(0.04, 0.04)
    await embed_across(pair, EmbedRequest(model="m", inputs=texts(16)), limit_s=None)
    sizes = [len(p) for one in pair for p in one.pieces]
    assert sum(sizes) == 16 and not any(one.cancelled for one in pair)


async def test_one_input_goes_to_the_first_instance_alone() -> None:
    pair = instances(0.01, 0.01)
    answer = await embed_across(pair, EmbedRequest(model="m", inputs=("query",)), limit_s=5.0)
    assert answer.embeddings == ((5.0, 0.0),)
    assert pair[0].pieces == [("query",)] and pair[1].pieces == []


async def test_the_first_error_is_raised_as_it_is_and_the_limit_bounds_the_whole_batch() -> None:
    pair = instances(0.01, 0.01)
    pair[1].fail_on = "x" * 12
    with pytest.raises(HostUnavailableError, match="instance down"):
        await embed_across(pair, EmbedRequest(model="m", inputs=texts(40)), limit_s=30.0)
    limits = [limit for one in pair for limit in one.limits]
    assert all(limit is not None and 0 < limit <= 30.0 for limit in limits)


async def test_an_instance_that_answers_the_wrong_number_of_vectors_is_a_malformed_answer() -> None:
    class Short(Instance):
        async def embed(self, request: EmbedRequest, *, limit_s: float | None = None) -> EmbedResponse:
            answer = await super().embed(request, limit_s=limit_s)
            return answer.model_copy(update={"embeddings": answer.embeddings[:-1]})

    with pytest.raises(MalformedResponseError, match="asked for"):
        await embed_across([Short(0)], EmbedRequest(model="m", inputs=texts(4)), limit_s=None, host="h")


async def test_no_instance_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least one instance"):
        await embed_across([], EmbedRequest(model="m", inputs=texts(2)), limit_s=None)
