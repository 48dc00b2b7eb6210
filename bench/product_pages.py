"""Product extraction on the 75 real pages of the public product-extraction benchmark (issue 11).

Runs the real ``scrapers.extract.extract_product`` on a Scrapy ``HtmlResponse`` built from each saved
page (``../shared/data/product-pages/html/<id>.html.gz``) with its original URL from
``ground-truth.json``, writes the predictions in the scorer's layout into a scratch folder
(``dataset/ground-truth.json``, ``dataset/output/<system>.json``) next to the three published outputs,
runs the benchmark's own ``evaluate.py`` there, and prints its table for all pages, the development
subset and the held-out subset, plus our misses by cause.

Subsets: the 30 apparel pages (``../shared/data/retail-pages/pages.csv``) plus the other pages whose
sha1(page id) is even are the development set; the rest (odd hash, non-apparel) is held out. "apparel"
and "other" split the 75 into the 30 apparel pages and the 45 others.

    .venv/bin/python bench/product_pages.py [--subset all|dev|held-out|apparel|other] [--show-errors]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scrapy.http import HtmlResponse  # noqa: E402

from scrapers.extract import IN_STOCK, extract_product  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "product-pages"
APPAREL_CSV = ROOT.parent / "shared" / "data" / "retail-pages" / "pages.csv"
PUBLISHED = ("Zyte", "Diffbot", "extruct")
SCORED = ("price", "sku", "availability")


def apparel_ids() -> set[str]:
    """The 30 apparel pages (``../shared/data/retail-pages/pages.csv``)."""
    with APPAREL_CSV.open(encoding="utf-8") as handle:
        return {Path(row["file"]).name.split(".")[0] for row in csv.DictReader(handle)}


def development_ids(page_ids: list[str]) -> set[str]:
    """The apparel pages plus the others with an even sha1 of their id."""
    apparel = apparel_ids()
    return {p for p in page_ids if p in apparel or int(hashlib.sha1(p.encode()).hexdigest(), 16) % 2 == 0}


def _price_text(price: Any) -> str | None:
    """The price as the scorer's Decimal reads it (no float noise such as 15.990000001)."""
    if price is None:
        return None
    return format(Decimal(str(price)).normalize(), "f")


def predict(ground_truth: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """Our prediction per page in the published outputs' format, and each page's parse seconds."""
    predictions: dict[str, dict[str, Any]] = {}
    seconds: list[float] = []
    for page_id, truth in ground_truth.items():
        body = gzip.decompress((DATA / "html" / f"{page_id}.html.gz").read_bytes())
        response = HtmlResponse(url=truth["url"], body=body, encoding="utf-8")
        start = time.perf_counter()
        product = extract_product(response)
        seconds.append(time.perf_counter() - start)
        row: dict[str, Any] = {"url": truth["url"]}
        if product:
            row["_product"] = True
            if product.get("price") is not None:
                row["price"] = _price_text(product["price"])
            if product.get("currency"):
                row["currency"] = product["currency"]
            if product.get("sku"):
                row["sku"] = product["sku"]
            if product.get("brand"):
                row["brand"] = product["brand"]
            # The benchmark knows two values: buyable schema.org states count as InStock, the others
            # (OutOfStock, SoldOut, Discontinued, ...) as OutOfStock.
            availability = product.get("availability")
            if availability:
                availability = "InStock" if availability in IN_STOCK else "OutOfStock"
                row["availability"] = availability
                row[availability] = availability
            row["_sources"] = product.get("field_sources")
        predictions[page_id] = row
    return predictions, seconds


def _matches(field: str, truth: list[str], predicted: str | None) -> bool:
    if predicted is None:
        return False
    if field == "price":
        try:
            return Decimal(predicted) in {Decimal(t) for t in truth}
        except InvalidOperation:
            return False
    return predicted in truth


def misses_by_cause(ground_truth: dict[str, Any], predictions: dict[str, Any]) -> dict[str, Counter]:
    """Per field: 'no product' (nothing extracted), 'missing' (product without the field), 'wrong'
    (a value not in the ground truth, by the field's source), 'extra' (a value where none is known)."""
    causes: dict[str, Counter] = {}
    for field in SCORED:
        counter: Counter = Counter()
        for page_id, truth in ground_truth.items():
            expected = truth.get(field) or []
            row = predictions[page_id]
            value = row.get(field)
            source = (json.loads(row["_sources"]) if row.get("_sources") else {}).get(field, "?")
            if expected and not row.get("_product"):
                counter["no product"] += 1
            elif expected and value is None:
                counter["missing"] += 1
            elif expected and not _matches(field, expected, value):
                counter[f"wrong ({source})"] += 1
            elif not expected and value is not None:
                counter[f"extra ({source})"] += 1
        causes[field] = counter
    return causes


def evaluate(ground_truth: dict[str, Any], outputs: dict[str, dict[str, Any]], show_errors: bool) -> str:
    """evaluate.py's metrics for these pages (run in a scratch folder laid out as it expects), as a
    table of the scored fields."""
    with tempfile.TemporaryDirectory(prefix="product-pages-") as scratch:
        dataset = Path(scratch) / "dataset"
        (dataset / "output").mkdir(parents=True)
        (dataset / "ground-truth.json").write_text(json.dumps(ground_truth), encoding="utf-8")
        for system, rows in outputs.items():
            clean = {k: {f: v for f, v in row.items() if not f.startswith("_")} for k, row in rows.items()}
            (dataset / "output" / f"{system}.json").write_text(json.dumps(clean), encoding="utf-8")
        shutil.copy(DATA / "evaluate.py", scratch)
        command = [
            sys.executable,
            "evaluate.py",
            "--n-bootstrap",
            "200",
            "--output",
            "metrics.json",
            *(["--show-errors"] if show_errors else []),
        ]
        done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, check=True)
        metrics = json.loads((Path(scratch) / "metrics.json").read_text(encoding="utf-8"))
    errors = [line for line in done.stdout.splitlines() if line.split("\t")[0] in SCORED] if show_errors else []
    lines = ["| field | system | F1 | precision | recall | support |", "|---|---|---|---|---|---|"]
    for field in SCORED:
        for system in outputs:
            m = metrics[system][field]
            lines.append(
                f"| {field} | {system} | {m['f1']:.3f} ± {m['f1_std']:.3f} | {m['precision']:.3f} | "
                f"{m['recall']:.3f} | {m['support']} |"
            )
    return "\n".join(errors + lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", choices=("all", "dev", "held-out", "apparel", "other", "each"), default="each")
    parser.add_argument("--show-errors", action="store_true")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/data/product-pages")
    ground_truth = json.loads((DATA / "ground-truth.json").read_text(encoding="utf-8"))
    ours, seconds = predict(ground_truth)
    published = {s: json.loads((DATA / f"output-{s}.json").read_text(encoding="utf-8")) for s in PUBLISHED}
    dev = development_ids(list(ground_truth))
    apparel = apparel_ids() & set(ground_truth)
    subsets = {
        "all": set(ground_truth),
        "dev": dev,
        "held-out": set(ground_truth) - dev,
        "apparel": apparel,  # a rule may help the 30 apparel pages and hurt the 45 others, or the reverse
        "other": set(ground_truth) - apparel,
    }
    chosen = list(subsets) if args.subset == "each" else [args.subset]
    for name in chosen:
        ids = sorted(subsets[name])
        truth = {k: ground_truth[k] for k in ids}
        outputs = {"FashionNet": {k: ours[k] for k in ids}, **{s: {k: p[k] for k in ids} for s, p in published.items()}}
        product_pages = [k for k in ids if any(truth[k].get(f) for f in ("price", "sku", "availability"))]
        with_product = sum(1 for k in product_pages if ours[k].get("_product"))
        print(
            f"\n## {name}: {len(ids)} pages, a product for {with_product}/{len(product_pages)} "
            f"({with_product / max(len(product_pages), 1):.3f}) of the product pages"
        )
        print(evaluate(truth, outputs, args.show_errors))
        for field, counter in misses_by_cause(truth, outputs["FashionNet"]).items():
            print(f"misses {field}: {dict(counter) or 'none'}")
    seconds.sort()
    print(f"\nparse time per page: median {seconds[len(seconds) // 2] * 1000:.1f} ms, max {seconds[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
