"""Training code: caption readers, retrieval metrics, batching, losses, train(), and the
`train` / `eval` commands, each checked against an oracle written here (plain loops,
hand-computed values, or the data the test itself generated).

Everything is tiny (a 2-layer 32-wide BERT, a 3-layer VGG at 32 px, ~24 images), so the
whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import ast
import copy
import csv
import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli_process import CliProcess
from conftest import SMALL_BACKBONE, draw_image, small_config
from fsync_spy import FsyncSpy
from imgsearch.cli import cli
from imgsearch.ground.errors import CaptionFileError, ImgsearchError
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.model_files import CONFIG_NAME, WEIGHTS_NAME
from imgsearch.model.scorer import CrossAttentionScorer
from imgsearch.training.captions import CaptionedImage, read_captions
from imgsearch.training.data import encode_captions, group_batches, load_images
from imgsearch.training.evaluate import (
    captions_describing,
    evaluate,
    i2t_ranks,
    recall_at_k,
    rerank_i2t_ranks,
    rerank_t2i_ranks,
    t2i_ranks,
)
from imgsearch.training.losses import _negative_weights, alignment_matrix, infonce_loss, itm_loss, vsepp_loss
from imgsearch.training.trainer import STATE_NAME, TrainConfig, split_validation, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module: the same CPU kernels run after run (reproducibility),
    and many tiny ops do not spin against other CPU users (two threads made them 1000x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------
# Caption readers: one generated dataset written in every format, read back.
# --------------------------------------------------------------------------------------


def caption_spec(seed: int = 3) -> list[tuple[str, list[str], str | None]]:
    """(relative image path, captions, group): 1 to 7 captions per image, some in a subfolder."""
    rng = random.Random(seed)
    counts = [1, 7, 3, 5, 2, 4, 6]
    rng.shuffle(counts)
    spec = []
    for i, count in enumerate(counts):
        name = f"{'sub/' if i % 3 == 1 else ''}img_{i:02d}.jpg"
        captions = [f"photo {i}, caption {k}: a {rng.choice(['red', 'blue', 'green'])} thing" for k in range(count)]
        spec.append((name, captions, f"g{i // 2}" if i < 6 else None))
    return spec


def flat_rows(spec, seed: int = 4) -> list[tuple[str, str, str | None]]:
    """Every (image, caption, group) row, shuffled so that one image's captions are not adjacent."""
    rows = [(name, caption, group) for name, captions, group in spec for caption in captions]
    random.Random(seed).shuffle(rows)
    return rows


def expected_from_rows(rows, root: Path, with_groups: bool):
    """The oracle: images in order of first appearance, each with its captions in row order."""
    out: dict[str, tuple[Path, list[str], str | None]] = {}
    for name, caption, group in rows:
        out.setdefault(name, (root / name, [], group if with_groups else None))[1].append(caption)
    return list(out.values())


def as_tuples(items: list[CaptionedImage]):
    return [(item.path, item.captions, item.group) for item in items]


def write_tsv(path: Path, rows) -> None:
    path.write_text("image\tcaption\tgroup\n" + "".join(f"{n}\t{c}\t{g or ''}\n" for n, c, g in rows))


def write_csv(path: Path, rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "text", "group"])
        writer.writerows([n, c, g or ""] for n, c, g in rows)


def write_jsonl_caption(path: Path, rows) -> None:
    path.write_text(
        "".join(json.dumps({"image": n, "caption": c, **({"group": g} if g else {})}) + "\n" for n, c, g in rows)
    )


def write_flickr(path: Path, rows) -> None:
    number: dict[str, int] = {}
    lines = []
    for n, c, _ in rows:
        lines.append(f"{n}#{number.setdefault(n, 0)}\t{c}\n")
        number[n] += 1
    path.write_text("".join(lines))


def write_coco(path: Path, rows) -> None:
    names = sorted({n for n, _, _ in rows})
    ids = {n: 1000 + 7 * k for k, n in enumerate(names)}  # not 0..N-1: the lookup must use the ids
    path.write_text(
        json.dumps(
            {
                "info": {},
                "images": [{"id": ids[n], "file_name": n, "width": 32, "height": 32} for n in names],
                "annotations": [{"id": k, "image_id": ids[n], "caption": c} for k, (n, c, _) in enumerate(rows)],
            }
        )
    )


@pytest.mark.parametrize(
    "writer, suffix, with_groups",
    [
        (write_tsv, ".tsv", True),
        (write_csv, ".csv", True),
        (write_jsonl_caption, ".jsonl", True),
        (write_jsonl_caption, ".txt", True),  # chosen by content, not suffix
        (write_flickr, ".token", False),
        (write_coco, ".json", False),
    ],
)
def test_read_captions_flat_formats_match_the_generated_rows(tmp_path, writer, suffix, with_groups):
    spec = caption_spec()
    rows = flat_rows(spec)
    path = tmp_path / f"captions{suffix}"
    writer(path, rows)
    items = read_captions(path)
    assert as_tuples(items) == expected_from_rows(rows, tmp_path, with_groups)
    assert sorted(len(item.captions) for item in items) == [1, 2, 3, 4, 5, 6, 7]

    root = tmp_path / "elsewhere"
    first_seen = list(dict.fromkeys(n for n, _, _ in rows))
    assert [item.path for item in read_captions(path, image_root=root)] == [root / n for n in first_seen]


def test_read_captions_jsonl_with_caption_lists(tmp_path):
    spec = caption_spec()
    path = tmp_path / "captions.jsonl"
    path.write_text(
        "".join(json.dumps({"file_name": n, "captions": c, **({"group": g} if g else {})}) + "\n\n" for n, c, g in spec)
    )
    assert as_tuples(read_captions(path)) == [(tmp_path / n, c, g) for n, c, g in spec]


def karpathy(spec) -> dict:
    splits = ["train", "val", "test", "restval", "train", "test", "train"]
    return {
        "dataset": "coco",
        "images": [
            {
                "filepath": "" if k % 3 == 0 else "train2014",
                "filename": Path(n).name,
                "split": splits[k],
                "imgid": k,
                "sentences": [
                    {"raw": c, "tokens": c.lower().split()} if j % 2 == 0 else {"tokens": c.split(), "raw": ""}
                    for j, c in enumerate(captions)
                ],
            }
            for k, (n, captions, _) in enumerate(spec)
        ],
    }


@pytest.mark.parametrize("split", ["train", "val", "test", "restval", None])
def test_read_captions_karpathy_json_filters_by_split(tmp_path, split):
    spec = caption_spec()
    data = karpathy(spec)
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data, indent=1))  # pretty-printed: a multi-line JSON document
    root = tmp_path / "images"
    items = read_captions(path, root, split=split)
    expected = [
        (
            root / image["filepath"] / image["filename"],
            [s["raw"] or " ".join(s["tokens"]) for s in image["sentences"]],
            None,
        )
        for image in data["images"]
        if split is None or image["split"] == split
    ]
    assert as_tuples(items) == expected
    if split == "train":
        assert [len(c) for _, c, _ in expected] == [len(spec[k][1]) for k in (0, 4, 6)]


def test_read_captions_only_keeps_listed_names_and_relative_paths(tmp_path):
    spec = caption_spec()
    rows = flat_rows(spec)
    tsv = tmp_path / "captions.tsv"
    write_tsv(tsv, rows)
    # "img_01.jpg" is listed by file name although it lies in sub/; "sub/img_04.jpg" by relative path
    only = {"img_00.jpg", "img_01.jpg", "sub/img_04.jpg", "not_in_the_file.jpg"}
    items = read_captions(tsv, only=only)
    expected = [
        e
        for e in expected_from_rows(rows, tmp_path, True)
        if e[0].relative_to(tmp_path).as_posix() in {"img_00.jpg", "sub/img_01.jpg", "sub/img_04.jpg"}
    ]
    assert as_tuples(items) == expected and len(items) == 3

    karpathy_path = tmp_path / "dataset.json"
    karpathy_path.write_text(json.dumps(karpathy(spec)))
    items = read_captions(karpathy_path, split="train", only={"img_04.jpg"})  # train2014/img_04.jpg
    assert [item.path for item in items] == [tmp_path / "train2014" / "img_04.jpg"]


def test_read_captions_normalises_whitespace_and_drops_duplicates_and_empties(tmp_path):
    path = tmp_path / "captions.tsv"
    path.write_text(
        "Image\tCaption\tGroup\n"  # header names are case-insensitive
        "a.jpg\t  a   dog running  \t\n"
        "a.jpg\ta dog running\t\n"  # the same caption once whitespace is normalised
        "a.jpg\t   \t\n"  # empty caption: ignored
        "b.jpg\ta cat\tpets\n"
        "b.jpg\ta cat sleeping\tpets\n"
        "\n"
    )
    items = read_captions(path)
    # an empty group cell means "no group", not a group named ""
    assert as_tuples(items) == [
        (tmp_path / "a.jpg", ["a dog running"], None),
        (tmp_path / "b.jpg", ["a cat", "a cat sleeping"], "pets"),
    ]


def test_read_captions_short_rows_byte_order_mark_split_column_and_one_line_jsonl(tmp_path):
    short = tmp_path / "short.tsv"
    short.write_text("image\tcaption\tgroup\na.jpg\ta dog\n")  # no group cell at all
    assert as_tuples(read_captions(short)) == [(tmp_path / "a.jpg", ["a dog"], None)]

    bom = tmp_path / "excel.csv"
    bom.write_bytes('\ufeffimage,caption\na.jpg,"a dog, running"\n'.encode("utf-8"))
    assert as_tuples(read_captions(bom)) == [(tmp_path / "a.jpg", ["a dog, running"], None)]

    with_split = tmp_path / "split.tsv"
    with_split.write_text("image\tcaption\tsplit\na.jpg\ta dog\ttrain\nb.jpg\ta cat\tval\nc.jpg\ta cow\ttrain\n")
    assert [item.path.name for item in read_captions(with_split, split="train")] == ["a.jpg", "c.jpg"]
    assert [item.path.name for item in read_captions(with_split, split="val")] == ["b.jpg"]

    one = tmp_path / "one.json"  # JSON Lines with one record is also a JSON document
    one.write_text(json.dumps({"image": "a.jpg", "captions": ["a dog", "a puppy"]}) + "\n")
    assert as_tuples(read_captions(one)) == [(tmp_path / "a.jpg", ["a dog", "a puppy"], None)]


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("missing.tsv", "picture\tcaption\na.jpg\ta dog\n", ["header must name an image column", "picture"]),
        ("missing.csv", "image,label\na.jpg,dog\n", ["caption column", "label"]),
        ("empty.tsv", "", ["header"]),
        ("header_only.tsv", "image\tcaption\n", ["gave no (image, caption) pairs"]),
        ("blank.tsv", "image\tcaption\na.jpg\t  \n", ["gave no (image, caption) pairs"]),
        (
            "bad.jsonl",
            '{"image": "a.jpg", "caption": "a dog"}\n{"image": "b.jpg", "caption": \n',
            ["bad.jsonl:2:", "image field"],
        ),
        ("noimage.jsonl", '{"image": "a.jpg", "caption": "a dog"}\n{"caption": "no image"}\n', ["noimage.jsonl:2:"]),
        ("flickr.token", "a.jpg#0\ta dog\nthis line is not a token line\n", ["flickr.token:2:", "name.jpg#N"]),
        (
            "coco.json",
            json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "x"}]}),
            ["COCO annotation"],
        ),
        ("other.json", json.dumps({"something": "else"}, indent=1), ["neither COCO captions nor a Karpathy"]),
        ("short.tsv", "image\tsplit\tcaption\na.jpg\ttrain\n", ["short.tsv:2: too few columns"]),
    ],
)
def test_read_captions_malformed_inputs_raise_clear_errors(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CaptionFileError) as info:
        read_captions(path)
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "name, content, where",
    [
        ("up.tsv", "image\tcaption\na.jpg\ta dog\n../secret.jpg\ta cat\n", "up.tsv:3"),
        ("absolute.csv", "image,caption\n/etc/passwd,a file\n", "absolute.csv:2"),
        (
            "deep.jsonl",
            '{"image": "a.jpg", "caption": "x"}\n{"image": "sub/../../b.jpg", "caption": "y"}\n',
            "deep.jsonl:2",
        ),
        ("flickr.token", "a.jpg#0\ta dog\n../../b.jpg#0\ta cat\n", "flickr.token:2"),
        (
            "coco.json",
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "/b.jpg"}],
                    "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 2, "caption": "y"}],
                }
            ),
            "coco.json: annotations[1]",
        ),
        (
            "karpathy.json",
            json.dumps(
                {"images": [{"filepath": "..", "filename": "b.jpg", "split": "train", "sentences": [{"raw": "y"}]}]}
            ),
            "karpathy.json: images[0]",
        ),
    ],
)
def test_read_captions_refuses_images_outside_the_images_folder(tmp_path, name, content, where):
    path = tmp_path / "data" / name
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(CaptionFileError, match="is outside the images folder") as info:
        read_captions(path, tmp_path / "data")
    assert str(info.value).startswith(f"{tmp_path / 'data' / where}: image ")


def test_read_captions_keeps_names_that_stay_inside_the_images_folder(tmp_path):
    path = tmp_path / "captions.tsv"
    path.write_text("image\tcaption\nsub/../a.jpg\ta dog\n./b.jpg\ta cat\nsub/c..jpg\ta cow\n")
    assert [item.path for item in read_captions(path, tmp_path / "images")] == [
        tmp_path / "images" / "sub/../a.jpg",
        tmp_path / "images" / "b.jpg",
        tmp_path / "images" / "sub/c..jpg",
    ]


def test_eval_names_the_line_of_an_image_outside_images(trained, captioned_images, tmp_path):
    captions = tmp_path / "captions.tsv"
    captions.write_text("image\tcaption\nimg_00.png\ta picture\n../../etc/hostname\tnot a picture\n")
    result = invoke("eval", captions, "--images", captioned_images, "--model", trained[0], "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert f"Error: {captions}:3: image '../../etc/hostname' is outside the images folder" in result.stderr
    assert "Traceback" not in result.output


def test_read_captions_empty_selection_and_unreadable_file(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(karpathy(caption_spec())))
    with pytest.raises(CaptionFileError, match="gave no .* for split 'dev'"):
        read_captions(path, split="dev")
    with pytest.raises(CaptionFileError, match="among the listed image names"):
        read_captions(path, only={"nothing.jpg"})
    with pytest.raises(CaptionFileError, match="cannot read captions file"):
        read_captions(tmp_path / "absent.tsv")
    latin = tmp_path / "latin1.tsv"
    latin.write_bytes("image\tcaption\na.jpg\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(CaptionFileError, match="cannot read captions file"):
        read_captions(latin)


# --------------------------------------------------------------------------------------
# Metrics: brute force with plain loops.
# --------------------------------------------------------------------------------------


def brute_rank(row, correct_score) -> int:
    """Position of the first correct item in the query's sorted scores (ties: strictly higher count)."""
    ordered = sorted((float(s) for s in row), reverse=True)
    return ordered.index(float(correct_score))


def brute_t2i(sim, image_of) -> list[int]:
    return [brute_rank(sim[c], sim[c][image_of[c]]) for c in range(len(sim))]


def brute_i2t(sim, captions_of) -> list[int]:
    return [
        brute_rank([sim[c][i] for c in range(len(sim))], max(sim[c][i] for c in own))
        for i, own in enumerate(captions_of)
    ]


def caption_layout(seed: int, images: int):
    """image_of (Nc,) and captions_of: 1 to 4 captions per image, captions not grouped by image."""
    rng = random.Random(seed)
    image_of = [i for i in range(images) for _ in range(rng.randint(1, 4))]
    rng.shuffle(image_of)
    captions_of = [[c for c, i in enumerate(image_of) if i == image] for image in range(images)]
    return np.array(image_of), captions_of


def test_recall_at_k_by_hand():
    ranks = np.array([0, 1, 4, 5, 9, 10, 30, 0])
    assert recall_at_k(ranks) == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0}
    assert recall_at_k(np.array([2]), ks=(2, 3)) == {"R@2": 0.0, "R@3": 100.0}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("integer_scores", [False, True])
def test_ranks_and_recall_match_brute_force(seed, integer_scores):
    rng = np.random.default_rng(seed)
    images = 12
    image_of, captions_of = caption_layout(seed, images)
    if integer_scores:  # many ties
        sim = rng.integers(0, 4, size=(len(image_of), images)).astype(np.float32)
    else:
        sim = rng.standard_normal((len(image_of), images)).astype(np.float32)
    t2i, i2t = t2i_ranks(sim, image_of), i2t_ranks(sim, captions_of)
    reference_t2i, reference_i2t = brute_t2i(sim.tolist(), image_of.tolist()), brute_i2t(sim.tolist(), captions_of)
    assert t2i.tolist() == reference_t2i
    assert i2t.tolist() == reference_i2t
    for ranks, reference in ((t2i, reference_t2i), (i2t, reference_i2t)):
        for k in (1, 5, 10):
            hits = sum(1 for r in reference if r < k)
            assert recall_at_k(ranks)[f"R@{k}"] == pytest.approx(100.0 * hits / len(reference))


def test_ranks_count_only_strictly_higher_scores():
    sim = np.array([[1.0, 1.0, 1.0], [0.0, 2.0, 2.0], [3.0, 3.0, 1.0]])
    assert t2i_ranks(sim, np.array([2, 1, 2])).tolist() == [0, 0, 2]
    # image 0's captions are 0 and 2: its best is caption 2 (3.0) --> rank 0;
    # image 1's one caption scores 2.0, below caption 2's 3.0 --> rank 1
    assert i2t_ranks(sim, [[0, 2], [1]]).tolist() == [0, 1]


# ---- re-ranking: a naive loop, one (query, candidate) pair at a time ----


def pair_score(model, tokens, mask, regions) -> float:
    with torch.inference_mode():
        return float(model.scorer(tokens.unsqueeze(0), mask.unsqueeze(0), regions.unsqueeze(0).float())[0])


def naive_rerank_t2i(model, sim, image_of, tokens, mask, regions, depth) -> list[int]:
    ranks = []
    for c in range(len(sim)):
        candidates = sorted(range(sim.shape[1]), key=lambda i: (-sim[c, i], i))[:depth]
        if image_of[c] not in candidates:
            ranks.append(brute_rank(sim[c].tolist(), sim[c, image_of[c]]))
            continue
        fused = {
            i: pair_score(model, tokens[c], mask[c], regions[i]) + model.config.fusion_weight * float(sim[c, i])
            for i in candidates
        }
        reordered = sorted(candidates, key=lambda i: -fused[i])  # stable: ties keep the first-stage order
        ranks.append(reordered.index(image_of[c]))
    return ranks


def naive_rerank_i2t(model, sim, captions_of, tokens, mask, regions, depth) -> list[int]:
    ranks = []
    for i, own in enumerate(captions_of):
        column = sim[:, i]
        candidates = sorted(range(len(sim)), key=lambda c: (-column[c], c))[:depth]
        if not set(own) & set(candidates):
            ranks.append(brute_rank(column.tolist(), max(column[c] for c in own)))
            continue
        fused = {
            c: pair_score(model, tokens[c], mask[c], regions[i]) + model.config.fusion_weight * float(column[c])
            for c in candidates
        }
        reordered = sorted(candidates, key=lambda c: -fused[c])  # stable: ties keep the first-stage order
        ranks.append(min(reordered.index(c) for c in own if c in candidates))
    return ranks


@pytest.fixture(scope="module")
def rerank_inputs(model_dir, one_thread):
    """A random-init model and random tokens / regions / similarities of the shapes evaluate() uses."""
    model = AlignmentModel.from_pretrained(model_dir, device="cpu")
    images, d = 9, model.config.embed_dim
    regions_count = model.image.num_regions
    image_of, captions_of = caption_layout(11, images)
    g = torch.Generator().manual_seed(0)
    captions = len(image_of)
    tokens = torch.randn(captions, 6, d, generator=g)  # (Nc, T, d) float32
    lengths = torch.randint(1, 7, (captions,), generator=g)
    mask = torch.arange(6)[None, :] < lengths[:, None]  # (Nc, T) bool, at least one real token
    regions = torch.tanh(torch.randn(images, regions_count, d, generator=g)).to(torch.float16)  # (Ni, R, d)
    sim = np.random.default_rng(0).uniform(-1, 1, (captions, images)).astype(np.float32)
    return model, sim, image_of, captions_of, tokens, mask, regions


@pytest.mark.parametrize("fusion_weight", [0.0, 0.7, 5.0])
@pytest.mark.parametrize("depth, pairs_per_call", [(4, 2048), (4, 5), (50, 7), (1, 3)])
def test_rerank_ranks_match_a_pair_by_pair_loop(rerank_inputs, fusion_weight, depth, pairs_per_call):
    model, sim, image_of, captions_of, tokens, mask, regions = rerank_inputs
    model.config = dataclasses.replace(model.config, fusion_weight=fusion_weight)
    t2i = rerank_t2i_ranks(model, sim, image_of, tokens, mask, regions, depth, pairs_per_call)
    i2t = rerank_i2t_ranks(model, sim, captions_of, tokens, mask, regions, depth, pairs_per_call)
    assert t2i.tolist() == naive_rerank_t2i(model, sim, image_of, tokens, mask, regions, depth)
    assert i2t.tolist() == naive_rerank_i2t(model, sim, captions_of, tokens, mask, regions, depth)
    if depth == 1:  # one candidate: nothing to reorder
        assert t2i.tolist() == t2i_ranks(sim, image_of).tolist()
        assert i2t.tolist() == i2t_ranks(sim, captions_of).tolist()
    if depth == 50 and fusion_weight == 0.0:  # the scorer alone reorders: the test sees a change
        assert t2i.tolist() != t2i_ranks(sim, image_of).tolist()


def test_rerank_with_a_huge_fusion_weight_keeps_the_first_stage_order(rerank_inputs):
    model, sim, image_of, captions_of, tokens, mask, regions = rerank_inputs
    model.config = dataclasses.replace(model.config, fusion_weight=1e6)
    t2i = rerank_t2i_ranks(model, sim, image_of, tokens, mask, regions, 5)
    i2t = rerank_i2t_ranks(model, sim, captions_of, tokens, mask, regions, 5)
    assert t2i.tolist() == t2i_ranks(sim, image_of).tolist()
    assert i2t.tolist() == i2t_ranks(sim, captions_of).tolist()


def constant_scorer(model: AlignmentModel) -> AlignmentModel:
    """A copy whose scorer gives every pair 0.25, with no fusion: a re-ranker that tells nothing apart."""
    constant = copy.deepcopy(model)
    constant.config = dataclasses.replace(model.config, fusion_weight=0.0)
    with torch.no_grad():
        constant.scorer.head.weight.zero_()
        constant.scorer.head.bias.fill_(0.25)
        constant.scorer.alignment_scale.zero_()
    return constant


def test_rerank_with_a_constant_scorer_keeps_the_first_stage_order(rerank_inputs):
    """Equal scores must not count in the correct item's favour (a dead scorer is no re-ranker)."""
    model, sim, image_of, captions_of, tokens, mask, regions = rerank_inputs
    constant = constant_scorer(model)
    t2i = rerank_t2i_ranks(constant, sim, image_of, tokens, mask, regions, 5)
    i2t = rerank_i2t_ranks(constant, sim, captions_of, tokens, mask, regions, 5)
    assert t2i.tolist() == t2i_ranks(sim, image_of).tolist()
    assert i2t.tolist() == i2t_ranks(sim, captions_of).tolist()
    assert ((t2i > 0) & (t2i < 5)).any()  # not vacuous: some matches sit inside the list, below its top


def test_rerank_i2t_counts_a_word_for_word_copy_of_an_own_caption_as_correct(rerank_inputs):
    """Two images share a caption text: its copies tie exactly, and either one describes both."""
    model, _, _, _, tokens, mask, regions = rerank_inputs
    constant = constant_scorer(model)
    texts = ["a red circle", "a red circle", "a blue square"]  # captions 0 and 1 are copies
    captions_of = [[0], [1], [2]]
    sim = np.array([[0.9, 0.9, 0.1], [0.9, 0.9, 0.1], [0.2, 0.1, 0.8]], dtype=np.float32)  # (Nc, Ni)
    t, m = tokens[:1].expand(3, -1, -1).clone(), mask[:1].expand(3, -1).clone()
    by_index = rerank_i2t_ranks(constant, sim, captions_of, t, m, regions[:3], 3)
    describing = captions_describing(texts, captions_of)
    assert describing == [[0, 1], [0, 1], [2]]
    by_text = rerank_i2t_ranks(constant, sim, describing, t, m, regions[:3], 3)
    assert by_index.tolist() == [0, 1, 0]  # image 1's own caption sits behind the tied copy
    assert by_text.tolist() == [0, 0, 0]


def test_evaluate_matches_direct_encoding_and_brute_force(model_dir):
    model = AlignmentModel.from_pretrained(model_dir, device="cpu", fusion_weight=2.0)
    items = [
        CaptionedImage(Path(f"img{i}.png"), [f"picture {i} caption {k}" for k in range(1 + i % 3)]) for i in range(7)
    ]
    pixels = torch.stack([torch.from_numpy(np.asarray(draw_image(i, 32)).transpose(2, 0, 1).copy()) for i in range(7)])
    bank = encode_captions(model.text, items, cache_states=False)
    result = evaluate(model, pixels, bank, depth=3, candidates=3)  # search re-ranks its top `candidates`

    with torch.inference_mode():
        image = model.image(model.image.normalize(pixels))
        text = model.text.encode(bank.captions)
    sim = (text.global_ @ image.global_.T).numpy()
    assert bank.image_of.tolist() == [i for i, item in enumerate(items) for _ in item.captions]
    first_t2i, first_i2t = brute_t2i(sim.tolist(), bank.image_of.tolist()), brute_i2t(sim.tolist(), bank.captions_of)
    regions = image.regions.to(torch.float16)
    again_t2i = naive_rerank_t2i(model, sim, bank.image_of, text.tokens, text.mask, regions, 3)
    again_i2t = naive_rerank_i2t(model, sim, bank.captions_of, text.tokens, text.mask, regions, 3)

    def recall(ranks):
        return {f"R@{k}": pytest.approx(100.0 * sum(r < k for r in ranks) / len(ranks)) for k in (1, 5, 10)}

    assert result["images"] == 7 and result["captions"] == len(bank.captions) and result["rerank_depth"] == 3
    assert result["first_stage"]["t2i"] == recall(first_t2i)
    assert result["first_stage"]["i2t"] == recall(first_i2t)
    assert result["reranked"]["t2i"] == recall(again_t2i)
    assert result["reranked"]["i2t"] == recall(again_i2t)
    for block in ("first_stage", "reranked"):
        values = list(result[block]["t2i"].values()) + list(result[block]["i2t"].values())
        assert result[block]["mean_recall"] == pytest.approx(sum(values) / 6)


# --------------------------------------------------------------------------------------
# Batching and the validation split.
# --------------------------------------------------------------------------------------


def grouped_items(seed: int, count: int, max_group: int) -> list[CaptionedImage]:
    rng = random.Random(seed)
    items, g = [], 0
    while len(items) < count:
        size = rng.randint(1, max_group)
        group = None if size == 1 and rng.random() < 0.5 else f"g{g}"
        items += [CaptionedImage(Path(f"{len(items) + k}.png"), ["c"], group) for k in range(size)]
        g += 1
    items = items[:count]
    rng.shuffle(items)  # members of a group are not adjacent in the list
    return items


def check_batches(items, batches, batch_size) -> None:
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat)), "an image appears twice in one epoch"
    assert set(flat) <= set(range(len(items)))
    missing = set(range(len(items))) - set(flat)
    if len(items) % batch_size != 1:
        assert not missing, f"images {missing} left out"
    else:  # only when the images cannot all be placed: every batch full and one image over
        assert len(missing) <= 1
        if missing:
            assert all(len(batch) == batch_size for batch in batches)
    assert all(2 <= len(batch) <= batch_size for batch in batches), [len(b) for b in batches]
    where = {i: n for n, batch in enumerate(batches) for i in batch}
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if item.group is not None:
            groups.setdefault(item.group, []).append(i)
    for members in groups.values():
        placed = {where[i] for i in members if i in where}
        if len(members) <= batch_size:
            assert len(placed) <= 1, f"group {members} split over batches {placed}"
        else:
            assert len(placed) <= math.ceil(len(members) / batch_size)


@pytest.mark.parametrize("batch_size", [2, 3, 4, 8])
@pytest.mark.parametrize("max_group", [1, 3, 5])
def test_group_batches_properties(batch_size, max_group):
    for seed in range(25):
        items = grouped_items(seed, 10 + seed, max_group)
        batches = group_batches(items, batch_size, random.Random(seed))
        check_batches(items, batches, batch_size)
        assert batches == group_batches(items, batch_size, random.Random(seed))  # deterministic


def test_group_batches_examples():
    def items(*groups):
        return [CaptionedImage(Path(f"{i}.png"), ["c"], g) for i, g in enumerate(groups)]

    # a lone image before a group that fills a whole batch used to make a batch of one
    # (ITM then finds no negative: torch.multinomial fails on an all-zero row)
    for seed in range(10):
        check_batches(
            items(None, "a", "a", "b", "b", "b"),
            group_batches(items(None, "a", "a", "b", "b", "b"), 3, random.Random(seed)),
            3,
        )
        batches = group_batches(items(*"aaabbbccc"), 2, random.Random(seed))  # groups of 3, batches of 2
        check_batches(items(*"aaabbbccc"), batches, 2)
    ungrouped = items(*[None] * 20)
    shuffles = {tuple(map(tuple, group_batches(ungrouped, 8, random.Random(seed)))) for seed in range(5)}
    assert len(shuffles) > 1  # the order depends on the random generator
    assert [len(b) for b in group_batches(ungrouped, 8, random.Random(0))] == [8, 8, 4]
    assert group_batches(items(None), 4, random.Random(0)) == []  # one image cannot make a batch


def test_split_validation_holds_out_whole_groups():
    items = grouped_items(5, 40, 3)
    train_items, val_items = split_validation(items, 0.25, seed=1)
    assert sorted(map(id, train_items + val_items)) == sorted(map(id, items))
    train_groups = {it.group for it in train_items if it.group is not None}
    assert not train_groups & {it.group for it in val_items if it.group is not None}
    keys = len({it.group if it.group is not None else id(it) for it in items})
    assert len({it.group if it.group is not None else id(it) for it in val_items}) == round(keys * 0.25)
    assert split_validation(items, 0.25, seed=1) == (train_items, val_items)
    everything, nothing = split_validation(items, 0.0, seed=1)
    assert nothing == [] and sorted(map(id, everything)) == sorted(map(id, items))


# --------------------------------------------------------------------------------------
# Losses.
# --------------------------------------------------------------------------------------


def test_infonce_equals_hand_computed_cross_entropy():
    sim = [[0.9, 0.4, -0.2], [0.1, 0.8, 0.3], [-0.5, 0.2, 0.7]]
    positives = [[True, True, False], [False, True, False], [False, False, True]]  # caption 1 also fits image 0
    scale = 2.0
    logits = [[scale * s for s in row] for row in sim]

    def nll(values, target, allowed):
        return -(values[target] - math.log(sum(math.exp(values[j]) for j in allowed)))

    rows = [nll(logits[i], i, [j for j in range(3) if j == i or not positives[i][j]]) for i in range(3)]
    columns = [
        nll([logits[i][j] for i in range(3)], j, [i for i in range(3) if i == j or not positives[i][j]])
        for j in range(3)
    ]
    expected = (sum(rows) / 3 + sum(columns) / 3) / 2
    got = infonce_loss(torch.tensor(sim), torch.tensor(math.log(scale)), torch.tensor(positives))
    assert got.item() == pytest.approx(expected, rel=1e-6)

    # the scale is clamped at 100
    big = infonce_loss(torch.tensor(sim), torch.tensor(math.log(1e4)), torch.tensor(positives))
    assert big.item() == pytest.approx(
        infonce_loss(torch.tensor(sim), torch.tensor(math.log(100.0)), torch.tensor(positives)).item(), rel=1e-6
    )


def test_infonce_ignores_off_diagonal_positives():
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(5, 5, generator=g) * 2 - 1
    positives = torch.eye(5, dtype=torch.bool)
    positives[0, 3] = positives[4, 1] = True
    sim.requires_grad_(True)
    loss = infonce_loss(sim, torch.tensor(math.log(10.0)), positives)
    loss.backward()
    assert sim.grad[0, 3] == 0 and sim.grad[4, 1] == 0
    assert torch.all(sim.grad[~positives] != 0)  # every real negative matters
    changed = sim.detach().clone()
    changed[0, 3], changed[4, 1] = 50.0, -50.0
    assert infonce_loss(changed, torch.tensor(math.log(10.0)), positives).item() == pytest.approx(loss.item())
    # without the extra positives the loss is different (the masking is what the test sees)
    assert infonce_loss(changed, torch.tensor(math.log(10.0)), torch.eye(5, dtype=torch.bool)).item() != pytest.approx(
        loss.item()
    )


@pytest.mark.parametrize("seed", range(4))
def test_vsepp_matches_a_loop(seed):
    g = torch.Generator().manual_seed(seed)
    b, margin = 6, 0.2
    sim = torch.rand(b, b, generator=g) * 2 - 1
    positives = torch.eye(b, dtype=torch.bool) | (torch.rand(b, b, generator=g) < 0.2)
    if seed == 0:
        positives[2, :] = True  # image 2 has no negative caption: that term is 0
    s, p = sim.tolist(), positives.tolist()
    total = 0.0
    for i in range(b):
        row_negatives = [s[i][j] for j in range(b) if not p[i][j]]
        column_negatives = [s[k][i] for k in range(b) if not p[k][i]]
        if row_negatives:
            total += max(0.0, margin + max(row_negatives) - s[i][i])
        if column_negatives:
            total += max(0.0, margin + max(column_negatives) - s[i][i])
    assert vsepp_loss(sim, positives, margin).item() == pytest.approx(total / b, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("seed", range(3))
def test_alignment_matrix_equals_the_scorers_term_pair_by_pair(seed):
    g = torch.Generator().manual_seed(seed)
    captions, images, t, r, d = 5, 4, 7, 6, 8
    tokens = torch.randn(captions, t, d, generator=g)
    lengths = torch.randint(1, t - 1, (captions,), generator=g)  # the last column is padding everywhere
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (captions, t)
    regions = torch.randn(images, r, d, generator=g)
    matrix = alignment_matrix(tokens, mask, regions)
    assert matrix.shape == (images, captions)
    for i in range(images):
        for c in range(captions):
            pair = CrossAttentionScorer.alignment_score(tokens[c : c + 1], mask[c : c + 1], regions[i : i + 1])
            # and by hand: mean over real tokens of the best cosine
            cosines = torch.nn.functional.cosine_similarity(tokens[c, :, None], regions[i, None], dim=-1)  # (t, r)
            by_hand = cosines.amax(1)[: lengths[c]].mean()
            assert matrix[i, c].item() == pytest.approx(pair.item(), abs=1e-5)
            assert matrix[i, c].item() == pytest.approx(by_hand.item(), abs=1e-5)


def test_negative_weights_are_distributions_over_non_matches():
    g = torch.Generator().manual_seed(1)
    sim = torch.rand(6, 6, generator=g) * 2 - 1
    positives = torch.eye(6, dtype=torch.bool)
    positives[0, 2] = positives[3, 5] = positives[3, 0] = True
    for share in (0.0, 0.5, 1.0):
        weights = _negative_weights(sim, positives, share)
        assert torch.allclose(weights.sum(1), torch.ones(6))
        assert torch.all(weights[positives] == 0)
        assert torch.all(weights[~positives] > 0)
    s, p = sim.tolist(), positives.tolist()
    for i in range(6):  # hard part by hand: softmax(20 * sim) over the non-matches
        negatives = [j for j in range(6) if not p[i][j]]
        z = sum(math.exp(20 * s[i][j]) for j in negatives)
        for j in negatives:
            hard, uniform = math.exp(20 * s[i][j]) / z, 1 / len(negatives)
            assert _negative_weights(sim, positives, 1.0)[i, j].item() == pytest.approx(hard, rel=1e-4)
            assert _negative_weights(sim, positives, 0.0)[i, j].item() == pytest.approx(uniform)
            mixed = _negative_weights(sim, positives, 0.3)[i, j].item()
            assert mixed == pytest.approx(0.3 * hard + 0.7 * uniform, rel=1e-4)


class RecordingScorer(torch.nn.Module):
    """Stands in for the cross-attention scorer: records which (region, token) rows it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def forward(self, tokens, mask, regions):
        self.calls.append(
            (tokens[:, 0, 0].round().long().tolist(), regions[:, 0, 0].round().long().tolist(), mask.clone())
        )
        return torch.zeros(len(tokens))


def test_itm_never_draws_a_positive_as_negative():
    b, d = 6, 4
    tokens = torch.zeros(b, 3, d)
    tokens[:, 0, 0] = torch.arange(b)  # each row carries its index, so the pairing can be read back
    regions = torch.zeros(b, 5, d)
    regions[:, 0, 0] = torch.arange(b)
    mask = torch.ones(b, 3, dtype=torch.bool)
    mask[:, 2] = torch.arange(b) % 2 == 0
    positives = torch.eye(b, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = positives[2, 4] = positives[5, 3] = True
    # make the off-diagonal matches the most similar pairs: the hard sampler would pick them first
    sim = torch.full((b, b), -0.5)
    sim[positives] = 0.9
    sim[0, 3] = 0.8
    scorer = RecordingScorer()
    g = torch.Generator().manual_seed(0)
    seen_captions, seen_images = set(), set()
    for _ in range(300):
        loss, accuracy = itm_loss(scorer, regions, tokens, mask, sim, positives, generator=g, hard_share=0.5)
        token_rows, region_rows, masks = scorer.calls[-1]
        assert token_rows[:b] == list(range(b)) and region_rows[:b] == list(range(b))  # positives
        assert region_rows[b : 2 * b] == list(range(b)) and token_rows[2 * b :] == list(range(b))
        for i, caption in enumerate(token_rows[b : 2 * b]):  # image i with a negative caption
            assert not positives[i, caption], (i, caption)
            assert torch.equal(masks[b + i], mask[caption])
            seen_captions.add((i, caption))
        for j, image in enumerate(region_rows[2 * b :]):  # caption j with a negative image
            assert not positives[image, j], (image, j)
            seen_images.add((image, j))
        assert loss.item() == pytest.approx(math.log(2))  # zero logits: BCE is log 2
        assert accuracy == pytest.approx(2 / 3)  # logit 0 --> "no match": right on the 2B negatives
    assert seen_captions == {(i, j) for i in range(b) for j in range(b) if not positives[i, j]}
    assert seen_images == {(i, j) for i in range(b) for j in range(b) if not positives[i, j]}


def test_itm_loss_against_binary_cross_entropy_by_hand(model_dir):
    model = AlignmentModel.from_pretrained(model_dir, device="cpu")
    g = torch.Generator().manual_seed(2)
    b, d = 4, model.config.embed_dim
    tokens, regions = torch.randn(b, 5, d, generator=g), torch.randn(b, 16, d, generator=g)
    mask = torch.ones(b, 5, dtype=torch.bool)
    sim, positives = torch.rand(b, b, generator=g), torch.eye(b, dtype=torch.bool)
    loss, accuracy = itm_loss(
        model.scorer, regions, tokens, mask, sim, positives, generator=torch.Generator().manual_seed(7)
    )
    # replay the draws with the same generator seed
    replay = torch.Generator().manual_seed(7)
    neg_caption = torch.multinomial(_negative_weights(sim, positives, 0.5), 1, generator=replay).squeeze(1)
    neg_image = torch.multinomial(_negative_weights(sim.T, positives.T, 0.5), 1, generator=replay).squeeze(1)

    def logit(caption: int, image: int) -> float:  # one pair at a time
        with torch.no_grad():
            return model.scorer(
                tokens[caption : caption + 1], mask[caption : caption + 1], regions[image : image + 1]
            ).item()

    logits = [logit(i, i) for i in range(b)]
    logits += [logit(n, i) for i, n in enumerate(neg_caption.tolist())]
    logits += [logit(j, n) for j, n in enumerate(neg_image.tolist())]
    labels = [1.0] * b + [0.0] * (2 * b)
    bce = [
        -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))
        for z, y in zip(logits, labels)
    ]
    assert loss.item() == pytest.approx(sum(bce) / len(bce), rel=1e-4)
    assert accuracy == pytest.approx(sum((z > 0) == (y == 1) for z, y in zip(logits, labels)) / len(labels))


# --------------------------------------------------------------------------------------
# train(): a tiny run end to end.
# --------------------------------------------------------------------------------------

TINY_RUN = TrainConfig(
    epochs=2,
    batch_size=8,
    val_fraction=0.25,
    log_every=1,
    rerank_depth=5,
    warmup_steps=2,
    lr=3e-3,
    fusion_grid=(0.0, 5.0),
)


@pytest.fixture(scope="module")
def captioned_images(tmp_path_factory) -> Path:
    """24 generated 32px images with 2 or 3 captions each, and captions.tsv beside them."""
    root = tmp_path_factory.mktemp("captioned")
    colours = ["red", "green", "blue", "yellow", "purple", "cyan"]
    rows = []
    for i in range(24):
        draw_image(100 + i, 32).save(root / f"img_{i:02d}.png")
        for k in range(2 + i % 2):
            rows.append(f"img_{i:02d}.png\ta {colours[(i + k) % 6]} shape, picture {i} take {k}\n")
    (root / "captions.tsv").write_text("image\tcaption\n" + "".join(rows))
    return root


def new_model(tiny_bert_dir, seed: int = 0, **overrides) -> AlignmentModel:
    torch.manual_seed(seed)
    return AlignmentModel.initialize(small_config(tiny_bert_dir, **overrides))


def run_training(tiny_bert_dir, captioned_images, out, config=TINY_RUN, resume=False, **overrides):
    items = read_captions(captioned_images / "captions.tsv")
    return train(new_model(tiny_bert_dir, **overrides), items, out, config, resume=resume)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir, captioned_images, one_thread):
    """(model directory, summary) of one tiny 2-epoch run."""
    out = tmp_path_factory.mktemp("trained") / "model"
    return out, run_training(tiny_bert_dir, captioned_images, out)


def test_train_saves_a_loadable_model_and_training_json(trained, tiny_bert_dir, captioned_images):
    out, summary = trained
    model = AlignmentModel.from_pretrained(out, device="cpu")
    assert model.config.fusion_weight == summary["fusion_weight"] and summary["fusion_weight"] in TINY_RUN.fusion_grid
    record = json.loads((out / "training.json").read_text())
    assert record == json.loads(json.dumps(summary))
    assert (record["train_images"], record["val_images"]) == (18, 6)
    train_items, _ = split_validation(read_captions(captioned_images / "captions.tsv"), 0.25, TINY_RUN.seed)
    assert record["train_captions"] == sum(len(item.captions) for item in train_items)
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert record["steps"] == record["history"][-1]["step"] == 2 * 3  # 18 images in batches of 8: 8 + 8 + 2
    assert record["config"]["epochs"] == 2 and record["stopped_early"] is False
    for epoch in record["history"]:  # the first stage trains alone: no re-ranked numbers yet
        assert set(epoch["val"]["first_stage"]) == {"t2i", "i2t", "mean_recall"}
        assert epoch["val"]["reranked"] is None
    assert record["scorer_history"][-1]["epoch"] == TINY_RUN.scorer_epochs
    for epoch in record["scorer_history"]:
        for block in ("first_stage", "reranked"):
            assert set(epoch["val"][block]) == {"t2i", "i2t", "mean_recall"}
            assert set(epoch["val"][block]["t2i"]) == {"R@1", "R@5", "R@10"}
            assert epoch["val"][block]["t2i"]["R@10"] == 100.0  # only 6 validation images
    # training moved the weights away from the initial ones, in every part
    initial = new_model(tiny_bert_dir).state_dict()
    saved = load_file(str(out / WEIGHTS_NAME))
    for prefix in ("image.backbone.", "image.global_head.", "text.global_head.", "scorer."):
        keys = [k for k in saved if k.startswith(prefix)]
        assert keys and any(not torch.equal(saved[k], initial[k]) for k in keys), prefix
    assert not any(k.startswith("text.bert.") for k in saved)  # BERT is frozen and not carried
    assert (out / STATE_NAME).exists()


def test_train_is_reproducible_with_the_same_seed(trained, tmp_path, tiny_bert_dir, captioned_images):
    out, summary = trained
    again = run_training(tiny_bert_dir, captioned_images, tmp_path / "again")
    first, second = load_file(str(out / WEIGHTS_NAME)), load_file(str(tmp_path / "again" / WEIGHTS_NAME))
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, different

    def strip_times(s):
        return {**s, "train_seconds": 0, "history": [{**h, "elapsed_s": 0} for h in s["history"]]}

    assert strip_times(again) == strip_times(summary)


def test_train_resume_continues_the_history(tmp_path, tiny_bert_dir, captioned_images, monkeypatch):
    out = tmp_path / "model"
    spy = FsyncSpy(monkeypatch)
    first = run_training(tiny_bert_dir, captioned_images, out, dataclasses.replace(TINY_RUN, epochs=1))
    for name in (STATE_NAME, WEIGHTS_NAME, CONFIG_NAME):  # a power cut leaves the old file or the new one
        spy.assert_durable(out / name)
    monkeypatch.undo()
    assert [h["epoch"] for h in first["history"]] == [1]
    state = torch.load(out / STATE_NAME, weights_only=True)  # tensors and plain data only
    assert state["epoch"] == 1 and state["step"] == first["steps"] == 3

    resumed = run_training(tiny_bert_dir, captioned_images, out, TINY_RUN, resume=True)
    history = json.loads((out / "training.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first["history"][0]  # epoch 1 was not trained again
    assert history[1]["step"] == resumed["steps"] == 6
    assert AlignmentModel.from_pretrained(out, device="cpu").config.fusion_weight == resumed["fusion_weight"]

    # resuming a finished run trains nothing more
    again = run_training(tiny_bert_dir, captioned_images, out, TINY_RUN, resume=True)
    assert again["steps"] == 6 and len(again["history"]) == 2


class Planted:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_train_resume_refuses_a_state_file_that_would_run_code(tmp_path, tiny_bert_dir, captioned_images):
    out, marker = tmp_path / "model", tmp_path / "code-ran"
    out.mkdir()
    torch.save({"model": Planted(marker), "epoch": 1}, out / STATE_NAME)  # planted in a shared --out folder

    with pytest.raises(ImgsearchError, match="holds more than tensors and plain data.*new --out directory"):
        run_training(tiny_bert_dir, captioned_images, out, TINY_RUN, resume=True)

    assert not marker.exists()
    assert not (out / WEIGHTS_NAME).exists()


def test_every_torch_load_passes_weights_only_true():
    """torch versions the project allows still default to weights_only=False (unpickling), so
    every torch.load says weights_only=True itself. (bench/ is left out until its loads do.)"""
    root = Path(__file__).parents[1]
    calls = []
    for package in (
        "imgsearch",
        "ground",
        "images",
        "storage",
        "indexer",
        "search",
        "training",
        "data",
        "scripts",
        "tests",
        "bench",
    ):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    flags = {k.arg: k.value for k in node.keywords}
                    safe = isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True
                    calls.append((where, safe))
    assert any(where.startswith("training/trainer.py") for where, _ in calls)
    assert [where for where, safe in calls if not safe] == []


class Interrupted(Exception):
    pass


def test_train_resumed_after_an_interruption_equals_an_uninterrupted_run(
    trained, tmp_path, tiny_bert_dir, captioned_images, monkeypatch
):
    import imgsearch.training.trainer as trainer

    calls = []

    def interrupting(*args):  # call 1 counts the steps, call 2 is epoch 1, call 3 would start epoch 2
        calls.append(args)
        if len(calls) == 3:
            raise Interrupted
        return group_batches(*args)

    out = tmp_path / "model"
    monkeypatch.setattr(trainer, "group_batches", interrupting)
    with pytest.raises(Interrupted):
        run_training(tiny_bert_dir, captioned_images, out)
    monkeypatch.undo()
    assert torch.load(out / STATE_NAME, weights_only=True)["epoch"] == 1 and not (out / "training.json").exists()

    resumed = run_training(tiny_bert_dir, captioned_images, out, resume=True)
    # the optimizer, schedule, temperature and both random generators continue where they stopped
    reference, _ = trained
    first, second = load_file(str(reference / WEIGHTS_NAME)), load_file(str(out / WEIGHTS_NAME))
    assert not [k for k in first if not torch.equal(first[k], second[k])]
    assert [h["val"] for h in resumed["history"]] == [h["val"] for h in trained[1]["history"]]


def test_train_local_weight_trains_the_region_and_token_heads_in_the_first_stage(
    trained, tmp_path, tiny_bert_dir, captioned_images
):
    initial = new_model(tiny_bert_dir).state_dict()
    plain = load_file(str(trained[0] / WEIGHTS_NAME))
    out = tmp_path / "local"
    config = dataclasses.replace(TINY_RUN, local_weight=1.0, scorer_epochs=0)
    summary = run_training(tiny_bert_dir, captioned_images, out, config)
    assert summary["fusion_weight"] == 0.0  # no re-ranker stage: no fusion weight is chosen
    saved = load_file(str(out / WEIGHTS_NAME))
    for key in ("image.region_head.linear.weight", "text.token_head.linear.weight", "scorer.region_position"):
        assert not torch.equal(saved[key], initial[key]), key  # moved by the first stage alone
    # the same heads without the alignment loss are left at their initial values by the first stage
    no_local = tmp_path / "no-local"
    run_training(tiny_bert_dir, captioned_images, no_local, dataclasses.replace(config, local_weight=0.0))
    untouched = load_file(str(no_local / WEIGHTS_NAME))
    assert torch.equal(untouched["image.region_head.linear.weight"], initial["image.region_head.linear.weight"])
    assert plain.keys() == saved.keys()


def test_train_frozen_backbone_is_unchanged_and_its_features_cached(tmp_path, tiny_bert_dir, captioned_images):
    backbone = dataclasses.replace(SMALL_BACKBONE, batch_norm=True)  # running statistics must not move either
    initial = {k: v.clone() for k, v in new_model(tiny_bert_dir, backbone=backbone).state_dict().items()}
    out = tmp_path / "frozen"
    config = dataclasses.replace(TINY_RUN, epochs=1, backbone_mode="frozen")
    run_training(tiny_bert_dir, captioned_images, out, config, backbone=backbone)
    saved = load_file(str(out / WEIGHTS_NAME))
    backbone_keys = [k for k in saved if k.startswith("image.backbone.")]
    assert any("running_mean" in k for k in backbone_keys)
    for key in backbone_keys:
        assert torch.equal(saved[key], initial[key]), key
    assert not torch.equal(saved["image.global_head.linear.weight"], initial["image.global_head.linear.weight"])

    caches = list(out.glob("backbone-features-*.pt"))
    assert len(caches) == 1 and not list(out.glob("*.tmp"))
    regions, global_ = torch.load(caches[0], weights_only=True)
    # the cache holds the backbone's outputs for the training images, in training order
    train_items, _ = split_validation(read_captions(captioned_images / "captions.tsv"), 0.25, 0)
    pixels = load_images(train_items, 32).pixels
    model = new_model(tiny_bert_dir, backbone=backbone).eval()
    with torch.inference_mode():
        want_regions, want_global = model.image.backbone(model.image.normalize(pixels))
    assert regions.dtype == torch.float16 and regions.shape == want_regions.shape
    # the cache runs channels-last in chunks (ImageEncoder.backbone_features): float32 rounding
    # may move a value across a float16 step, hence one float16 step of tolerance
    torch.testing.assert_close(regions.float(), want_regions.to(torch.float16).float(), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(global_.float(), want_global.to(torch.float16).float(), rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------
# The command line.
# --------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_train_refuses_an_out_that_holds_a_model(trained, captioned_images, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "config.json").write_text((trained[0] / "config.json").read_text())
    result = invoke("train", captioned_images / "captions.tsv", "--out", out, "--preset", "scenes")
    assert result.exit_code == 1, result.output
    assert "Error:" in result.stderr and "already holds a model" in result.stderr and "--resume" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # nothing written


def test_train_reports_a_bad_captions_file(captioned_images, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("picture\tcaption\na.png\tx\n")
    result = invoke("train", bad, "--out", tmp_path / "out", "--preset", "scenes")
    assert result.exit_code == 1, result.output
    assert "Error:" in result.stderr and "header must name an image column" in result.stderr


def test_train_command_runs_the_scenes_preset(tmp_path, tiny_bert_dir, captioned_images):
    images = tmp_path / "few"
    images.mkdir()
    rows = (captioned_images / "captions.tsv").read_text().splitlines()[1:]
    kept = [r for r in rows if int(r.split("\t")[0][4:6]) < 12]
    (images / "captions.tsv").write_text("image\tcaption\n" + "\n".join(kept) + "\n")
    out = tmp_path / "model"
    result = invoke(
        "train",
        images / "captions.tsv",
        "--images",
        captioned_images,
        "--out",
        out,
        "--preset",
        "scenes",
        "--text-encoder",
        tiny_bert_dir,
        "--epochs",
        1,
        "--batch-size",
        8,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["train_images"] + summary["val_images"] == 12 and "history" not in summary
    model = AlignmentModel.from_pretrained(out, device="cpu")
    assert model.config.backbone.image_size == 64 and model.config.text.name_or_path == str(tiny_bert_dir)
    assert json.loads((out / "training.json").read_text())["config"]["backbone_mode"] == "scratch"

    again = [
        "train",
        images / "captions.tsv",
        "--images",
        captioned_images,
        "--out",
        out,
        "--preset",
        "scenes",
        "--text-encoder",
        tiny_bert_dir,
        "--epochs",
        1,
        "--batch-size",
        8,
    ]
    refused = invoke(*again)
    assert refused.exit_code == 1 and "already holds a model" in refused.stderr
    resumed = invoke(*again, "--resume")  # all epochs done: nothing more to train, the model is saved again
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["steps"] == summary["steps"]


def test_train_shows_its_progress_on_stderr_without_verbose(tmp_path, tiny_bert_dir, captioned_images):
    """Training logs through `logging` (imgsearch.training); `imgsearch train` lets its INFO
    lines through the CLI's WARNING default, on stderr, and keeps stdout for the summary."""
    stderr = tmp_path / "stderr.txt"
    stderr.touch()
    child = CliProcess(
        [
            "train",
            captioned_images / "captions.tsv",
            "--out",
            tmp_path / "model",
            "--preset",
            "scenes",
            "--text-encoder",
            tiny_bert_dir,
            "--epochs",
            1,
            "--batch-size",
            8,
            "--scorer-epochs",
            1,
            "--val-fraction",
            0.25,
        ],
        tmp_path / "stdout.txt",
        stderr_to=str(stderr),
    )
    assert child.wait(300) == 0, child.text() + stderr.read_text()
    progress = stderr.read_text()
    for line in (
        "INFO: loading 18 training and 6 validation images at 64px",
        "INFO: encoding 45 captions with the text encoder",
        "INFO: epoch 1 validation (",
        "INFO: re-ranker epoch 1/1: listwise loss",
        "INFO: kept the re-ranker of second-stage epoch",
    ):
        assert line in progress, progress
    assert json.loads(child.text())["train_images"] == 18  # stdout: the summary alone


def test_eval_json_matches_evaluate(trained, captioned_images):
    out, _ = trained
    result = invoke(
        "eval", captioned_images / "captions.tsv", "--model", out, "--rerank-depth", 5, "--device", "cpu", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 24 and report["captions"] == 60 and report["rerank_depth"] == 5
    for block in ("first_stage", "reranked"):
        for direction in ("t2i", "i2t"):
            assert set(report[block][direction]) == {"R@1", "R@5", "R@10"}
            values = [report[block][direction][k] for k in ("R@1", "R@5", "R@10")]
            assert all(0.0 <= v <= 100.0 for v in values) and values == sorted(values)
        assert 0.0 <= report[block]["mean_recall"] <= 100.0

    model = AlignmentModel.from_pretrained(out, device="cpu")
    items = read_captions(captioned_images / "captions.tsv")
    bank_images = load_images(items, 32)
    direct = evaluate(model, bank_images.pixels, encode_captions(model.text, bank_images.items, cache_states=False), 5)
    assert report == json.loads(json.dumps(direct))

    table = invoke("eval", captioned_images / "captions.tsv", "--model", out, "--rerank-depth", 5, "--device", "cpu")
    assert table.exit_code == 0 and "first_stage" in table.stdout and "reranked" in table.stdout


@pytest.mark.parametrize("command", ["train", "eval"])
def test_training_commands_have_help_with_an_example(command):
    result = invoke(command, "-h")
    assert result.exit_code == 0 and "Example" in result.output and "--help" in result.output


def test_train_options_take_their_defaults_from_train_config():
    """One source for training's defaults: TrainConfig (training/config.py). --backbone-mode's default
    is the preset's, --no-augment turns TrainConfig.augment off."""
    from imgsearch.train_commands import train_command

    defaults = TrainConfig()
    given = train_command.make_context("train", ["captions.tsv", "--out", "model"], resilient_parsing=True).params
    shared = sorted(name for name in given if hasattr(defaults, name) and name != "backbone_mode")
    assert len(shared) == 15, shared
    assert {name: given[name] for name in shared} == {name: getattr(defaults, name) for name in shared}
    assert given["backbone_mode"] is None and given["no_augment"] is False and defaults.augment
