"""Where consent is decided for a request: the one place that turns who asks (a `Requester`, as the
profile service described them) into what this request may use (an `Allowed`). Recommend, Search
and the explanations read only an `Allowed`; the adapters only translate.

- **Personalization** off (the user said no), an anonymous visitor, or a profile that did not
  answer: nothing of the history is used: no steps, no purchases, no interests, and bundles are
  built only around what the request itself names (the page's item, the cart).
- **Sensitive categories** (bundlerec.privacy): unless the user allowed them (which only counts
  with personalization), nothing in a sensitive category is used as evidence: not as the item
  bundles are built around, not as a reason, not as an interest named in an explanation.
The profile service applies the same two rules to what it stores and returns; this is the
gateway's own check, so a page never depends on another service having done it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bundlerec.gateway.model import HistoryStep, Requester
from bundlerec.privacy import SensitiveCategories


@dataclass(frozen=True, slots=True)
class Allowed:
    """What one request may use of who asks."""

    key: str  # the user id, or the session id of an anonymous visitor
    anonymous: bool
    personalized: bool
    declined: bool  # the profile service answered: no personalization consent
    history: tuple[HistoryStep, ...]  # newest last; () unless personalized
    purchased: frozenset[str]  # () unless personalized
    affinities: tuple[tuple[str, float], ...]  # (category path, score), strongest first; () unless personalized
    sensitive_allowed: bool
    sensitive: SensitiveCategories

    def evidence(self, category: str) -> bool:
        """Whether something of this category may be used as evidence or named for this request."""
        return self.sensitive_allowed or category not in self.sensitive

    @property
    def keeps_impressions(self) -> bool:
        """Whether what this requester was shown may be remembered (to rotate bundles they ignore):
        for a consenting user and for an anonymous visitor (by session), never for a user who
        declined personalization (their impressions are erased instead)."""
        return self.personalized or self.anonymous

    def history_anchor(self) -> str:
        """The newest item of the history that may be used as evidence ("" when none): an event
        without a category could be a sensitive item, so it is never one."""
        for step in reversed(self.history):
            if not step.is_bundle and step.category != "" and self.evidence(step.category):
                return step.target_id
        return ""


class ConsentPolicy:
    def __init__(self, sensitive: SensitiveCategories, history_length: int) -> None:
        self.sensitive = sensitive
        self.history_length = history_length

    def allowed(self, requester: Requester, *, answered: bool) -> Allowed:
        """`answered`: the requester is the profile service's answer (not the fallback for a
        profile that failed, nor an anonymous visitor)."""
        personal = requester.personalized
        return Allowed(
            key=requester.user_id,
            anonymous=requester.anonymous,
            personalized=personal,
            declined=answered and not personal,
            history=requester.history[-self.history_length :] if personal else (),
            purchased=requester.purchased if personal else frozenset(),
            affinities=requester.affinities if personal else (),
            sensitive_allowed=personal and requester.sensitive_allowed,
            sensitive=self.sensitive,
        )

    def unknown(self, key: str, anonymous: bool) -> Allowed:
        """An anonymous visitor, or a user whose profile could not be read: nothing personal."""
        return self.allowed(Requester(key, anonymous=anonymous), answered=False)


__all__ = ["Allowed", "ConsentPolicy"]
