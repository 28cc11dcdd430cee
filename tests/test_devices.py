"""The code paths that choose a device, for each device: the CPU everywhere, CUDA where a GPU is.

The `cuda` cases skip on a machine without one (CI has none); scripts/cuda_suite.sh runs the
suite on a GPU machine. Each CUDA case's oracle is the same work on the CPU in float32: indexing
on a GPU runs the backbone under float16 autocast and re-ranks in bfloat16, so vectors agree to
about 1e-3 and scores to about 1e-2, not bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgsearch.ground.errors import ModelConfigError
from imgsearch.index import Index
from imgsearch.model.device import resolve_device, runs_on_cpu
from imgsearch.model.fast_scorer import default_compute_dtype, score_candidates_fast
from index_oracle import rows_of
from test_fast_scorer import inputs, make_scorer

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")
QUERIES = ["a red circle", "a small blue square on the left", "green"]


def test_auto_is_cuda_exactly_where_a_gpu_is():
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_device("cpu").type == "cpu"
    assert runs_on_cpu("cpu")
    if HAS_CUDA:  # the numpy query runtime (CPU only) must not be chosen for "auto"
        assert not runs_on_cpu("auto")


def test_cuda_without_a_gpu_is_a_clear_error_and_with_one_resolves():
    if HAS_CUDA:
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ModelConfigError, match="no CUDA GPU is available"):
            resolve_device("cuda")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_default_compute_dtype_of_the_reranker(device):
    dtype = default_compute_dtype(torch.device(device))
    if device == "cuda":
        assert dtype == torch.bfloat16
    else:
        assert dtype in (torch.float32, torch.bfloat16)  # bfloat16 only where the CPU runs it natively


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reranking_on_cuda_equals_the_reference_on_the_cpu(dtype):
    scorer = make_scorer()
    query, mask, regions = inputs(100, seed=11)
    with torch.inference_mode():
        expected = scorer.score_candidates(query, mask, regions).numpy()  # CPU, float32
        cuda_scorer = make_scorer().cuda()
        got = score_candidates_fast(cuda_scorer, query.cuda(), mask.cuda(), regions.cuda(), dtype).cpu().numpy()
    tolerance = 1e-4 if dtype == torch.float32 else 0.05 * float(expected.std())
    np.testing.assert_allclose(got, expected, atol=tolerance)


@needs_cuda
def test_an_index_made_and_searched_on_cuda_equals_one_made_on_the_cpu(tmp_path, model_dir, image_folder):
    with Index.create(tmp_path / "cpu", model_dir, device="cpu") as reference:
        reference.add([image_folder], workers=0, batch_size=4)
        expected = rows_of(reference)
        expected_results = {
            (q, rerank): reference.search(q, 100, rerank=rerank, collapse_duplicates=False)
            for q in QUERIES
            for rerank in (False, True)
        }
    with Index.create(tmp_path / "cuda", model_dir, device="auto") as index:
        assert index.device.type == "cuda"
        index.add([image_folder], workers=1, batch_size=4)  # a decode worker feeding the GPU
        rows = rows_of(index)
        assert rows.keys() == expected.keys()
        for path, row in rows.items():
            want = expected[path]
            assert (row.status, row.sha256) == (want.status, want.sha256), path
            if row.status == "ok":  # float16 autocast against float32: unit vectors agree closely
                assert float(np.dot(row.vector, want.vector)) > 0.999, path
        for (query, rerank), want in expected_results.items():
            got = index.search(query, 100, rerank=rerank, collapse_duplicates=False)
            assert [r.path for r in got] != [] and len(got) == len(want)
            want_score = {r.path: r.score for r in want}
            spread = float(np.std([r.score for r in want])) or 1.0
            for result in got:  # every image's score within a small share of the scores' spread
                assert abs(result.score - want_score[result.path]) <= 0.05 * spread, (query, rerank, result.path)
