"""Curation: a crawl's images validated, hashed and deduplicated into a batch of accepted items
(:mod:`.curate`; the image rules in :mod:`.validate`, duplicates in :mod:`.dedup` through the hash
index of :mod:`.hash_index`)."""
