"""Image decoding (decode.py), one module for all who read images: the indexer, a query by
photo, the server's uploads and thumbnails, and training. It imports only the ground floor.

Import the module itself (imgsearch.images.decode): this package imports nothing.
"""
