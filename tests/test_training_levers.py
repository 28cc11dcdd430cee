"""Issue 20's training levers against oracles: the multi-positive loss against a per-caption
loop, mixed batches' composition, and a tiny run with every lever that writes a hubness bank
equal to the trained text head on the sampled captions."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from conftest import draw_image
from imgsearch.model.alignment import AlignmentModel
from imgsearch.training.captions import CaptionedImage, read_captions
from imgsearch.training.data import ImageBank
from imgsearch.training.losses import multi_positive_infonce_loss
from imgsearch.training.trainer import _Data, _epoch_batches, train
from test_training import TINY_RUN, captioned_images, new_model  # noqa: F401 (a fixture)


@pytest.mark.parametrize("seed", range(3))
def test_multi_positive_loss_matches_a_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    images, per_image = 4, [2, 3, 1, 2]
    owner = torch.tensor([i for i, n in enumerate(per_image) for _ in range(n)])  # (8,)
    sim = torch.rand(images, len(owner), generator=generator) * 2 - 1  # (4, 8)
    positives = owner[None, :] == torch.arange(images)[:, None]
    positives[2, 0] = True  # caption 0 (image 0's) also describes image 2: left out of image 2's denominators
    scale = torch.tensor(math.log(10.0))
    logits = (sim * 10.0).tolist()
    t2i = []
    for j, i in enumerate(owner.tolist()):  # caption j against every image except other true matches
        allowed = [k for k in range(images) if k == i or not positives[k, j]]
        t2i.append(-(logits[i][j] - math.log(sum(math.exp(logits[k][j]) for k in allowed))))
    i2t = []
    for i in range(images):
        own = [j for j in range(len(owner)) if owner[j] == i]
        allowed = [j for j in range(len(owner)) if owner[j] == i or not positives[i, j]]
        norm = math.log(sum(math.exp(logits[i][j]) for j in allowed))
        i2t.append(-sum((logits[i][j] - norm) / len(own) for j in own))
    expected = (np.mean(t2i) + np.mean(i2t)) / 2
    assert multi_positive_infonce_loss(sim, scale, owner, positives).item() == pytest.approx(expected, rel=1e-5)


def _data(primary: int, mixed: int) -> _Data:
    items = [CaptionedImage(f"p{i}.png", ["x"]) for i in range(primary)] + [
        CaptionedImage(f"m{i}.png", ["y"]) for i in range(mixed)
    ]
    bank = ImageBank(items, torch.zeros(len(items), 3, 2, 2, dtype=torch.uint8), [])
    return _Data(bank, None, None, None, None, primary)


@pytest.mark.parametrize(("primary", "mixed", "share"), [(50, 7, 0.33), (40, 100, 0.5), (30, 0, 0.5)])
def test_mixed_batches_cover_the_first_set_once_and_take_their_share_of_the_second(primary, mixed, share):
    config = dataclasses.replace(TINY_RUN, batch_size=12, mix_share=share)
    batches = _epoch_batches(_data(primary, mixed), config, random.Random(0))
    first = sorted(i for b in batches for i in b if i < primary)
    assert first == list(range(primary)) or len(first) == primary - 1  # group_batches may leave one out
    if not mixed:
        return
    take = round(12 * share)
    for batch in batches:
        second = [i for i in batch if i >= primary]
        assert len(second) == take and len(set(second)) == take and len(batch) <= 12
    drawn = [i for b in batches for i in b if i >= primary]
    assert set(drawn) <= set(range(primary, primary + mixed))
    if len(drawn) >= mixed:  # a whole pass over the second set before any repeats
        assert set(drawn[:mixed]) == set(range(primary, primary + mixed))


def test_a_run_with_every_lever_writes_a_hubness_bank_of_its_text_head(
    tmp_path,
    tiny_bert_dir,
    captioned_images,  # noqa: F811 - the fixture imported above
):
    items = read_captions(captioned_images / "captions.tsv")
    mix_root = tmp_path / "mix"
    mix_root.mkdir()
    mix = []
    for i in range(10):
        draw_image(500 + i, 32).save(mix_root / f"web_{i}.png")
        mix.append(CaptionedImage(mix_root / f"web_{i}.png", [f"a web picture number {i}"]))
    config = dataclasses.replace(
        TINY_RUN,
        epochs=1,
        multi_positive=True,
        mix_share=0.25,
        hubness_weight=0.5,
        hubness_bank=20,
        local_weight=1.0,
        scorer_epochs=0,
        backbone_mode="frozen",
    )
    out = tmp_path / "model"
    summary = train(new_model(tiny_bert_dir), items, out, config, mix=mix)
    assert summary["train_images"] == 18 + 10
    model = AlignmentModel.from_pretrained(out, device="cpu")
    assert model.config.hubness.weight == 0.5 and model.config.hubness.bank_size == 20
    # the bank: the trained text head's vectors of 20 captions of the first data set (not the mixed-in one)
    bank_texts = {c for item in items for c in item.captions}
    with torch.inference_mode():
        every = model.text.encode(sorted(bank_texts)).global_  # (N, d)
        web = model.text.encode([c for m in mix for c in m.captions]).global_
    bank = model.hubness.bank.float()
    nearest = (bank @ every.T).max(dim=1).values  # each bank vector is one of the first set's captions
    assert torch.allclose(nearest, torch.ones_like(nearest), atol=2e-3)
    assert (bank @ web.T).max() < 0.999
