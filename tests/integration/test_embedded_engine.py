"""The embedded engine (llama.cpp + SmolLM2 from its wheel) answers in words, not with identifiers.

With an ``[npc_id]`` tag in front of the prompt, 2 of these 40 replies echoed the tag (measured);
the engine now sends the prompt alone.
"""

from __future__ import annotations

from pipeline.deadlines import now_ms
from topics.schemas import Request
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
