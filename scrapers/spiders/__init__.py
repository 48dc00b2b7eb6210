"""FashionNet spiders: ``catalog`` (every product of a shop) and ``query`` (search results as weak labels)."""
