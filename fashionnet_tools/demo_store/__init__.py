"""The bundled demo store: a small generated shop served on 127.0.0.1 for offline crawls.

Products are drawn procedurally with known attributes, so the whole pipeline (crawl, curation,
training, recommendations) can run and be checked without the internet. The true labels are kept in
``ground_truth.csv`` next to the site and are never served.
"""
