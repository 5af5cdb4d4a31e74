"""Which model versions are loaded, which one is current, and how a new one is swapped in.

A swap loads and warms the new version off the event loop first, then replaces the `current`
reference in one assignment. A request resolves its model once, before it is encoded, so it runs
entirely on the version it started with; the previous version stays loaded (up to `keep`
versions, least recently used evicted) and unloads only when nothing refers to it any more. So no
request fails or mixes versions during a swap.

The watcher follows the version the models directory's pointer names (ranking/promotion.py: the
newest version where there is no pointer), or waits for the pinned one. It
tries each version's content once: a broken version is not retried until its files change, and a
version an operator rolled back from (ReloadModel) is not swapped back in until the pointer moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from bundlerec.errors import FailedPrecondition, NotFound, Unavailable
from bundlerec.ranker import metrics
from bundlerec.ranker.model import LoadedModel
from bundlerec.ranking.artifact import fingerprint, model_versions
from bundlerec.ranking.promotion import servable_versions, serving_version

log = logging.getLogger("bundlerec.ranker")

Loader = Callable[[Path], LoadedModel]  # blocking: runs on a worker thread
Fingerprint = tuple[tuple[str, int, int], ...]


class ModelRegistry:
    def __init__(self, models_dir: Path, loader: Loader, *, keep: int = 2, pinned: str = "") -> None:
        self.models_dir = models_dir
        self.keep = keep
        self.pinned = pinned
        self.current: LoadedModel | None = None
        self._loader = loader
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._attempted: dict[str, Fingerprint] = {}  # what the watcher (or an operator) already tried
        self._failed: dict[str, tuple[Fingerprint, str]] = {}  # versions that failed to load, and why
        self._swap = asyncio.Lock()
        self._problem = "no model loaded yet"
        self._watcher: asyncio.Task[None] | None = None
        self._followed = ""  # the version the last poll was told to follow

    async def versions(self) -> list[str]:
        return await asyncio.to_thread(model_versions, self.models_dir)

    async def readiness(self) -> str | None:
        return None if self.current is not None else self._problem

    async def get(self, version: str = "") -> LoadedModel:
        """The current model, or a named version (loaded on first use, for experiments)."""
        if not version:
            if self.current is None:
                raise Unavailable(f"no model is loaded yet ({self._problem})")
            return self.current
        return await self._obtain(version)

    async def reload(self, version: str = "") -> LoadedModel:
        """Loads `version` (empty: the serving one, promotion.py), warms it up and makes it current."""
        async with self._swap:
            if not version:
                version = await asyncio.to_thread(serving_version, self.models_dir)
                if not version:
                    raise FailedPrecondition("the models directory names no complete model version to serve")
            self._attempted[version] = await asyncio.to_thread(fingerprint, self.models_dir / version)
            model = await self._obtain(version)
            if self.current is not model:
                self.current = model
                metrics.MODEL.info(
                    {
                        "version": model.version,
                        "execution_provider": model.provider,
                        "quantized": str(model.quantized).lower(),
                    }
                )
                log.info("serving model version", extra={"fields": {"version": model.version}})
            return model

    async def _obtain(self, version: str) -> LoadedModel:
        model = self._loaded.get(version)
        if model is None:
            task = self._loading.get(version)
            if task is None:
                if version not in await self.versions():
                    raise NotFound(f"model version {version!r} is not in the models directory")
                files = await asyncio.to_thread(fingerprint, self.models_dir / version)
                failed = self._failed.get(version)
                if failed is not None and failed[0] == files:  # not worth another load until its files change
                    raise FailedPrecondition(failed[1])
                task = asyncio.create_task(self._load(version, files))
                self._loading[version] = task
                task.add_done_callback(lambda _: self._loading.pop(version, None))
            model = await asyncio.shield(task)  # a caller giving up does not abandon a load others wait for
        self._loaded[version] = model
        self._loaded.move_to_end(version)
        for old in [v for v, m in self._loaded.items() if m is not self.current and m is not model]:
            if len(self._loaded) <= self.keep:
                break
            del self._loaded[old]  # requests still running on it keep it alive until they finish
        return model

    async def _load(self, version: str, files: Fingerprint) -> LoadedModel:
        try:
            model = await asyncio.to_thread(self._loader, self.models_dir / version)
        except Exception as error:  # a bad file of any kind fails the version, never the request
            metrics.MODEL_LOADS.labels("failed").inc()
            reason = str(error).replace(str(self.models_dir), "MODELS_DIR")
            log.warning("model version not loaded", extra={"fields": {"version": version, "reason": reason}})
            self._failed[version] = (files, f"model version {version!r} cannot be served: {reason}")
            raise FailedPrecondition(self._failed[version][1]) from error
        metrics.MODEL_LOADS.labels("loaded").inc()
        self._failed.pop(version, None)
        return model

    # -- following the models directory ---------------------------------------------------

    async def load_initial(self) -> None:
        """At start: the pinned version, or the serving one, else the newest that loads and the gate
        did not reject (an older one rather than none)."""
        if self.pinned:
            wanted = [self.pinned] if self.pinned in await self.versions() else []
        else:
            serving = await asyncio.to_thread(serving_version, self.models_dir)
            servable = await asyncio.to_thread(servable_versions, self.models_dir)
            wanted = ([serving] if serving else []) + [v for v in servable[::-1] if v != serving]
            self._followed = serving  # what the watcher follows from here: it must not undo a later rollback
        for version in wanted:
            try:
                await self.reload(version)
                return
            except (FailedPrecondition, NotFound) as error:
                self._problem = error.message
        if not wanted:
            self._problem = self._missing()

    def start_watching(self, interval: float) -> None:
        if interval > 0 and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(interval), name="ranker-model-watcher")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._loading.values()):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception as error:  # the watcher must outlive a bad poll (a vanished directory...)
                log.warning("model watcher poll failed", extra={"fields": {"error": type(error).__name__}})

    async def check(self) -> None:
        """One poll: swap in the version to follow when it is new (or its files changed since it failed)."""
        if self.pinned:
            target = self.pinned if self.pinned in await self.versions() else ""
        else:
            target = await asyncio.to_thread(serving_version, self.models_dir)
        if not target:
            if self.current is None:
                self._problem = self._missing()
            return
        moved, self._followed = target != self._followed, target
        if self.current is not None and self.current.version == target:
            return
        # a version tried before is not tried again until its files change, or until the pointer
        # moves to it again (an operator's ReloadModel rollback stands until then)
        if not moved and self._attempted.get(target) == await asyncio.to_thread(fingerprint, self.models_dir / target):
            return
        try:
            await self.reload(target)
        except (FailedPrecondition, NotFound) as error:
            if self.current is None:
                self._problem = error.message

    def _missing(self) -> str:
        if self.pinned:
            return f"model version {self.pinned!r} is not in the models directory yet"
        return "no model version in the models directory yet"
