"""Who may use the console: the services' auth file format (bundlerec/runtime/auth.py), with the
console's own two permissions, or, without a file, one token made at start and printed.

    [[caller]]
    name = "merchandising"
    token_sha256 = ["<sha256 hex of the token>"]
    allow = ["console/view"]              # the pages; "console/models" also promotes and rolls back

A browser signs in once (the token, typed or from the printed address) and then carries it in an
HttpOnly, SameSite=Strict cookie; scripts send `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from bundlerec.runtime.auth import AuthPolicy, Caller

VIEW = "console/view"
MODELS = "console/models"
RULES = ("*", "console/*", VIEW, MODELS)
COOKIE = "bundlerec_console"


@dataclass(frozen=True)
class Operator:
    name: str
    may_change_models: bool


class Access:
    def __init__(self, policy: AuthPolicy) -> None:
        self.policy = policy

    @classmethod
    def from_file(cls, path: str) -> Access:
        """Reads and checks an auth file; a bad one stops the start, naming the problem."""
        policy = AuthPolicy.parse(path, "console auth file")
        for index, caller in enumerate(policy.caller):
            if not caller.token_sha256:
                raise SystemExit(f"console auth file {path}: caller.{index} ({caller.name}) has no token_sha256")
            for rule in caller.allow:
                if rule not in RULES:
                    raise SystemExit(
                        f"console auth file {path}: caller.{index}.allow: {rule!r} is not one of {', '.join(RULES)}"
                    )
        names = [c.name for c in policy.caller]
        if len(set(names)) != len(names):
            raise SystemExit(f"console auth file {path}: caller names must be unique")
        return cls(policy)

    @classmethod
    def one_off(cls) -> tuple[Access, str]:
        """A fresh random token allowed everything, for one machine (the demo): printed, never stored."""
        token = secrets.token_urlsafe(24)
        digest = hashlib.sha256(token.encode()).hexdigest()
        return cls(AuthPolicy(caller=[Caller(name="operator", token_sha256=[digest], allow=["*"])])), token

    def operator(self, token: str) -> Operator | None:
        if not token or len(token) > 512:
            return None
        caller = self.policy.by_token(token)
        if caller is None:
            return None
        if not (caller.allows(VIEW) or caller.allows(MODELS)):
            return None
        return Operator(caller.name, caller.allows(MODELS))
