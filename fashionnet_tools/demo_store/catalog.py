"""The demo store's product catalog: seeded products with true attribute labels and shop-like text.

Titles and descriptions name the product's attributes with the same words the ``query`` spider
searches for (``settings.search_query``), so search results act as weak labels. A seeded share of
products (:data:`NOISE_RATE`) has one attribute word wrong or missing, as in a real shop, so those
weak labels are noisy while the ground truth stays exact.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from pipeline.settings import Settings, get_settings

NOISE_RATE = 0.08
CURRENCY = "EUR"
CATEGORY = "Women > Tops"
ATTRIBUTES = ("pattern", "fabric", "style", "shape")

# Filler sentences; none of them contains a taxonomy word or a search-query word.
_FILLERS = (
    "Regular fit.",
    "Machine washable at 30 degrees.",
    "Easy to pair with jeans or a skirt.",
    "The model is 176 cm tall and wears size S.",
    "Crew neck.",
    "Relaxed cut with a straight hem.",
    "Made in Portugal.",
    "A wardrobe favourite.",
)
_GARMENTS = ("Top", "Blouse", "Tee", "Shirt")


@dataclass(frozen=True)
class DemoProduct:
    """One product: public shop fields plus its true labels (kept out of the served catalog)."""

    sku: str
    title: str
    description: str
    price: float
    currency: str
    category: str
    image: str
    pattern: str
    fabric: str
    style: str
    shape: str
    # Which attribute's word is wrong/missing in the text ("" when the text is faithful).
    noise: str = field(default="")

    def public(self) -> dict[str, object]:
        """The fields the shop shows; never the labels or the noise marker."""
        data = asdict(self)
        return {k: data[k] for k in ("sku", "title", "description", "price", "currency", "category", "image")}

    def labels(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in ATTRIBUTES}


def attribute_word(settings: Settings, class_name: str) -> str:
    """The words a shop writes for a class: exactly its search query (e.g. 'long sleeve')."""
    return settings.search_query(class_name)


def _text(words: dict[str, str | None], garment: str, filler: str) -> tuple[str, str]:
    """Title and description from the (possibly noisy) attribute words; None means omitted."""
    lead = " ".join(w.title() for w in (words["pattern"], words["fabric"], words["style"]) if w)
    title = f"{lead} {garment}".strip()
    if words["shape"]:
        title += f", {words['shape'].title()}"
    parts = []
    if words["pattern"] or words["fabric"]:
        parts.append(" ".join(w for w in (words["pattern"], words["fabric"]) if w).capitalize() + f" {garment.lower()}")
    else:
        parts.append(f"A {garment.lower()}")
    if words["style"]:
        parts.append(f"for {words['style']} occasions")
    if words["shape"]:
        parts.append(f"with a {words['shape']} cut")
    return title, " ".join(parts) + ". " + filler


def _noisy_words(
    labels: dict[str, str], settings: Settings, rng: random.Random, noisy: bool
) -> tuple[dict[str, str | None], str]:
    words: dict[str, str | None] = {a: attribute_word(settings, c) for a, c in labels.items()}
    if not noisy:
        return words, ""
    attribute = rng.choice(ATTRIBUTES)
    if rng.random() < 0.5:
        words[attribute] = None
    else:
        others = [c for c in settings.taxonomy.classes(attribute) if c != labels[attribute]]
        words[attribute] = attribute_word(settings, rng.choice(others))
    return words, attribute


def generate_catalog(n_products: int, seed: int, settings: Settings | None = None) -> list[DemoProduct]:
    """``n_products`` products, each attribute drawn uniformly and independently; deterministic per seed.

    ``settings`` (read here when not given) names the taxonomy's classes and their search words."""
    if n_products < 0:
        raise ValueError(f"n_products must be >= 0, got {n_products}")
    settings = settings if settings is not None else get_settings()
    missing = [a for a in ATTRIBUTES if a not in settings.taxonomy.attributes]
    if missing:
        raise ValueError(f"the demo store draws {ATTRIBUTES}; the taxonomy lacks {missing}")
    rng = random.Random(seed)
    noisy_indices = set(rng.sample(range(n_products), round(n_products * NOISE_RATE)))
    products = []
    for index in range(n_products):
        labels = {a: rng.choice(settings.taxonomy.classes(a)) for a in ATTRIBUTES}
        words, noise = _noisy_words(labels, settings, rng, index in noisy_indices)
        title, description = _text(words, rng.choice(_GARMENTS), rng.choice(_FILLERS))
        sku = f"DS{seed % 1000:03d}-{index:05d}"
        products.append(
            DemoProduct(
                sku=sku,
                title=title,
                description=description,
                price=round(rng.uniform(9.0, 89.0), 0) - 0.01,
                currency=CURRENCY,
                category=CATEGORY,
                image=f"{sku.lower()}.jpg",
                noise=noise,
                **labels,
            )
        )
    return products
