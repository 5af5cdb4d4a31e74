"""The rules file: read, checked, and followed while the gateway runs.

Rules come from one TOML file (see rules.example.toml) that merchandisers edit while the gateway
runs. `RulesSource` reloads the file when its bytes change and keeps the last valid rules when an
edit is bad, so a broken save never takes recommendations down; every problem names the file and
the field.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from bundlerec.gateway.rules.schema import Rules, problems

log = logging.getLogger("bundlerec.gateway")


class RulesError(ValueError):
    """The rules file is missing, unreadable or invalid. The message names the file and the fields."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]] | str) -> None:
        self.source = source
        self.problems = [("", problems)] if isinstance(problems, str) else list(problems)
        described = "; ".join(f"{field}: {message}" if field else message for field, message in self.problems)
        super().__init__(f"{source}: {described}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RulesError(str(path), "the rules file does not exist") from None
    except OSError as exc:
        raise RulesError(str(path), f"cannot read the rules file: {exc.strerror or exc}") from None


def parse_rules(data: bytes, source: str) -> Rules:
    """Rules from a TOML document's bytes; `source` names it in errors."""
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RulesError(source, "is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(source, f"is not valid TOML: {exc}") from None
    try:
        return Rules.model_validate(document)
    except ValidationError as exc:
        raise RulesError(source, problems(exc)) from None


def load_rules(path: str | os.PathLike[str]) -> Rules:
    """Rules from a TOML file. Raises RulesError naming the file and the field path."""
    return parse_rules(_read(Path(path)), str(path))


class RulesSource:
    """The rules in force: loaded once at start, reloaded when the file's content changes.

    The start fails on a bad file (the constructor raises RulesError); later a bad edit is logged
    and kept in `last_error` while the previous rules stay in force. Changes are detected by a
    hash of the bytes: a rewrite within one mtime tick, or a copy that keeps the old mtime, is seen.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        self.last_error: RulesError | None = None
        self._digest: bytes | None = None
        if self.path is None:
            self._rules = Rules()
            return
        data = _read(self.path)
        self._rules = parse_rules(data, str(self.path))
        self._digest = hashlib.sha256(data).digest()

    @property
    def current(self) -> Rules:
        """The last valid rules."""
        return self._rules

    def check(self) -> bool:
        """Re-reads the file; True when new rules were swapped in."""
        if self.path is None:
            return False
        try:
            data = _read(self.path)
        except RulesError as exc:
            self._digest = None  # whatever comes back next is parsed, even the content in force
            self._reject(exc)
            return False
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return False
        # Remembered even when the content is bad, so a bad file is reported once, not every check.
        self._digest = digest
        try:
            rules = parse_rules(data, str(self.path))
        except RulesError as exc:
            self._reject(exc)
            return False
        self._rules = rules
        self.last_error = None
        log.info("business rules reloaded from %s", self.path)
        return True

    def _reject(self, error: RulesError) -> None:
        if self.last_error is None or str(self.last_error) != str(error):
            log.warning("business rules not reloaded, the previous ones stay in force: %s", error)
        self.last_error = error

    async def watch(self, interval: float, stop: asyncio.Event) -> None:
        """Calls check() every `interval` seconds until `stop` is set."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                try:
                    await asyncio.to_thread(self.check)
                except Exception:  # a bug in one check must not end reloading for the process's life
                    log.exception("checking the business rules failed")
