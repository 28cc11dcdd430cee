"""Storage, what an index directory holds: the SQLite store (store.py, the truth; its schema's
numbered migrations in migrations.py), the FAISS vectors derived from it (vectors.py), both
kept in step (stored_index.py), the manifest, the writer's and the saver's locks, and paths as
SQLite text. The write side (indexer), the read side (search) and imgsearch.index all read it;
it imports only the ground floor and image decoding (a migration reads EXIF dates).

Import the modules themselves (imgsearch.storage.store, imgsearch.storage.vectors, ...): this
package imports nothing, so that light modules (paths, lock, manifest) load without torch.
"""
