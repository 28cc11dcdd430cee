"""The packaged photo model (a data-only package: config.json, model.safetensors, labels.txt;
model/model_files.py names them)."""
