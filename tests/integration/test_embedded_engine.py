"""The embedded engine (llama.cpp + SmolLM2 from its wheel) answers in words, not with identifiers.

With an ``[npc_id]`` tag in front of the prompt, 2 of these 40 replies echoed the tag (measured);
the engine now sends the prompt alone.
"""

from __future__ import annotations

import asyncio

from topics.headers import now_ms
from topics.schemas import Request
from workers.engines.base import EngineResult
from workers.engines.batching import MicroBatcher
from workers.engines.embedded import EmbeddedEngine

PROMPTS = [
    "The player asks for a sword.",
    "Greet the traveller.",
    "The player steps on your foot.",
    "What do you do when the bell rings?",
    "The player offers you a coin.",
    "A wolf appears at the gate.",
    "Wave.",
    "Look around.",
    "The player waves.",
    "Guard the door.",
]


async def test_no_reply_echoes_an_id_tag() -> None:
    async with EmbeddedEngine(persona="gold") as engine:
        for i in range(40):
            request = Request(
                request_id=f"emb-{i}",
                npc_id=f"npc-{i}",
                tenant_id="gs-test",
                prompt=PROMPTS[i % len(PROMPTS)],
                max_tokens=8,
                created_at_ms=now_ms(),
            )
            result = await engine.generate(request, now_ms() + 10_000)
            text = result.text.strip()
            assert text and result.completion_tokens > 0, f"no reply to {request.prompt!r}"
            assert "npc-" not in text and not text.startswith("["), f"reply echoes an id tag: {text!r}"


def _request(i: int, max_tokens: int = 8) -> Request:
    return Request(
        request_id=f"batch-{i}",
        npc_id=f"npc-{i}",
        tenant_id="gs-test",
        prompt=PROMPTS[i % len(PROMPTS)],
        max_tokens=max_tokens,
        created_at_ms=now_ms(),
    )


async def test_a_batch_decodes_every_request_within_its_token_limit() -> None:
    async with EmbeddedEngine(persona="gold") as engine:
        requests = [_request(i, max_tokens=4 + i) for i in range(6)]
        results = await engine.generate_batch(requests, now_ms() + 30_000)
        assert len(results) == len(requests)
        for request, result in zip(requests, results, strict=True):
            assert isinstance(result, EngineResult), result
            assert result.text and 0 < result.completion_tokens <= request.max_tokens
            assert result.prompt_tokens > 10  # persona and prompt through the model's chat template
            assert "batch-" not in result.text and "npc-" not in result.text
        # The same request ids sample the same tokens: a replayed refresh is reproducible.
        again = await engine.generate_batch(requests, now_ms() + 30_000)
        assert [r.text for r in again] == [r.text for r in results]  # type: ignore[union-attr]


async def test_micro_batched_refreshes_share_one_decode() -> None:
    async with MicroBatcher(EmbeddedEngine(persona="gold"), window_ms=50, max_batch=4) as batcher:
        results = await asyncio.gather(*(batcher.generate(_request(i), now_ms() + 30_000) for i in range(4)))
        assert all(r.text and r.completion_tokens > 0 for r in results)
        assert batcher.stats.batches == 1 and batcher.stats.calls == 4
