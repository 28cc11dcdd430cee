"""The model core: backbones, image and text encoders, projection heads, the cross-attention
scorer and model directories. The write side (indexer), the read side (search) and training
all import it; it imports none of them."""
