"""The packaged photo model (a data-only package: config.json, model.safetensors)."""
