"""Format an InfoNCE-vs-VSE++ run (bench/experiments/compare_losses.sh) as a Markdown section on stdout."""

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import torch


def read_run(directory: Path) -> dict:
    """training.json of a finished run; for a run stopped early, what its training-state.pt holds."""
    if (directory / "training.json").exists():
        return json.loads((directory / "training.json").read_text())
    state = torch.load(directory / "training-state.pt", weights_only=True)
    return {"history": state["history"], "train_seconds": state["elapsed"], "config": None, "val_images": None}


runs = {Path(p).name: read_run(Path(p)) for p in sys.argv[1:]}
first = next(run for run in runs.values() if run["config"] is not None)
print(f"""
## First-stage loss: InfoNCE vs VSE++ on Flickr8k, {dt.date.today()} (bench/experiments/compare_losses.sh)

Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU only. Preset `small`
(backbone from scratch), batch {first["config"]["batch_size"]}, lr {first["config"]["lr"]}, \
seed {first["config"]["seed"]},
{first["config"]["epochs"]} epochs, no re-ranker stage. Validation: {first["val_images"]} held-out train images
(their captions as queries), text->image recall and mean recall of both directions, after each epoch.

| epoch | {" | ".join(f"{name} t2i R@1 | R@10 | mean" for name in runs)} |
|---|{"---|---|---|" * len(runs)}""")
for epoch in range(max(len(r["history"]) for r in runs.values())):
    cells = []
    for run in runs.values():
        if epoch < len(run["history"]):
            block = run["history"][epoch]["val"]["first_stage"]
            cells += [f"{block['t2i']['R@1']:.1f}", f"{block['t2i']['R@10']:.1f}", f"{block['mean_recall']:.1f}"]
        else:
            cells += ["", "", ""]
    print(f"| {epoch + 1} | {' | '.join(cells)} |")
print(
    "\nTraining seconds: "
    + ", ".join(f"{name} {run['train_seconds']:.0f}" for name, run in runs.items())
    + f". Load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}."
)
