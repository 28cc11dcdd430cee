"""imgsearch.server: the HTTP service over one index (`imgsearch serve`, docs/api.md).

- app.py         the FastAPI app: every endpoint is one library call on a shared Index
- middleware.py  security headers on every response; the Host check on loopback
- http_errors.py the one table of error statuses, and the handler that answers every error with it
- schemas.py     request fields, response shapes, the OpenAPI text of JSON-or-multipart bodies
- uploads.py     request bodies: size cap, JSON or in-memory multipart (never on disk)
- thumbnails.py  the thumbnail cache under <index>/thumbnails/ and guarded decoding of stored files
- run.py         serve(): open the index once, warm the model, run uvicorn
- static/        the web page, served at /

Nothing is imported here, so `import imgsearch.server` loads neither torch nor FastAPI.
"""

__all__: list[str] = []
