import io

import pyarrow as pa
import pytest
from PIL import Image

from pipeline.curation.curate import DUPLICATES_SCHEMA
from pipeline.review.queue import PREDICTIONS_SCHEMA, Decision, enqueue, record_decisions
from pipeline.review.view import batch_summaries, batch_view, image_keys, sort_items
from pipeline.store_layout import review_predictions_key
from tests.pipeline.review.test_review import ITEMS, START, WEAK, write_batch

COLOURS = {
    "i1": (200, 40, 40),
    "i2": (40, 160, 60),
    "i3": (40, 60, 200),
    "i4": (220, 200, 40),
    "i5": (120, 40, 160),
    "d1": (200, 40, 40),
    "d2": (190, 50, 45),
    "d3": (40, 60, 190),
}
PNGS = {"i2", "d2"}
# dropped duplicates of this batch's items (d1, d2 of i1; d3 of i3) and one of an earlier batch's item
DUPLICATES = [
    {"item_id": "d1", "kept_item_id": "i1", "kind": "exact", "distance": 0, "kept_batch_id": "b1"},
    {"item_id": "d2", "kept_item_id": "i1", "kind": "near", "distance": 3, "kept_batch_id": "b1"},
    {"item_id": "d3", "kept_item_id": "i3", "kind": "near", "distance": 5, "kept_batch_id": "b1"},
    {"item_id": "d9", "kept_item_id": "old1", "kind": "exact", "distance": 0, "kept_batch_id": "b0"},
]
PREDICTIONS = [  # (item, attribute, predicted, confidence)
    ("i1", "pattern", "striped", 0.9),
    ("i1", "shape", "full-sleeve", 0.8),  # agrees: min 0.8
    ("i2", "pattern", "floral", 0.4),  # weak label is a conflict (null): no disagreement
    ("i3", "pattern", "solid", 0.95),  # weak floral: disagrees at 0.95
    ("i4", "pattern", "striped", 0.6),
    ("i4", "style", "casual", 0.3),  # weak solid: disagrees at 0.6
    ("i4", "colour", "red", 0.01),  # not in the taxonomy: ignored
]


def image_bytes(colour: tuple[int, int, int], fmt: str = "JPEG", size: tuple[int, int] = (96, 120)) -> bytes:
    """A small real image: a coloured garment-ish block on white with a stripe."""
    image = Image.new("RGB", size, (250, 250, 250))
    image.paste(colour, (16, 12, size[0] - 16, size[1] - 12))
    image.paste((30, 30, 30), (16, size[1] // 2 - 4, size[0] - 16, size[1] // 2 + 4))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_review_batch(store, batch_id: str = "b1", crawl_id: str = "c1", predictions: bool = True) -> None:
    """A queued batch i1..i5 with real images, dropped duplicates d1..d3 and (optionally) predictions."""
    write_batch(store, batch_id, crawl_id, ITEMS, WEAK)
    products = [
        {"item_id": item_id, "image_key": f"images/full/{item_id}.jpg", "crawled_at": START}
        for item_id in sorted(COLOURS)
    ]
    store.write_parquet(
        f"crawls/{crawl_id}/products.parquet",
        pa.Table.from_pylist(
            products,
            schema=pa.schema(
                [("item_id", pa.string()), ("image_key", pa.string()), ("crawled_at", pa.timestamp("us", tz="UTC"))]
            ),
        ),
    )
    for item_id, colour in COLOURS.items():  # the store keeps JPEGs; a PNG or two shows the type is sniffed
        store.put_bytes(f"images/full/{item_id}.jpg", image_bytes(colour, "PNG" if item_id in PNGS else "JPEG"))
    store.write_parquet(
        f"curation/{batch_id}/duplicates.parquet", pa.Table.from_pylist(DUPLICATES, schema=DUPLICATES_SCHEMA)
    )
    enqueue(store, batch_id)
    if predictions:
        write_predictions(store, batch_id, PREDICTIONS)


def write_predictions(store, batch_id: str, rows: list[tuple[str, str, str, float]]) -> None:
    store.write_parquet(
        review_predictions_key(batch_id),
        pa.Table.from_pylist(
            [
                {"item_id": i, "attribute": a, "predicted_label": p, "confidence": c, "model_version": "v1"}
                for i, a, p, c in rows
            ],
            schema=PREDICTIONS_SCHEMA,
        ),
    )


def ids(view) -> list[str]:
    return [item.item_id for item in view.items]


def test_items_carry_labels_state_cluster_and_predictions(file_store):
    make_review_batch(file_store)
    record_decisions(
        file_store,
        "b1",
        [Decision("i1", "relabel", "pattern", "graphic"), Decision("i2", "reject"), Decision("i5", "skip")],
        reviewer="alice",
    )
    view = batch_view(file_store, "b1")
    assert ids(view) == ["i1", "i2", "i3", "i4", "i5"] and view.has_predictions
    assert view.attributes["shape"] == ["full-sleeve", "half-sleeve", "sleeveless"]
    items = {item.item_id: item for item in view.items}

    i1 = items["i1"]
    assert i1.image_key == "images/full/i1.jpg" and i1.title == "Title i1" and i1.width == 100
    assert (i1.status, i1.last_decision) == ("accept", "relabel")
    assert (i1.weak["pattern"].label, i1.weak["pattern"].source) == ("striped", "weak:query:striped")
    assert (i1.labels["pattern"].label, i1.labels["pattern"].source) == ("graphic", "review:alice")
    assert [(m.item_id, m.image_key, m.kind, m.distance) for m in i1.members] == [
        ("d1", "images/full/d1.jpg", "exact", 0),
        ("d2", "images/full/d2.jpg", "near", 3),
    ]
    assert i1.predictions["shape"].label == "full-sleeve" and i1.min_confidence == 0.8
    assert i1.disagreements == []
    assert (items["i2"].status, items["i5"].status, items["i5"].last_decision) == ("reject", "pending", "skip")
    assert items["i2"].weak["pattern"].source.startswith("conflict:") and items["i2"].disagreements == []
    assert items["i3"].disagreements == ["pattern"] and items["i3"].disagreement_confidence == 0.95
    assert set(items["i4"].predictions) == {"pattern", "style"}  # colour is not in the taxonomy
    assert items["i5"].predictions == {} and items["i5"].min_confidence is None and items["i5"].members == []

    data = view.to_json()
    assert data["counts"] == {"items": 5, "pending": 3, "accept": 1, "reject": 1}
    assert data["items"][0]["labels"]["pattern"] == {"label": "graphic", "source": "review:alice"}
    assert data["items"][0]["members"][0]["item_id"] == "d1"
    assert data["items"][2]["disagreements"] == ["pattern"]


def test_sort_orders(file_store):
    make_review_batch(file_store)
    assert ids(batch_view(file_store, "b1", "queue")) == ["i1", "i2", "i3", "i4", "i5"]
    assert ids(batch_view(file_store, "b1", "confidence")) == ["i4", "i2", "i1", "i3", "i5"]
    assert ids(batch_view(file_store, "b1", "disagreement")) == ["i3", "i4", "i1", "i2", "i5"]
    record_decisions(
        file_store, "b1", [Decision("i4", "accept"), Decision("i3", "reject"), Decision("i2", "skip")], reviewer="alice"
    )
    assert ids(batch_view(file_store, "b1", "confidence", pending_first=True)) == ["i2", "i1", "i5", "i4", "i3"]
    assert ids(batch_view(file_store, "b1", "disagreement", pending_first=True)) == ["i1", "i2", "i5", "i3", "i4"]
    with pytest.raises(ValueError, match="unknown sort 'random'"):
        batch_view(file_store, "b1", "random")


def test_ties_break_by_item_id(file_store):
    make_review_batch(file_store, predictions=False)
    write_predictions(file_store, "b1", [(i, "pattern", "graphic", 0.5) for i in ("i5", "i3", "i1", "i2")])
    view = batch_view(file_store, "b1", "confidence")
    assert ids(view) == ["i1", "i2", "i3", "i5", "i4"]
    assert ids(batch_view(file_store, "b1", "disagreement")) == ["i1", "i3", "i2", "i5", "i4"]
    assert ids(view) == [item.item_id for item in sort_items(list(reversed(view.items)), "confidence")]


def test_without_predictions_or_duplicates(file_store):
    write_batch(file_store, "b1", "c1", ITEMS, WEAK)
    enqueue(file_store, "b1")
    view = batch_view(file_store, "b1", "confidence")
    assert not view.has_predictions and ids(view) == ["i1", "i2", "i3", "i4", "i5"]
    assert all(item.members == [] and item.predictions == {} for item in view.items)


def test_image_keys_cover_the_queue_and_its_clusters_only(file_store):
    make_review_batch(file_store)
    assert image_keys(file_store, "b1") == {
        **{i: f"images/full/{i}.jpg" for i in ITEMS},
        "d1": "images/full/d1.jpg",
        "d2": "images/full/d2.jpg",
        "d3": "images/full/d3.jpg",
    }  # d9 duplicates an earlier batch's item: not on this page


def test_batch_summaries_count_review_states(file_store):
    make_review_batch(file_store)
    make_review_batch(file_store, "b2", "c2", predictions=False)
    record_decisions(
        file_store,
        "b2",
        [
            Decision("i1", "reject"),
            Decision("i2", "accept"),
            Decision("i2", "undo"),
            Decision("i3", "relabel", "style", "formal"),
        ],
        reviewer="alice",
    )
    assert batch_summaries(file_store) == [
        {"batch_id": "b1", "items": 5, "pending": 5, "accept": 0, "reject": 0},
        {"batch_id": "b2", "items": 5, "pending": 3, "accept": 1, "reject": 1},
    ]
