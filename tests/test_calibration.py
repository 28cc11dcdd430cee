"""The relevance scale (model/calibration.py) and its fitting (training/calibration.py), each
held to an oracle: scikit-learn's own isotonic prediction, a naive loop over captions, and in
search, the curves applied by hand to the raw scores search reports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from imgsearch import Index
from imgsearch.ground.errors import InvalidQuery, ModelConfigError
from imgsearch.model.calibration import CALIBRATION_NAME, Calibration, Curve, read_calibration
from imgsearch.training.calibration import caption_matches, fit_curve, nonsense_queries, opening_phrase


def test_a_curve_predicts_as_the_isotonic_regression_it_was_fitted_with():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(0)
    scores = rng.normal(size=3000)
    matched = rng.random(3000) < 1 / (1 + np.exp(-2 * scores))
    curve = fit_curve(scores, matched, max_knots=10_000)  # every knot kept
    oracle = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, matched.astype(float))
    probe = np.r_[rng.normal(size=500) * 1.5, -10.0, 10.0]
    np.testing.assert_allclose(curve(probe), oracle.predict(probe), atol=1e-5)  # knots kept to 6 decimals
    thinned = fit_curve(scores, matched, max_knots=50)
    assert len(thinned.x) <= 50
    assert np.all(np.diff(thinned(np.sort(probe))) >= 0)  # still monotone
    assert np.abs(thinned(probe) - oracle.predict(probe)).max() < 0.1


def test_a_curve_refuses_knots_that_are_not_a_probability_map():
    with pytest.raises(ValueError, match="non-decreasing"):
        Curve((0.0, 1.0), (0.6, 0.2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Curve((0.0, 1.0), (0.1, 1.2))
    with pytest.raises(ValueError, match="finite"):
        Curve((0.0, float("nan")), (0.1, 0.2))


def _calibration(good: float = 0.5) -> Calibration:
    line = Curve((-1.0, 1.0), (0.0, 1.0))
    kinds = ("text", "text_short", "text_first_stage", "text_first_stage_short", "image")
    return Calibration({kind: line for kind in kinds}, good, {"data": "made up"})


def test_a_calibration_file_round_trips_and_a_broken_one_is_an_error(tmp_path):
    assert read_calibration(tmp_path) is None  # none: no relevance, not an error
    _calibration(0.6).save(tmp_path)
    back = read_calibration(tmp_path)
    assert back is not None and back.good == 0.6 and back.fitted_on == {"data": "made up"}
    assert back.relevance("image", np.array([0.0]))[0] == pytest.approx(0.5)
    body = json.loads((tmp_path / CALIBRATION_NAME).read_text())
    body["curves"]["text"]["p"] = [0.9, 0.1]
    (tmp_path / CALIBRATION_NAME).write_text(json.dumps(body))
    with pytest.raises(ModelConfigError, match="not a valid calibration"):
        read_calibration(tmp_path)
    (tmp_path / CALIBRATION_NAME).write_text("{")
    with pytest.raises(ModelConfigError, match="imgsearch calibrate"):
        read_calibration(tmp_path)


def test_short_and_long_text_queries_read_their_own_curves():
    curves = {
        "text": Curve((0.0,), (0.9,)),
        "text_short": Curve((0.0,), (0.1,)),
        "text_first_stage": Curve((0.0,), (0.8,)),
        "text_first_stage_short": Curve((0.0,), (0.2,)),
        "image": Curve((0.0,), (0.5,)),
    }
    calibration = Calibration(curves)
    score = np.array([3.0])
    assert calibration.relevance("text", score, "a dog")[0] == pytest.approx(0.1)  # 1 content word: short
    assert calibration.relevance("text", score, "a dog on the beach")[0] == pytest.approx(0.1)  # dog, beach
    long = "a brown dog runs along the beach near the waves"  # brown, dog, runs, beach, waves
    assert calibration.relevance("text", score, long)[0] == pytest.approx(0.9)
    assert calibration.relevance("text_first_stage", score, long)[0] == pytest.approx(0.8)
    assert calibration.relevance("text_first_stage", score, "three content words at most")[0] == pytest.approx(0.2)
    assert calibration.relevance("image", score)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="query"):
        calibration.relevance("text", score)


def test_caption_matches_agree_with_a_naive_loop():
    rng = np.random.default_rng(1)
    captions_per_image = [5, 5, 4, 5, 3, 5]
    image_of = np.repeat(np.arange(len(captions_per_image)), captions_per_image)
    caption_vectors = rng.normal(size=(len(image_of), 8)).astype(np.float32)
    caption_vectors /= np.linalg.norm(caption_vectors, axis=1, keepdims=True)
    query_vectors = np.concatenate([caption_vectors, rng.normal(size=(4, 8)).astype(np.float32)])
    query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True)
    source = np.r_[np.arange(len(image_of)), [0, 7, 12, -1]]
    got = caption_matches(query_vectors, source, caption_vectors, image_of, len(captions_per_image))
    for q, caption in enumerate(source):
        for image in range(len(captions_per_image)):
            if caption < 0:
                expected = False  # nonsense matches nothing
            elif image == image_of[caption]:
                expected = True  # the described photo always matches
            else:
                siblings = [c for c in range(len(image_of)) if image_of[c] == image_of[caption] and c != caption]
                threshold = np.median([query_vectors[q] @ caption_vectors[c] for c in siblings])
                closest = max(query_vectors[q] @ caption_vectors[c] for c in np.flatnonzero(image_of == image))
                expected = closest >= threshold
            assert got[q, image] == expected, (q, image)


def test_opening_phrases_are_short_queries_that_end_on_a_content_word():
    assert opening_phrase("A snowboarder in a green jacket catches some air .") == "A snowboarder"
    assert opening_phrase("A little girl in pink stands in a hallway .") == "A little girl"
    assert opening_phrase("Two dogs play in the snow .") == "Two dogs play"
    assert opening_phrase("A dog .") is None  # the whole caption already
    assert opening_phrase("In the snow .") is None or opening_phrase("In the snow .") == "In the snow"
    made_up = nonsense_queries(50, seed=3)
    assert made_up == nonsense_queries(50, seed=3) and len(set(made_up)) > 45
    assert all(1 <= len(q.split()) <= 3 for q in made_up)


def test_search_shows_the_calibrated_relevance_of_its_raw_scores(tmp_path, model_dir, image_folder):
    """Relevance in results is the calibration's curve applied to the score search ranked by;
    good_matches counts them; min_score keeps exactly those at least that likely."""
    import shutil

    calibrated = tmp_path / "model"
    shutil.copytree(model_dir, calibrated)
    # a curve whose mid-point sits among these random-weight scores, so both bands are filled
    with Index.create(tmp_path / "probe", model=model_dir, device="cpu") as index:
        index.add([image_folder], workers=0)
        raw = index.search("a red square", k=50)
        first = index.search("a red square", k=50, rerank=False)
        like = index.search(like=raw[0].id, k=50)
    middle = float(np.median([r.score for r in raw]))
    middle_first = float(np.median([r.first_stage_score for r in first]))
    middle_like = float(np.median([r.score for r in like]))
    curves = {
        "text": Curve((middle - 1, middle + 1), (0.0, 1.0)),
        "text_short": Curve((middle - 1, middle + 1), (0.0, 1.0)),
        "text_first_stage": Curve((middle_first - 0.1, middle_first + 0.1), (0.0, 1.0)),
        "text_first_stage_short": Curve((middle_first - 0.1, middle_first + 0.1), (0.0, 1.0)),
        "image": Curve((middle_like - 0.1, middle_like + 0.1), (0.0, 1.0)),
    }
    calibration = Calibration(curves, 0.5)
    calibration.save(calibrated)
    with Index.create(tmp_path / "index", model=calibrated, device="cpu") as index:
        index.add([image_folder], workers=0)
        for query, rerank, kind in (("a red square", True, "text"), ("a red square", False, "text_first_stage")):
            page = index.search_page(query, k=50, rerank=rerank)
            assert page.good_threshold == 0.5
            scores = np.array([r.score for r in page.results], np.float32)
            expected = calibration.relevance(kind, scores, query)
            np.testing.assert_allclose([r.relevance for r in page.results], expected, atol=1e-4)
            assert page.good_matches == int((expected >= 0.5).sum()) and page.good_matches_complete
            assert 0 < page.good_matches < len(page.results)  # both bands are there
            kept = index.search_page(query, k=50, rerank=rerank, min_score=0.3).results
            assert [r.id for r in kept] == [r.id for r in page.results if r.relevance >= 0.3]
        liked = index.search_page(like=page.results[0].id, k=50)
        expected = calibration.relevance("image", np.array([r.score for r in liked.results], np.float32))
        np.testing.assert_allclose([r.relevance for r in liked.results], expected, atol=1e-4)
        assert liked.good_matches == int((expected >= 0.5).sum())
        with pytest.raises(InvalidQuery, match="between 0 and 1"):
            index.search("a red square", min_score=30)


def test_a_model_without_calibration_has_no_relevance_and_refuses_min_score(tmp_path, model_dir, image_folder):
    assert read_calibration(model_dir) is None
    with Index.create(tmp_path / "index", model=model_dir, device="cpu") as index:
        index.add([image_folder], workers=0)
        page = index.search_page("a red square", k=5)
        assert page.good_matches is None and page.good_threshold is None
        assert all(r.relevance is None for r in page.results)
        with pytest.raises(InvalidQuery, match="no relevance calibration"):
            index.search("a red square", min_score=0.5)


def test_the_command_line_shows_relevance_and_marks_the_weaker_matches(tmp_path, model_dir, image_folder):
    """The table against --json of the same search: each row's percent is the result's
    relevance, the line falls where the good matches end, the first line counts them."""
    import shutil

    from click.testing import CliRunner

    from imgsearch.cli import cli

    def run(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        return result

    calibrated = tmp_path / "model"
    shutil.copytree(model_dir, calibrated)
    index_dir = tmp_path / "index"
    assert run("index", image_folder, "--index", index_dir, "--model", calibrated, "--quiet").exit_code == 0
    raw = json.loads(run("search", "a red square", "--index", index_dir, "-k", 12, "--json").stdout)["results"]
    scores = sorted(r["score"] for r in raw)
    middle = (scores[5] + scores[6]) / 2  # half the results good, half weaker
    line = Curve((middle - 1e-3, middle + 1e-3), (0.2, 0.8))
    kinds = ("text", "text_short", "text_first_stage", "text_first_stage_short", "image")
    Calibration({kind: line for kind in kinds}, 0.5).save(calibrated)

    answer = json.loads(run("search", "a red square", "--index", index_dir, "-k", 12, "--json").stdout)
    good = [r for r in answer["results"] if r["relevance"] >= 0.5]
    assert answer["good_matches"] == len(good) == 6 and answer["good_threshold"] == 0.5
    table = run("search", "a red square", "--index", index_dir, "-k", 12).stdout.splitlines()
    assert table[0] == "6 good matches; 6 weaker shown"
    assert table[1].split() == ["rank", "match", "path", "[labels]"]
    rows = [row for row in table[2:] if not row.strip().startswith("--")]
    assert [row.split()[1] for row in rows] == [f"{r['relevance']:.0%}" for r in answer["results"]]
    assert "weaker matches" in table[2 + len(good)]  # the line right after the good ones
    kept = json.loads(
        run("search", "a red square", "--index", index_dir, "-k", 12, "--min-score", "50%", "--json").stdout
    )
    assert [r["id"] for r in kept["results"]] == [r["id"] for r in good]
    bad = run("search", "a red square", "--index", index_dir, "--min-score", "1.5")
    assert bad.exit_code == 2 and "between 0 and 1" in bad.output


def test_calibrate_refuses_too_few_photos_and_a_missing_report_folder_writing_nothing(tmp_path, model_dir):
    from click.testing import CliRunner

    from imgsearch.cli import cli
    from tests.conftest import make_photos

    photos = make_photos(tmp_path / "photos", range(4))
    captions = tmp_path / "captions.tsv"
    captions.write_text("image\tcaption\n" + "".join(f"img_{i:03d}.png\ta drawing\n" for i in range(4)))
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)

    def run(*args):
        return CliRunner().invoke(
            cli, ["calibrate", str(captions), "--images", str(photos), "--model", str(model), *args]
        )

    missing = run("--report", str(tmp_path / "no-such-folder" / "report.md"))
    assert missing.exit_code == 2 and "no folder" in missing.output
    few = run()
    assert few.exit_code == 1 and "needs at least 50" in few.output
    assert read_calibration(model) is None  # nothing written beside the model
