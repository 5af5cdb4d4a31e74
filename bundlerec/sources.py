"""Where a candidate came from: the vocabulary the candidate service (which finds candidates) and
the gateway (which explains them) share. Values match the APIs' CandidateSource."""

from __future__ import annotations

import enum


class Source(enum.IntEnum):
    VECTOR = 1  # similar to the recent items (text and collaborative vectors)
    CO_OCCURRENCE = 2  # bought or viewed together with the recent items
    POPULARITY = 3  # popular right now
    ANCHOR = 4  # goes with the page's item (its bundle mates, complements)
    BUNDLE_MEMBERSHIP = 5  # a bundle holding a recent item
    TWO_TOWER = 6  # nearest neighbours of the ranker's user vector among the model's collaborative vectors


SOURCES = {s.value: s for s in Source}  # wire value → Source
