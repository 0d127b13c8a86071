"""Several choices for one request (`n > 1`, or a list of prompts on /v1/completions).

OpenAI-kind providers (openai, openai_compatible, azure_openai) answer `n` natively in one
upstream call; other kinds (anthropic, mock) get one upstream call per choice, run
concurrently within the same InferenceCall, so the request still leaves exactly one usage
event. Billing is per choice: the usage event carries the sum of every call's usage (a
native call's usage already covers all its choices). Admission reserves for every choice:
the prompt and the output bound are counted once per call."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from providers.tokens import count_message_tokens, count_text_tokens
from providers.types import ChatRequest, ChatResponse, Usage
from routing.inference import InferenceCall
from routing.snapshot import ResolvedRoute

NATIVE_N_KINDS = frozenset({"openai", "openai_compatible", "azure_openai"})
MAX_CHOICES = 16


def n_native(route: ResolvedRoute) -> bool:
    """True when every target of the route answers `n` itself."""
    return all(t.provider.kind in NATIVE_N_KINDS for t in route.targets)


def admission_chat(chat: ChatRequest, *, route: ResolvedRoute, copies: int) -> ChatRequest:
    """The request as admission should see it when it will cost `copies` answers: the prompt
    `copies` times (a fan-out sends it each time) and `copies` output bounds."""
    if copies <= 1:
        return chat
    per_choice = chat.max_tokens or max(t.model.max_output_tokens for t in route.targets)
    return dataclasses.replace(
        chat, messages=chat.messages * copies, max_tokens=per_choice * copies
    )


def usage_sum(usages: list[Usage]) -> Usage:
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        cache_read_tokens=sum(u.cache_read_tokens for u in usages),
        cache_write_tokens=sum(u.cache_write_tokens for u in usages),
        estimated=any(u.estimated for u in usages),
    )


def _usage_or_estimate(chat: ChatRequest, response: ChatResponse) -> Usage:
    """The upstream's usage of one answer, or (when it reported none) the gateway's count of
    its prompt and output, flagged: each fanned-out choice is billed, not only the last."""
    usage = response.usage
    if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
        return usage
    # A native multi-choice answer: every choice's message (its raw body), else the one.
    raw_choices = (response.raw or {}).get("choices") if isinstance(response.raw, dict) else None
    messages = [c.get("message") or {} for c in raw_choices or () if isinstance(c, dict)]
    if not messages:
        messages = [{"content": response.content, "tool_calls": response.tool_calls}]
    output = sum(
        count_text_tokens(str(m.get("content") or ""))
        + sum(
            count_text_tokens(str((c.get("function") or {}).get(k) or ""))
            for c in m.get("tool_calls") or ()
            for k in ("name", "arguments")
        )
        for m in messages
    )
    return Usage(prompt_tokens=_prompt_estimate(chat), completion_tokens=output, estimated=True)


def _prompt_estimate(chat: ChatRequest) -> int:
    prompt = count_message_tokens(chat.messages)
    if chat.tools:
        prompt += count_text_tokens(str(chat.tools))
    return prompt


def _sent_and_cancelled(call: InferenceCall, chats: list[ChatRequest]) -> list[Usage]:
    """Upstream calls cancelled while in flight (a sibling failed, or the client left): the
    upstream bills their prompts, so the call does (estimated), on the deployment the call
    was trying when it stopped."""
    if call.served is None and call._dispatched_unanswered is None:
        last = call.attempts[-1] if call.attempts else None
        call._dispatched_unanswered = call._inflight or next(
            (
                t
                for t in call.route.targets
                if last is not None
                and (t.model.id, t.provider.id) == (last.model_id, last.provider_id)
            ),
            call.route.targets[0],
        )
    return [Usage(prompt_tokens=_prompt_estimate(chat), estimated=True) for chat in chats]


def _split_native(response: ChatResponse, n: int) -> list[ChatResponse]:
    """One ChatResponse per choice of a native multi-choice answer (usage on the first)."""
    raw = response.raw or {}
    choices = sorted(raw.get("choices") or [], key=lambda c: c.get("index", 0))
    if len(choices) <= 1:
        return [response]
    split = []
    for position, choice in enumerate(choices[:n]):
        message = choice.get("message") or {}
        split.append(
            ChatResponse(
                id=response.id,
                model=response.model,
                content=message.get("content"),
                finish_reason=choice.get("finish_reason"),
                usage=response.usage if position == 0 else Usage(),
                tool_calls=message.get("tool_calls") or None,
                created=response.created,
            )
        )
    return split


async def choices_complete(
    call: InferenceCall, chats: list[ChatRequest], *, n: int
) -> list[list[ChatResponse]]:
    """For each request, its `n` answers (natively or by fan-out), concurrently. Sets the
    call's usage to the sum of every upstream call's usage (billed per choice); on a failure
    the other calls are cancelled, the usage of the ones that finished is kept, and the
    error is raised."""
    native = n > 1 and n_native(call.route)
    jobs: list[tuple[int, ChatRequest]] = []
    for position, chat in enumerate(chats):
        if native:
            extra = dict(chat.extra, n=n)
            jobs.append((position, dataclasses.replace(chat, extra=extra)))
        else:
            plain = dict(chat.extra)
            plain.pop("n", None)
            jobs.extend((position, dataclasses.replace(chat, extra=plain)) for _ in range(n))
    tasks = [asyncio.ensure_future(call.complete(chat)) for _, chat in jobs]
    sent: list[Usage] = []
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        in_flight = [chat for (_, chat), t in zip(jobs, tasks, strict=True) if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if in_flight:
            sent = _sent_and_cancelled(call, in_flight)
        raise
    finally:
        done = [
            _usage_or_estimate(chat, t.result())
            for (_, chat), t in zip(jobs, tasks, strict=True)
            if t.done() and not t.cancelled() and not t.exception()
        ]
        if done or sent:
            call.usage = usage_sum(done + sent)
    answers: list[list[ChatResponse]] = [[] for _ in chats]
    for (position, _), task in zip(jobs, tasks, strict=True):
        result = task.result()
        answers[position].extend(_split_native(result, n) if native else [result])
    return answers


def chat_completion_object(*, model: str, answers: list[ChatResponse], usage: Usage) -> dict:
    """An OpenAI chat.completion with one choice per answer."""
    first = answers[0]
    choices: list[dict[str, Any]] = []
    for index, answer in enumerate(answers):
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        )
    return {
        "id": first.id,
        "object": "chat.completion",
        "created": first.created,
        "model": model,
        "choices": choices,
        "usage": usage.to_openai(),
    }
