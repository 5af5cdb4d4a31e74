"""The ranker domain service: checks a request, picks its model version, adds text for unknown
items, and has it scored through the micro-batcher.

A non-finite score is refused (FAILED_PRECONDITION), never returned nor patched: NaN or infinity
out of a model whose masks are finite by construction means that version is broken for this input,
and a made-up score would rank silently wrong. An error lets the caller (the gateway) fall back to
its non-personalized order, and the counter and the log line tell the operator to roll back.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping

import numpy as np

from bundlerec import validation
from bundlerec.errors import FailedPrecondition
from bundlerec.ranker import metrics
from bundlerec.ranker.batcher import MicroBatcher
from bundlerec.ranker.encoding import encode_query, unknown_items
from bundlerec.ranker.model import LoadedModel
from bundlerec.ranker.query import Limits, ModelInfo, RankQuery, RankResult, check_query
from bundlerec.ranker.registry import ModelRegistry
from bundlerec.ranker.text import ItemTextSource

log = logging.getLogger("bundlerec.ranker")


class RankerService:
    def __init__(
        self, registry: ModelRegistry, batcher: MicroBatcher, limits: Limits, text: ItemTextSource | None = None
    ) -> None:
        self.registry = registry
        self.batcher = batcher
        self.limits = limits
        self.text = text
        self._warned_dimension = False

    async def rank(self, query: RankQuery) -> RankResult:
        with self.batcher.expecting():
            check_query(query, self.limits)
            model = await self.registry.get(query.model_version)
            encoded = encode_query(model, query, await self._text_of_unknown_items(model, query))
            scores, user = await self.batcher.submit(model, encoded)
        if not np.isfinite(scores).all() or (query.return_user_vector and not np.isfinite(user).all()):
            metrics.NON_FINITE.inc()
            log.error("non-finite model output", extra={"fields": {"version": model.version}})
            raise FailedPrecondition(
                f"model version {model.version!r} produced a non-finite score for this request",
                reason="NON_FINITE_SCORE",
            )
        return RankResult(scores.tolist(), model.version, user.tolist() if query.return_user_vector else [])

    async def _text_of_unknown_items(self, model: LoadedModel, query: RankQuery) -> Mapping[str, np.ndarray]:
        if self.text is None or not model.feeds_text:
            return {}
        unknown = unknown_items(model, query)
        if not unknown:
            return {}
        vectors = await self.text.text_vectors(unknown)
        usable = {k: v for k, v in vectors.items() if v.shape == (model.text_dim,) and np.isfinite(v).all()}
        if len(usable) < len(vectors) and not self._warned_dimension:
            self._warned_dimension = True  # another text encoder embedded the catalogue: its vectors mean nothing here
            log.warning(
                "catalogue text vectors do not fit the model; those items are scored without text",
                extra={"fields": {"version": model.version, "model_text_dim": model.text_dim}},
            )
        return usable

    async def model_info(self, version: str = "") -> ModelInfo:
        return self._info(await self.registry.get(version), await self.registry.versions())

    async def reload(self, version: str) -> ModelInfo:
        validation.identifier("version", version, required=False)
        model = await self.registry.reload(version)
        return self._info(model, await self.registry.versions())

    @staticmethod
    def _info(model: LoadedModel, versions: list[str]) -> ModelInfo:
        try:
            created = dt.datetime.fromisoformat(model.manifest.created_at)
        except (TypeError, ValueError):
            created = None
        return ModelInfo(
            version=model.version,
            created_at=created,
            execution_provider=model.provider,
            num_items=len(model.vocabulary.item_ids),
            max_sequence_length=model.manifest.max_sequence,
            vector_dimension=model.manifest.vector_dim,
            metrics=dict(model.manifest.metrics),
            available_versions=versions,
        )

    async def close(self) -> None:
        await self.registry.close()
        await self.batcher.close()
        if self.text is not None:
            await self.text.close()
