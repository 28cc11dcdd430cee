"""The files of an alignment model directory (no heavy imports: the command line's --help
names the packaged model's directory). model/checkpoint.py reads and writes them."""

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "imgsearch-alignment"  # config.json["format"]: guards against pointing at other models
