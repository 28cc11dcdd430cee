"""Image labels: the backbone classifier's top classes, stored per content at indexing time and
shown by search (library, --json, table) and info.

The oracle for stored labels is the saved model's ImageEncoder run directly on the same decoded
pixels, one image at a time, with torch.topk over the classes after class 0 ("background").
The test model (conftest.mobilenet_model_dir) has random weights made so that images get
different classes and "background" is often the most probable class.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import draw_image, make_photos
from imgsearch.cli import cli
from imgsearch.images.decode import ImageRecord, decode_file
from imgsearch.index import Index
from imgsearch.indexer.pipeline import LocalEmbedder
from imgsearch.model.image_encoder import ImageEncoder, resize_uint8
from imgsearch.storage.store import Fail, Put, Store

TOP = 5
PROB_ATOL = 1.5e-4  # stored probabilities are rounded to 4 decimals; batches differ in the last float bits


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_json(*args):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stored_labels(index_dir: Path) -> dict[str, list | None]:
    """path --> the labels column as stored (parsed JSON, or None for NULL), read with plain sqlite3."""
    conn = sqlite3.connect(index_dir / "index.db")
    try:
        rows = conn.execute(
            "SELECT images.path, embeddings.labels FROM images JOIN embeddings USING (sha256) "
            "WHERE images.status = 'ok'"
        ).fetchall()
    finally:
        conn.close()
    return {path: None if text is None else json.loads(text) for path, text in rows}


class EncoderOracle:
    """The saved model's image encoder on one decoded file at a time, as indexing decodes it."""

    def __init__(self, model_dir: Path) -> None:
        self.encoder = ImageEncoder.from_pretrained(model_dir, device="cpu")
        self.names = (model_dir / "labels.txt").read_text(encoding="utf-8").splitlines()  # the model's class names

    def probs(self, path: Path) -> torch.Tensor:
        """(num_classes,) softmax posteriors."""
        decoded = decode_file(path, min_size=self.encoder.image_size)
        assert decoded.error is None, decoded.error
        pixels = resize_uint8(decoded.image, self.encoder.image_size)[None]  # (1, 3, S, S) uint8
        with torch.inference_mode():
            out = self.encoder(self.encoder.normalize(pixels))
        return out.class_probs[0]

    def top(self, path: Path) -> list[tuple[str, float]]:
        probs = self.probs(path)
        values, classes = torch.topk(probs[1:], TOP)  # class 0, "background", never counts
        return [(self.names[int(c) + 1], float(v)) for v, c in zip(values, classes)]


def assert_labels_equal(stored: list, expected: list[tuple[str, float]], where: str) -> None:
    assert [name for name, _ in stored] == [name for name, _ in expected], where
    np.testing.assert_allclose([p for _, p in stored], [p for _, p in expected], atol=PROB_ATOL, err_msg=where)
    assert all(p == round(p, 4) for _, p in stored), where  # rounded to 4 decimals


@pytest.fixture
def photos(tmp_path) -> Path:
    """10 generated images, a large JPEG (decoded at a reduced scale) and a copy of one image."""
    root = make_photos(tmp_path / "photos", range(10))
    draw_image(42, size=400).save(root / "large.jpg", quality=90)
    shutil.copyfile(root / "img_003.png", root / "copy_of_003.png")
    return root


class DeferredEncoding:
    """An embedder taking the GPU's path on the CPU: it wraps a local one, and each batch's vectors
    (and labels) are 'ready' only when waited for, so batches are stored by the run's writer thread
    while later ones are encoded."""

    def __init__(self, local: LocalEmbedder) -> None:
        self.local = local
        self.waits = 0
        local.encoder.use_torch_runtime()  # synchronous on the CPU (ONNX Runtime's path is asynchronous itself)

    def embed(self, paths, known_contents):
        batches = self.local.embed(paths, known_contents)
        try:
            for pending in batches:
                if pending.contents:  # the encoder was started on this batch
                    assert not pending.asynchronous and pending.top_probs is not None
                    pending.ready = self
                yield pending
        finally:
            batches.close()

    def synchronize(self) -> None:
        self.waits += 1


def add_options(index: Index, path: str) -> dict:
    """index.add's options for the run on `path`: batches of 4, decoded here."""
    if path == "writer thread":
        return {"embedder": DeferredEncoding(LocalEmbedder(index.image_encoder, batch_size=4, workers=0))}
    return {"workers": 0, "batch_size": 4}


@pytest.mark.parametrize("path", ["cpu", "writer thread"])
def test_stored_labels_are_the_encoders_top_classes(tmp_path, mobilenet_model_dir, photos, path):
    index_dir = tmp_path / "index"
    with Index.create(index_dir, mobilenet_model_dir, device="cpu") as index:
        options = add_options(index, path)
        summary = index.add([photos], **options)
    deferred = options.get("embedder")
    assert (summary.added, summary.embedded) == (12, 11)
    if deferred is not None:
        assert deferred.waits == 3

    oracle = EncoderOracle(mobilenet_model_dir)
    files = sorted(photos.iterdir())
    expected = {str(f): oracle.top(f) for f in files}
    # The test can tell images apart: top classes differ, and "background" often beats every real class.
    assert len({tuple(name for name, _ in top) for top in expected.values()}) >= 5
    assert len({top[0][0] for top in expected.values()}) >= 2
    assert sum(int(oracle.probs(f).argmax()) == 0 for f in files) >= 3

    stored = stored_labels(index_dir)
    assert set(stored) == set(expected)
    for path_text, top in expected.items():
        assert stored[path_text] is not None, path_text
        assert len(stored[path_text]) == TOP
        assert_labels_equal(stored[path_text], top, path_text)
        assert all(name != "class 0" for name, _ in stored[path_text])

    # A renamed file keeps its row and vectors, labels included: nothing is re-embedded.
    (photos / "img_005.png").rename(photos / "renamed.png")
    with Index.open(index_dir, device="cpu") as index:
        again = index.add([photos], **add_options(index, path))
    assert (again.moved, again.embedded) == (1, 0)
    assert_labels_equal(
        stored_labels(index_dir)[str(photos / "renamed.png")], expected[str(photos / "img_005.png")], "renamed"
    )


def test_search_results_carry_the_stored_labels(tmp_path, mobilenet_model_dir, photos):
    index_dir = tmp_path / "index"
    with Index.create(index_dir, mobilenet_model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        results = index.search("a red circle", k=20, candidates=20, collapse_duplicates=False)
        first_stage = index.search("a red circle", k=20, rerank=False, collapse_duplicates=False)
    stored = stored_labels(index_dir)
    assert len(results) == len(first_stage) == 12
    for result in results + first_stage:
        assert result.labels == [{"label": name, "score": prob} for name, prob in stored[result.path]]

    out = run_json(
        "search",
        "a red circle",
        "--index",
        index_dir,
        "-k",
        20,
        "--candidates",
        20,
        "--device",
        "cpu",
        "--precision",
        "float32",
        "--keep-duplicates",
    )
    assert [r["path"] for r in out["results"]] == [r.path for r in results]
    for r in out["results"]:
        assert r["labels"] == [{"label": name, "score": prob} for name, prob in stored[r["path"]]]
        scores = [item["score"] for item in r["labels"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == TOP


def test_the_search_table_shows_the_labels_the_classifier_is_sure_of(tmp_path, mobilenet_model_dir, photos):
    from imgsearch.cli import SHOWN_LABEL_MIN_SCORE

    index_dir = tmp_path / "index"
    with Index.create(index_dir, mobilenet_model_dir, device="cpu") as index:
        index.add([photos], workers=0)
    stored = stored_labels(index_dir)
    result = run("search", "a red circle", "--index", index_dir, "-k", 20, "--device", "cpu", "--keep-duplicates")
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.strip().splitlines()
    assert header.endswith("path  [labels]")
    assert len(lines) == 12
    with_labels = 0
    for line in lines:
        path = next(p for p in stored if f"  {p}" in line)
        want = [(name, prob) for name, prob in stored[path] if prob >= SHOWN_LABEL_MIN_SCORE][:2]
        tail = line.split(f"  {path}", 1)[1]
        if not want:
            assert tail == "", line
            continue
        with_labels += 1
        match = re.fullmatch(r"  \[(.*)\]", tail)
        assert match, line
        shown = [item.rsplit(" ", 1) for item in match.group(1).split(", ")]
        assert [name for name, _ in shown] == [name for name, _ in want], line
        for (_, percent), (_, prob) in zip(shown, want):
            assert abs(int(percent.rstrip("%")) - prob * 100) <= 0.5 + 1e-9, line
    # Lines without labels occur (this random-weight classifier is rarely sure); a shown label's
    # form is the unit test's below.
    assert with_labels < len(lines)


def test_a_model_without_a_classifier_stores_no_labels(tmp_path, model_dir, photos):
    index_dir = tmp_path / "index"
    with Index.create(index_dir, model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        results = index.search("a red circle", k=5, candidates=10)
        info = index.info()
    stored = stored_labels(index_dir)
    assert len(stored) == 12 and all(labels is None for labels in stored.values())
    assert len(results) == 5 and all(r.labels == [] for r in results)
    assert info["labels"] == {"labeled_images": 0, "top1": []}

    out = run_json("search", "a red circle", "--index", index_dir, "-k", 3, "--device", "cpu")
    assert len(out["results"]) == 3 and all(r["labels"] == [] for r in out["results"])
    header, *rows = run("search", "a red circle", "--index", index_dir, "-k", 3, "--device", "cpu").stdout.splitlines()
    assert len(rows) == 3 and not any("[" in row for row in rows)
    text = run("info", "--index", index_dir).stdout
    assert "labels:     none stored" in text


def naive_top1_counts(index_dir: Path) -> tuple[int, list[tuple[str, int]]]:
    """Images with labels, and (label, images) for the 10 most frequent top-1 labels, by reading every row."""
    labels = stored_labels(index_dir)
    tops = Counter(entries[0][0] for entries in labels.values() if entries)
    ranked = sorted(tops.items(), key=lambda item: (-item[1], item[0]))[:10]
    return sum(1 for entries in labels.values() if entries is not None), ranked


def test_info_counts_the_top1_labels(tmp_path, mobilenet_model_dir, photos):
    (photos / "broken.png").write_text("not a PNG")
    index_dir = tmp_path / "index"
    with Index.create(index_dir, mobilenet_model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        info = index.info()
    labeled, ranked = naive_top1_counts(index_dir)
    assert labeled == 12 and len(ranked) >= 2  # 12 ok images (the copy counts), the broken file does not
    assert info["labels"] == {"labeled_images": labeled, "top1": [{"label": n, "images": c} for n, c in ranked]}
    assert run_json("info", "--index", index_dir)["labels"] == info["labels"]
    text = run("info", "--index", index_dir).stdout
    line = next(line for line in text.splitlines() if line.startswith("labels:"))
    assert line.startswith("labels:     " + ", ".join(f"{n} ({c})" for n, c in ranked))
    assert "12 of 12 images" in line


def test_store_top1_counts_over_many_labels(tmp_path):
    """More than ten distinct top-1 labels, ties, unlabelled contents, copies and a failure:
    Store.top_label_counts against a naive count, and labels round-tripped (rounded) by Store.labels."""
    rng = np.random.default_rng(0)
    store = Store(tmp_path / "index.db", embed_dim=4, num_regions=1)
    names = [f"label {i:02d}" for i in range(15)] + ["chou-fleur \u00e9t\u00e9"]
    changes, expected_labels = [], {}
    for i in range(60):
        top1 = names[int(rng.integers(0, 4))] if i % 3 else names[int(rng.integers(0, len(names)))]  # skewed
        labels = None if i % 7 == 0 else [(top1, 0.5 + rng.random() / 3), ("other", 0.0123456), ("rest", 0.00004)]
        path = f"/photos/{i:03d}.jpg"
        record = ImageRecord(path=path, size=100, mtime=1.0, ctime=1.0, sha256=f"{i:064x}", width=8, height=8)
        changes.append(
            Put(record, global_=np.full(4, 0.5, np.float32), regions=np.zeros((1, 4), np.float16), labels=labels)
        )
        expected_labels[path] = labels
        if i % 10 == 1:  # a copy shares the content (and its labels): one more image
            changes.append(
                Put(
                    ImageRecord(
                        path=f"/copies/{i:03d}.jpg",
                        size=100,
                        mtime=1.0,
                        ctime=1.0,
                        sha256=f"{i:064x}",
                        width=8,
                        height=8,
                    )
                )
            )
            expected_labels[f"/copies/{i:03d}.jpg"] = labels
    store.apply(changes)
    store.apply([Fail(ImageRecord(path="/photos/broken.jpg", error="not an image"))])

    rows = store.all_images()
    by_id = store.labels([rows[p].id for p in expected_labels])
    tops: Counter = Counter()
    for path, labels in expected_labels.items():
        got = by_id[rows[path].id]
        if labels is None:
            assert got == [], path
            continue
        assert got == [(name, round(prob, 4)) for name, prob in labels], path
        tops[labels[0][0]] += 1
    ranked = sorted(tops.items(), key=lambda item: (-item[1], item[0]))
    assert len(ranked) > 10 and any(a[1] == b[1] for a, b in zip(ranked, ranked[1:]))  # the limit and ties matter
    labeled = sum(labels is not None for labels in expected_labels.values())
    assert store.top_label_counts(10) == (labeled, ranked[:10])
    assert store.top_label_counts(3) == (labeled, ranked[:3])
    store.close()


def test_the_terminal_shows_an_imagenet_name_by_its_first_synonym():
    from imgsearch.cli import _label_note

    labels = [{"label": "hotdog, hot dog, red hot", "score": 0.82}, {"label": "tabby, tabby cat", "score": 0.12}]
    assert _label_note(labels) == "  [hotdog 82%]"  # tabby at 12%: the classifier is not sure of it
    assert _label_note([{"label": "tabby, tabby cat", "score": 0.49}]) == ""
