"""Format one Flickr8k benchmark run as a Markdown section (printed on stdout)."""

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.benchmarks.machine import commit

out, train_seconds, eval_seconds, data = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
result = json.loads((out / "eval.json").read_text())
training = json.loads((out / "model" / "training.json").read_text())
first, reranked = result["first_stage"], result["reranked"]


def row(name, block):
    t, i = block["t2i"], block["i2t"]
    return (
        f"| {name} | {t['R@1']:.1f} | {t['R@5']:.1f} | {t['R@10']:.1f} | "
        f"{i['R@1']:.1f} | {i['R@5']:.1f} | {i['R@10']:.1f} | {block['mean_recall']:.1f} |"
    )


gain = (reranked["t2i"]["R@1"] / first["t2i"]["R@1"] - 1) * 100 if first["t2i"]["R@1"] else float("nan")
print(f"""
## Flickr8k dev, {dt.date.today()} (bench/benchmarks/flickr8k.sh)

Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU only. Commit {commit()}.
Preset `small` (backbone trained from scratch), text encoder: packaged all-MiniLM-L6-v2 (frozen).
Training: {training["train_images"]} images / {training["train_captions"]} captions, {training["steps"]} steps,
{training["train_seconds"]:.0f} s of training, both stages ({train_seconds} s wall with loading); \
evaluation {eval_seconds} s.
Options: first-stage time limit {(training["config"]["time_limit_s"] or 0) / 60:.0f} min, \
loss {training["config"]["loss"]},
local (alignment-term) weight {training["config"].get("local_weight", 0.0)}, \
{training["config"]["scorer_epochs"]} re-ranker epochs.
Load average at the end: {" / ".join(f"{x:.1f}" for x in os.getloadavg())} \
(other work shared the 2 cores when it is above 2).
Fusion weight chosen on a held-out slice of train: {training["fusion_weight"]}. Re-rank depth {result["rerank_depth"]}.
Data: {data}; dev: {result["images"]} images, {result["captions"]} captions.

| stage | t2i R@1 | R@5 | R@10 | i2t R@1 | R@5 | R@10 | mean |
|---|---|---|---|---|---|---|---|
{row("first stage", first)}
{row("re-ranked", reranked)}

Text->image R@1 change from re-ranking: {gain:+.1f}% relative (target: at least +20%).
Text->image R@10 after re-ranking: {reranked["t2i"]["R@10"]:.1f}% (target: at least 15%).
""")
