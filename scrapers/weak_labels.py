"""Weak labels from a product's own structured data: its material, name and description.

The keyword table lives in ``config/settings.yaml`` (``crawl.weak_labels``): which product fields feed
which attribute, and per attribute and class the keywords that suggest it, plus weaker keywords
(garment words such as "t-shirt") consulted only when no keyword hits, and phrases to ignore
("lace-up" is no lace). Classes are checked against the
taxonomy when the table is loaded, so a typo fails the crawl at start, not silently.

Matching is case- and accent-insensitive on word boundaries: "sleeve" never hits inside "sleeveless",
"algodón" matches the keyword "algodon". For each attribute the fields are read in the configured order
and the first field with any hit decides; hits for two classes in that field (a "cotton and wool" top)
give no label rather than a guess. Every label records its evidence as ``source``:
``material:<the material value>`` or ``name:<keyword>`` / ``description:<keyword>``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.settings import Settings, Taxonomy, get_settings

#: How a product field is named in a label's source.
SOURCE_NAMES = {"title": "name", "material": "material", "description": "description"}
FIELDS = tuple(SOURCE_NAMES)
#: A material value longer than this is cut in its source ("material:<value>").
MAX_EVIDENCE = 80


@dataclass(frozen=True)
class WeakLabel:
    attribute: str
    label: str
    source: str


def fold(text: str) -> str:
    """Lower case without accents ("Algodón" -> "algodon"); letters of other scripts are kept."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def keyword_pattern(keyword: str) -> re.Pattern[str]:
    """A word-bounded pattern; a space or hyphen in the keyword matches a space, a hyphen or nothing."""
    parts = [re.escape(p) for p in re.split(r"[\s\-]+", fold(keyword).strip()) if p]
    if not parts:
        raise ValueError(f"empty weak-label keyword {keyword!r}")
    return re.compile(r"(?<!\w)" + r"[\s\-]*".join(parts) + r"(?!\w)")


Table = dict[str, dict[str, list[tuple[str, re.Pattern[str]]]]]


def _table(raw: Any, taxonomy: Taxonomy, what: str) -> Table:
    """attribute -> class -> [(keyword, pattern)], validated against the taxonomy."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"crawl.weak_labels.{what} must map attribute -> class -> keywords")
    table: Table = {}
    for attribute, classes in raw.items():
        known = taxonomy.classes(str(attribute))  # KeyError names the taxonomy's attributes
        if not isinstance(classes, Mapping):
            raise ValueError(f"crawl.weak_labels.{what}.{attribute} must map class -> keywords")
        for label, keywords in classes.items():
            if label not in known:
                raise ValueError(
                    f"crawl.weak_labels.{what}.{attribute}: {label!r} is not a class of {attribute} {list(known)}"
                )
            if isinstance(keywords, str) or not isinstance(keywords, list):
                raise ValueError(f"crawl.weak_labels.{what}.{attribute}.{label} must be a list of keywords")
            table.setdefault(str(attribute), {})[str(label)] = [(str(k), keyword_pattern(str(k))) for k in keywords]
    return table


class WeakLabeller:
    """Maps a product (a dict with title, description, material, ...) to its weak labels."""

    def __init__(self, config: Mapping[str, Any], taxonomy: Taxonomy) -> None:
        self.keywords = _table(config.get("keywords"), taxonomy, "keywords")
        self.weak_keywords = _table(config.get("weak_keywords"), taxonomy, "weak_keywords")
        self.ignore: dict[str, list[re.Pattern[str]]] = {}
        for attribute, phrases in (config.get("ignore") or {}).items():
            taxonomy.classes(str(attribute))
            self.ignore[str(attribute)] = [keyword_pattern(str(p)) for p in phrases]
        fields = config.get("fields") or {}
        self.fields: dict[str, tuple[str, ...]] = {}
        for attribute, names in fields.items():
            taxonomy.classes(str(attribute))
            unknown = [n for n in names if n not in FIELDS]
            if unknown:
                raise ValueError(f"crawl.weak_labels.fields.{attribute}: unknown fields {unknown}; use {list(FIELDS)}")
            self.fields[str(attribute)] = tuple(names)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> WeakLabeller:
        settings = settings or get_settings()
        return cls(settings.crawl.weak_labels.as_dict(), settings.taxonomy)

    def labels(self, product: Mapping[str, Any]) -> list[WeakLabel]:
        out: list[WeakLabel] = []
        for attribute, names in self.fields.items():
            for name in names:
                value = product.get(name)
                if not isinstance(value, str) or not value.strip():
                    continue
                decided = self._decide(attribute, name, value)
                if decided is not None:
                    if decided:  # a hit without a conflict; a conflict decides "no label"
                        out.append(decided[0])
                    break
        return out

    def _decide(self, attribute: str, field: str, value: str) -> list[WeakLabel] | None:
        """None: no hit in this field. []: conflicting hits. [label]: one class hit."""
        text = fold(value)
        for pattern in self.ignore.get(attribute, []):
            text = pattern.sub(" ", text)
        for table in (self.keywords, self.weak_keywords):
            hits: dict[str, str] = {}
            for label, keywords in table.get(attribute, {}).items():
                for keyword, pattern in keywords:
                    if pattern.search(text):
                        hits.setdefault(label, keyword)
                        break
            if len(hits) > 1:
                return []
            if hits:
                label, keyword = next(iter(hits.items()))
                evidence = " ".join(value.split())[:MAX_EVIDENCE] if field == "material" else keyword
                return [WeakLabel(attribute, label, f"{SOURCE_NAMES[field]}:{evidence}")]
        return None
