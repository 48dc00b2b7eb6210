"""Recommendation quality: held-out items of synthetic users, per score (matches, weighted, embedding,
hybrid), on the demo store's pictures and on real photos.

Protocol (the same for both datasets). Every image has a ground-truth *style* label that no network
saw: on the demo data the true (pattern, fabric, style, shape) of the drawn garment, on the real photos
(``../shared/data/clothing-dataset-small``, 3,781 JPEGs) the category of ``labels.csv`` (t-shirt, dress,
pants, ...). A synthetic user owns items of one style (or of two styles: the "two-style" users). Of
each of the user's styles, ``--profile`` random items are the user's photos (the style profile) and
``--held-out`` other random items of the same style are hidden in the repository (two-style users:
half as many of each style, the profile rounded up: 3 + 3 photos, 5 + 5 held out). The repository the
user is scored against is the held-out items plus every item of *other* styles (the remaining items of
the user's own styles are left out, so the held-out items are exactly the relevant ones). Each score
ranks it with the production code (``pipeline.recommend.scoring.components`` and ``select``, the settings'
weights, ``matches`` dropping items that share no attribute, MMR over a pool of 200), and over the top
``k``:

- recall@k: held-out items in the top k / held-out items;
- nDCG@k: binary gains (1 for a held-out item), DCG = sum gain / log2(rank + 1), divided by the DCG of
  the ideal list (min(k, held-out) hits first);
- ILD@k (intra-list diversity): the mean of 1 - cosine over all pairs of the k items, on the
  embeddings of the run (so MMR, which diversifies on the same embeddings, raises it by design);
- coverage@k (two-style users): the share of the user's styles with at least one item in the top k.

Every mean is over the users; "hybrid - matches" is the paired mean difference of nDCG@k with the
number of users where the hybrid is better / worse. Each protocol runs at MMR lambda 1 (relevance
only) and at the settings' lambda.

The hybrid's weights (settings ``recommend.hybrid_weights``) were chosen among four candidates
(embedding/weighted/matches = 0.4/0.4/0.2, 0.6/0.3/0.1, 0.5/0.25/0.25, 0.7/0.2/0.1) by nDCG@10 on demo
users drawn with seeds 1 and 2; the reported users are drawn with ``--seed`` 11 and 12, and the real
photos played no part in the choice.

Fashion vectors: the published networks of ``--store`` (default the demo's ``var/store``) through
``models.inference.FashionVectorizer`` give every image its class probabilities and the production
embedding (``embedding_source``, e.g. the four networks' Dense-512 layers). The demo's networks are
trained on the demo store's drawings, so on real photos their attributes are out of domain; the run
therefore also scores with a second embedding, ImageNet EfficientNet-Lite0 global-average-pooled
features at 224 px (``models.network.build_backbone``, weights converted offline), L2-normalised,
keeping the networks' probabilities. Nothing is trained. Vectors are cached under ``--cache``.

Demo data: ``--demo-styles`` random style tuples, ``--per-style`` garments drawn for each with
``fashionnet_tools.demo_store.draw.draw_garment`` (new random seeds: never seen in training), plus a
600-product demo catalog (seed 99) as further distractors.

    python -m bench.recommend_quality [--datasets demo real] [--users 100] [--k 10] [--out results.json]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "clothing-dataset-small"
BATCH = 64


# -- data -----------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """Images with their ground-truth style labels."""

    name: str
    ids: list[str]
    labels: list[str]
    load: callable  # index -> image bytes


def demo_pool(styles: int, per_style: int, catalog: int, seed: int = 5) -> Pool:
    from fashionnet_tools.demo_store.catalog import ATTRIBUTES, generate_catalog
    from fashionnet_tools.demo_store.draw import draw_garment
    from pipeline.settings import get_settings

    taxonomy = get_settings().taxonomy
    rng = random.Random(seed)
    tuples: list[tuple[str, ...]] = []
    while len(tuples) < styles:
        style = tuple(rng.choice(taxonomy.classes(a)) for a in ATTRIBUTES)
        if style not in tuples:
            tuples.append(style)
    specs = [(style, f"style{index:02d}-{n:02d}") for index, style in enumerate(tuples) for n in range(per_style)]
    specs += [((p.pattern, p.fabric, p.style, p.shape), p.sku) for p in generate_catalog(catalog, seed=99)]

    def load(index: int) -> bytes:
        style, name = specs[index]
        picture = draw_garment(*style, random.Random(f"quality:{name}"))
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=92)
        return buffer.getvalue()

    return Pool("demo", [name for _, name in specs], ["/".join(style) for style, _ in specs], load)


def real_pool() -> Pool:
    with open(REAL_PHOTOS / "labels.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle)]
    return Pool(
        "real",
        [row["path"] for row in rows],
        [row["category"] for row in rows],
        lambda index: (REAL_PHOTOS / rows[index]["path"]).read_bytes(),
    )


# -- vectors --------------------------------------------------------------------------------------------
def imagenet_embedder(size: int = 224):
    import keras

    from models.network import BackbonePreprocess, build_backbone

    inputs = keras.Input((size, size, 3))
    features = build_backbone("efficientnet_lite0", "imagenet", size)(BackbonePreprocess("efficientnet_lite0")(inputs))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(features))


def vectors(pool: Pool, store_uri: str, cache_dir: Path) -> dict[str, np.ndarray]:
    """probs per attribute, the production embedding and the ImageNet embedding of every image (cached)."""
    from models.data import decode_image
    from models.inference import FashionVectorizer
    from pipeline.settings import get_settings
    from pipeline.storage import ObjectStore

    store = ObjectStore(store_uri)
    attributes = get_settings().taxonomy.names
    vectorizer = FashionVectorizer.from_registry(store, attributes)
    fingerprint = hashlib.sha256(json.dumps([pool.ids, pool.labels, vectorizer.versions, "v1"]).encode()).hexdigest()[
        :16
    ]
    path = cache_dir / f"{pool.name}-{fingerprint}.npz"
    if path.exists():
        print(f"  vectors from {path}", flush=True)
        return dict(np.load(path))
    embedder = imagenet_embedder()
    probs: dict[str, list[np.ndarray]] = {a: [] for a in attributes}
    production, imagenet = [], []
    started = time.perf_counter()
    for start in range(0, len(pool.ids), BATCH):
        images = [pool.load(i) for i in range(start, min(start + BATCH, len(pool.ids)))]
        out, embedding = vectorizer.outputs([vectorizer.decode(data) for data in images])
        for attribute in attributes:
            probs[attribute].append(out[attribute].astype(np.float32))
        production.append(embedding.astype(np.float32))
        pooled = embedder.predict(np.stack([decode_image(d, 224) for d in images]).astype("float32"), verbose=0)
        imagenet.append((pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32))
        done = min(start + BATCH, len(pool.ids))
        print(
            f"  {pool.name}: {done}/{len(pool.ids)} images vectorised ({time.perf_counter() - started:.0f}s)",
            flush=True,
        )
    result = {f"probs_{a}": np.concatenate(probs[a]) for a in attributes}
    result.update(
        {
            "embedding_production": np.concatenate(production),
            "embedding_imagenet": np.concatenate(imagenet),
            "embedding_source": np.array(vectorizer.embedding_source),
        }
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, **result)
    return result


def fashion_matrix(vecs: dict[str, np.ndarray], embedding: str):
    from pipeline.recommend.scoring import FashionMatrix
    from pipeline.settings import get_settings

    attributes = tuple(get_settings().taxonomy.names)
    probs = tuple(vecs[f"probs_{a}"] for a in attributes)
    codes = np.stack([p.argmax(axis=1) for p in probs], axis=1).astype(np.int16)
    top = np.stack([p.max(axis=1) for p in probs], axis=1).astype(np.float32)
    return FashionMatrix(attributes, codes, top, probs, vecs[f"embedding_{embedding}"])


# -- users and metrics ---------------------------------------------------------------------------------
@dataclass
class User:
    styles: tuple[str, ...]
    profile: np.ndarray
    held_out: np.ndarray
    candidates: np.ndarray  # boolean mask


def make_users(labels: list[str], count: int, n_styles: int, profile: int, held_out: int, seed: int) -> list[User]:
    """``count`` users of ``n_styles`` style(s) each; styles with too few items are never drawn."""
    rng = np.random.default_rng(seed)
    labels_array = np.array(labels)
    by_style = {s: np.flatnonzero(labels_array == s) for s in sorted(set(labels))}
    usable = [s for s, rows in by_style.items() if len(rows) >= profile + held_out]
    users = []
    for _ in range(count):
        styles = tuple(rng.choice(usable, n_styles, replace=False))
        own, hidden = [], []
        for style in styles:
            rows = rng.choice(by_style[style], profile + held_out, replace=False)
            own.append(rows[:profile])
            hidden.append(rows[profile:])
        hidden_rows = np.concatenate(hidden)
        candidates = ~np.isin(labels_array, styles)
        candidates[hidden_rows] = True
        users.append(User(styles, np.concatenate(own), hidden_rows, candidates))
    return users


def ndcg(hits: np.ndarray, relevant: int, k: int) -> float:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(k, relevant)].sum()
    return float((hits[:k] * discounts[: len(hits[:k])]).sum() / ideal) if ideal else 0.0


def intra_list_diversity(embedding: np.ndarray) -> float:
    if len(embedding) < 2:
        return 0.0
    similarity = embedding @ embedding.T
    upper = np.triu_indices(len(embedding), 1)
    return float(np.mean(1.0 - similarity[upper]))


def evaluate(
    items, labels: list[str], users: list[User], kind: str, k: int, lam: float, settings
) -> dict[str, np.ndarray]:
    from pipeline.recommend import scoring

    ids = [f"{i:06d}" for i in range(items.n)]
    config = settings.recommend
    recall, gains, diversity, coverage = [], [], [], []
    labels_array = np.array(labels)
    for user in users:
        profile = items.take(user.profile)
        parts = scoring.components(items, profile, config.attribute_weights, need=[kind])
        candidates = user.candidates & (parts.matches > 0) if kind == "matches" else user.candidates
        rule = scoring.SelectionRule(kind, k, lam, config.mmr_pool, config.hybrid_weights)
        chosen = scoring.select(rule, items, parts, ids, candidates)
        hits = np.isin(chosen.rows, user.held_out).astype(float)
        recall.append(hits.sum() / len(user.held_out))
        gains.append(ndcg(hits, len(user.held_out), k))
        diversity.append(intra_list_diversity(items.embedding[chosen.rows]))
        coverage.append(np.mean([np.any(labels_array[chosen.rows] == s) for s in user.styles]))
    return {
        "recall": np.array(recall),
        "ndcg": np.array(gains),
        "ild": np.array(diversity),
        "coverage": np.array(coverage),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["demo", "real"], choices=["demo", "real"])
    parser.add_argument(
        "--store",
        default=f"file://{REPO_ROOT / 'var' / 'store'}",
        help="the store whose published networks vectorise the images",
    )
    parser.add_argument("--users", type=int, default=100, help="users per protocol (one-style, two-style)")
    parser.add_argument("--profile", type=int, default=5, help="profile photos per style (two-style: half)")
    parser.add_argument("--held-out", type=int, default=10, help="held-out items per style (two-style: half)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--demo-styles", type=int, default=30)
    parser.add_argument("--per-style", type=int, default=16)
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "var" / "bench" / "recommend_quality")
    parser.add_argument(
        "--seed",
        type=int,
        default=11,
        help="users of seed and seed + 1 (the hybrid weights were chosen on seeds 1 and 2)",
    )
    parser.add_argument("--out", type=Path, help="write every number as JSON here")
    args = parser.parse_args(argv)

    from pipeline.recommend import scoring
    from pipeline.settings import get_settings

    settings = get_settings()
    default_lambda = float(settings.recommend.mmr_lambda)
    lambdas = sorted({1.0, default_lambda}, reverse=True)
    results = []
    for dataset in args.datasets:
        if dataset == "real" and not REAL_PHOTOS.exists():
            print(f"skipping real photos: {REAL_PHOTOS} is absent")
            continue
        started = time.perf_counter()
        pool = demo_pool(args.demo_styles, args.per_style, 600) if dataset == "demo" else real_pool()
        vecs = vectors(pool, args.store, args.cache)
        print(
            f"\n== {dataset}: {len(pool.ids)} images, {len(set(pool.labels))} styles; vectors in "
            f"{time.perf_counter() - started:.0f}s; production embedding {vecs['embedding_source']} =="
        )
        protocols = [
            ("one-style", make_users(pool.labels, args.users, 1, args.profile, args.held_out, args.seed)),
            (
                "two-style",
                make_users(
                    pool.labels,
                    args.users,
                    2,
                    max(1, (args.profile + 1) // 2),
                    max(1, args.held_out // 2),
                    args.seed + 1,
                ),
            ),
        ]
        for embedding in ("production", "imagenet"):
            items = fashion_matrix(vecs, embedding)
            for protocol, users in protocols:
                print(
                    f"\n{dataset} / embedding {embedding} / {protocol} users ({len(users)}; profile "
                    f"{len(users[0].profile)}, held out {len(users[0].held_out)}, "
                    f"~{int(np.mean([u.candidates.sum() for u in users]))} candidates each), k={args.k}"
                )
                chance = float(np.mean([args.k / u.candidates.sum() for u in users]))
                print(f"  (a random list would have recall@{args.k} {chance:.4f})")
                print(f"  {'score':9s} {'lambda':>6s} {'recall':>7s} {'nDCG':>7s} {'ILD':>7s} {'cover':>7s}")
                per_kind = {}
                for lam in lambdas:
                    for kind in scoring.SCORE_KINDS:
                        metrics = evaluate(items, pool.labels, users, kind, args.k, lam, settings)
                        per_kind[(kind, lam)] = metrics
                        row = {
                            "dataset": dataset,
                            "embedding": embedding,
                            "protocol": protocol,
                            "score": kind,
                            "mmr_lambda": lam,
                            "users": len(users),
                            "k": args.k,
                            **{f"{name}@k": float(values.mean()) for name, values in metrics.items()},
                        }
                        results.append(row)
                        print(
                            f"  {kind:9s} {lam:6.2f} {row['recall@k']:7.3f} {row['ndcg@k']:7.3f} "
                            f"{row['ild@k']:7.3f} {row['coverage@k']:7.3f}"
                        )
                for lam in lambdas:
                    diff = per_kind[("hybrid", lam)]["ndcg"] - per_kind[("matches", lam)]["ndcg"]
                    stderr = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
                    print(
                        f"  hybrid - matches, nDCG@{args.k}, lambda {lam:.2f}: {diff.mean():+.3f} "
                        f"(+-{stderr:.3f} s.e.; better for {(diff > 0).sum()}, worse for {(diff < 0).sum()} users)"
                    )
                    results.append(
                        {
                            "dataset": dataset,
                            "embedding": embedding,
                            "protocol": protocol,
                            "comparison": "hybrid-matches ndcg",
                            "mmr_lambda": lam,
                            "mean": float(diff.mean()),
                            "stderr": float(stderr),
                            "better": int((diff > 0).sum()),
                            "worse": int((diff < 0).sum()),
                        }
                    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
