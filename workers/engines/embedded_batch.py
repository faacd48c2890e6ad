"""Several prompts in one llama.cpp decode loop: the embedded engine's batches (Gold micro-batching).

``Llama.create_chat_completion`` decodes one sequence at a time, so on a CPU each token of each
request is a matrix-vector pass over the whole model. Decoding N sequences together makes each
step one matrix-matrix pass for all of them, which a CPU runs far better per token: measured
with SmolLM2-135M on 2 threads, 8 Gold refreshes of 8 tokens took 1.3-1.7 s together against
8.1 s one by one (``benchmarks/gold_batching.py`` measures it in the product's own path).

A second llama.cpp context on the same model weights holds the batch: its KV cache is unified
across sequences (they share the persona prefix), and it lives in the engine's one thread, like
the model itself. Sampling matches the single path's intent (temperature 0.7, top-k 40, a seed
per request id), not its exact tokens.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Tokens of context for the whole batch; Gold prompts are short (persona + prompt + 8 tokens).
BATCH_CTX = 4096
TOP_K = 40
TEMPERATURE = 0.7


@dataclass(frozen=True)
class Decoded:
    text: str
    prompt_tokens: int
    completion_tokens: int


class BatchDecoder:
    """Owns the batch context; every method runs in the engine's model thread."""

    def __init__(self, llm: Any, max_sequences: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llm = llm
        self.max_sequences = max_sequences
        model = llm._model.model  # llama-cpp-python keeps the loaded model's handle here
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = BATCH_CTX
        params.n_batch = BATCH_CTX
        params.n_seq_max = max_sequences
        params.kv_unified = True  # the sequences share the persona prefix
        params.n_threads = params.n_threads_batch = llm.n_threads
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a batch context")
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._format = _chat_formatter(llm)
        #: The prompt prefix every sequence shares (persona and chat template), kept decoded in
        #: sequence 0 between batches: each batch then decodes only what differs.
        self._prefix: list[int] = []

    def close(self) -> None:
        if self._ctx:
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def fits(self, prompts: list[list[int]], max_tokens: list[int]) -> bool:
        return len(prompts) <= self.max_sequences and sum(map(len, prompts)) + sum(max_tokens) <= BATCH_CTX

    def tokenize(self, system: str, user: str) -> list[int]:
        text = self._format(system, user)
        return list(self._llm.tokenize(text.encode(), add_bos=False, special=True))

    def decode(self, prompts: list[list[int]], max_tokens: list[int], seeds: list[str]) -> list[Decoded]:
        """Generate for every prompt at once; raises RuntimeError if llama.cpp refuses a step."""
        lib, n = self._lib, len(prompts)
        batch = lib.llama_batch_init(max(sum(map(len, prompts)), n), 0, n)
        try:
            shared = self._share_prefix(batch, prompts)
            rngs = [np.random.default_rng(zlib.crc32(s.encode())) for s in seeds]
            outputs: list[list[int]] = [[] for _ in range(n)]
            positions = [len(p) for p in prompts]
            batch.n_tokens = 0
            logits_at: dict[int, int] = {}
            for seq, tokens in enumerate(prompts):
                for pos in range(shared, len(tokens)):
                    _add(batch, tokens[pos], pos, seq, last := pos == len(tokens) - 1)
                    if last:
                        logits_at[seq] = batch.n_tokens - 1
            while logits_at:
                if lib.llama_decode(self._ctx, batch) != 0:
                    raise RuntimeError("llama.cpp could not decode the batch")
                batch.n_tokens = 0
                step: dict[int, int] = {}
                for seq, index in logits_at.items():
                    token = self._sample(lib.llama_get_logits_ith(self._ctx, index), rngs[seq])
                    if lib.llama_vocab_is_eog(self._vocab, token):
                        continue
                    outputs[seq].append(token)
                    if len(outputs[seq]) < max_tokens[seq]:
                        _add(batch, token, positions[seq], seq, True)
                        positions[seq] += 1
                        step[seq] = batch.n_tokens - 1
                logits_at = step
            return [
                Decoded(self._llm.detokenize(out).decode(errors="replace").strip(), len(p), len(out))
                for p, out in zip(prompts, outputs, strict=True)
            ]
        finally:
            lib.llama_batch_free(batch)

    def _share_prefix(self, batch: Any, prompts: list[list[int]]) -> int:
        """Make positions [0, k) of every sequence the prompts' common prefix; returns k.

        The prefix stays decoded in sequence 0 from the batch before when it is the same; the
        other sequences get a copy of it (no compute), and everything past it is dropped.
        """
        lib = self._lib
        memory = lib.llama_get_memory(self._ctx)
        k = min(len(p) for p in prompts) - 1  # every sequence keeps a token of its own to decode
        for i in range(k):
            if any(p[i] != prompts[0][i] for p in prompts):
                k = i
                break
        prefix = prompts[0][:k]
        if prefix != self._prefix:
            lib.llama_memory_clear(memory, True)
            self._prefix = []
            if prefix:
                batch.n_tokens = 0
                for pos, token in enumerate(prefix):
                    _add(batch, token, pos, 0, False)
                if lib.llama_decode(self._ctx, batch) != 0:
                    raise RuntimeError("llama.cpp could not decode the shared prefix")
                self._prefix = prefix
        lib.llama_memory_seq_rm(memory, -1, k, -1)  # the last batch's own tokens
        for seq in range(1, self.max_sequences):
            lib.llama_memory_seq_rm(memory, seq, -1, -1)
        for seq in range(1, len(prompts)):
            lib.llama_memory_seq_cp(memory, 0, seq, -1, k)
        return k

    def _sample(self, logits_ptr: Any, rng: np.random.Generator) -> int:
        logits = np.ctypeslib.as_array(logits_ptr, shape=(self._n_vocab,))
        top = np.argpartition(logits, -TOP_K)[-TOP_K:]
        scaled = logits[top] / TEMPERATURE
        weights = np.exp(scaled - scaled.max())
        return int(top[rng.choice(TOP_K, p=weights / weights.sum())])


def _add(batch: Any, token: int, pos: int, seq: int, logits: bool) -> None:
    i = batch.n_tokens
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = logits
    batch.n_tokens = i + 1


def _chat_formatter(llm: Any) -> Any:
    """The model's own chat template (from its GGUF), as ``create_chat_completion`` applies it."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise RuntimeError("the model has no chat template: batches need one")
    vocab = llm._model
    eos = llm.detokenize([vocab.token_eos()]).decode(errors="replace")
    bos = llm.detokenize([vocab.token_bos()]).decode(errors="replace") if vocab.token_bos() >= 0 else ""
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def format_chat(system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return formatter(messages=messages).prompt

    return format_chat
