"""The result cache's key scheme and prompt normalisation (the Redis side is in the integration tests)."""

from __future__ import annotations

from tests.unit.test_sinks import make_output
from topics.fields import ReplyStatus, ServedBy
from workers.cache.results import ResultCache, normalise_prompt, prompt_hash


def test_normalisation_folds_case_width_and_whitespace_but_keeps_punctuation() -> None:
    assert normalise_prompt("  Hello,\tGUARD!\n ") == "hello, guard!"
    assert normalise_prompt("\uff28\uff45\uff4c\uff4c\uff4f") == "hello"  # full-width letters (NFKC)
    assert prompt_hash("Hello,  guard!") == prompt_hash("hello, guard!")
    assert prompt_hash("Attack.") != prompt_hash("Attack?")
    assert len(prompt_hash("x" * 4000)) == 64


def test_keys_are_prefixed_and_name_the_tier() -> None:
    cache = ResultCache("redis://unused", prefix="t1.")
    assert cache.id_key("r-1") == "t1.npcflow:result:id:r-1"
    assert cache.prompt_key("silver", "Hi") == f"t1.npcflow:result:prompt:silver:{prompt_hash('hi')}"
    assert cache.prompt_key(None, "Hi") == f"t1.npcflow:result:prompt:any:{prompt_hash('hi')}"


def test_model_answers_are_stored_by_prompt_under_the_serving_tier() -> None:
    cache = ResultCache("redis://unused")
    output = make_output(1, tier="silver", served_tier="bronze")
    keys = [key for key, _ in cache.entries(output)]
    assert keys == [
        cache.id_key(output.reply.request_id),
        cache.prompt_key("bronze", output.request.prompt),
        cache.prompt_key(None, output.request.prompt),
    ]


def test_errors_and_default_intents_are_stored_by_id_only() -> None:
    cache = ResultCache("redis://unused")
    for status, served_by in ((ReplyStatus.ERROR, ServedBy.NONE), (ReplyStatus.OK, ServedBy.DEFAULT_INTENT)):
        output = make_output(2, status=status, served_by=served_by)
        assert [k for k, _ in cache.entries(output)] == [cache.id_key(output.reply.request_id)]
