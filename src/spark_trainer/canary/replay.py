"""Replay the traffic set through the champion's and the challenger's adapters.

Each model answers each item at most once (later steps reuse earlier replies). An arm
whose requests fail `consecutive_error_limit` times in a row is not sent more requests
(its endpoint is down): the rest of its items count as errors, so a dead endpoint costs
seconds, not a timeout per item, and never crashes the stage.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spark_trainer.canary.adapters import Adapter, AdapterError, ask
from spark_trainer.canary.traffic import Item

log = logging.getLogger(__name__)

ARMS = ("champion", "challenger")


@dataclass
class Reply:
    item: Item
    text: str = ""
    error: str | None = None
    latency_ms: float = math.nan
    scores: dict[str, Any] = field(default_factory=dict)


class Replayer:
    def __init__(self, adapters: dict[str, Adapter], max_tokens: int, consecutive_error_limit: int,
                 scorer: Callable[[Item, str], dict[str, Any]]) -> None:
        self.adapters, self.max_tokens, self.limit, self.scorer = adapters, max_tokens, consecutive_error_limit, scorer
        self.cache: dict[str, dict[str, Reply]] = {arm: {} for arm in adapters}
        self.streak = dict.fromkeys(adapters, 0)

    def ask(self, arm: str, item: Item) -> Reply:
        if item.id in self.cache[arm]:
            return self.cache[arm][item.id]
        reply = Reply(item)
        if self.streak[arm] >= self.limit:
            reply.error = f"not sent: {self.limit} consecutive errors (endpoint down)"
        else:
            t0 = time.perf_counter()
            try:
                reply.text = ask(self.adapters[arm], item, self.max_tokens)
                reply.latency_ms = (time.perf_counter() - t0) * 1000
                reply.scores = self.scorer(item, reply.text)
                self.streak[arm] = 0
            except AdapterError as e:
                reply.error = str(e)
                self.streak[arm] += 1
                if self.streak[arm] == self.limit:
                    log.warning("%s: %d consecutive errors, last: %s; no more requests to it", arm, self.limit, e)
        self.cache[arm][item.id] = reply
        return reply

    def route(self, mode: str, items: list[Item], percent: int, seed: int) -> dict[str, list[Reply]]:
        """The replies of one step. canary/shadow: the first `percent` % of the traffic,
        answered by both models one item after the other (paired). ab: the same share,
        split between the models by a seeded coin per item (unpaired)."""
        routed = items[: max(1, math.ceil(len(items) * percent / 100))]
        if mode != "ab":
            # Interleaved, item by item: a burst of load on the machine or the network then
            # slows both models alike instead of skewing one arm's latency.
            replies: dict[str, list[Reply]] = {arm: [] for arm in ARMS}
            for it in routed:
                for arm in ARMS:
                    replies[arm].append(self.ask(arm, it))
            return replies
        coin = np.random.default_rng(seed).random(len(items))[: len(routed)]
        return {"challenger": [self.ask("challenger", it) for it, u in zip(routed, coin, strict=True) if u < 0.5],
                "champion": [self.ask("champion", it) for it, u in zip(routed, coin, strict=True) if u >= 0.5]}


def error_summary(replies: list[Reply]) -> dict[str, Any]:
    longest = streak = 0
    for r in replies:
        streak = streak + 1 if r.error else 0
        longest = max(longest, streak)
    errors = [r for r in replies if r.error]
    return {"requests": len(replies), "errors": len(errors), "max_consecutive_errors": longest,
            "first_error": errors[0].error if errors else None}
