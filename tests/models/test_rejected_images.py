"""Issue 13: every image a training run cannot use is listed by key and reason (not only counted)."""

from __future__ import annotations

import numpy as np
from fashion_synthetic import write_dataset

from models.data import MISSING, labelled_items, load_arrays

CLASSES = ("checkered", "striped", "floral", "graphic", "solid")


def test_undecodable_and_missing_images_are_listed_with_their_reason(file_store):
    write_dataset(file_store, per_class=5, kinds=("striped", "solid"))
    frame = labelled_items(file_store, "pattern", CLASSES)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    garbage, missing = train.loc[0], train.loc[1]
    file_store.put_bytes(garbage.image_key, b"not an image at all")
    file_store.delete_prefix(missing.image_key)
    arrays = load_arrays(file_store, train, 32)
    assert len(arrays) == len(train) - 2 and arrays.skipped == 2
    assert garbage.item_id not in arrays.item_ids and missing.item_id not in arrays.item_ids
    by_item = {r["item_id"]: r for r in arrays.rejected}
    assert by_item[garbage.item_id]["image_key"] == garbage.image_key
    assert by_item[garbage.item_id]["reason"] == "not_an_image" and by_item[garbage.item_id]["detail"]
    assert by_item[missing.item_id] == {
        "item_id": missing.item_id,
        "image_key": missing.image_key,
        "reason": MISSING,
        "detail": f"no {missing.image_key} in the store",
    }
    # the images kept are in frame order, with their own labels
    kept = train[~train["item_id"].isin([garbage.item_id, missing.item_id])]
    assert arrays.item_ids == list(kept["item_id"])
    np.testing.assert_array_equal(arrays.labels, kept["label_index"].to_numpy())


def test_crop_fit_reaches_the_decoder(file_store):
    """A wide photo red | green | blue: squashed, all three bands remain; centre-cropped, only green."""
    import io

    from PIL import Image

    write_dataset(file_store, per_class=2, kinds=("striped", "solid"))
    frame = labelled_items(file_store, "pattern", CLASSES)
    wide = np.zeros((30, 90, 3), np.uint8)
    wide[:, :30, 0] = wide[:, 30:60, 1] = wide[:, 60:, 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    file_store.put_bytes(frame.loc[0, "image_key"], buffer.getvalue())
    squash = load_arrays(file_store, frame.iloc[:1], 24).images[0].astype(int)
    crop = load_arrays(file_store, frame.iloc[:1], 24, fit="crop").images[0].astype(int)
    assert squash[:, 2, 0].min() > 200 and squash[:, -3, 2].min() > 200  # red left, blue right
    assert crop[:, 2:-2, 1].min() > 200 and crop[:, 2:-2, 0].max() < 50 and crop[:, 2:-2, 2].max() < 50
