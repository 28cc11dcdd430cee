"""The `imgsearch` command line, through click's CliRunner, and the Index errors behind it."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import make_model_dir, make_photos, small_config
from imgsearch.cli import cli
from imgsearch.ground.errors import IndexExists, IndexNotFound, ModelMismatch, ModelNotFound, StoreCorrupt
from imgsearch.index import Index, default_index_dir
from imgsearch.model import packaged as models
from imgsearch.model.model_files import fingerprint
from imgsearch.model.packaged import default_model_dir
from imgsearch.search.language import english_warning


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """Commands without --index use the per-user index: keep it in tmp_path, never in the real home."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv("IMGSEARCH_INDEX", raising=False)
    monkeypatch.delenv("IMGSEARCH_MODEL", raising=False)


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def run_json(*args):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_user_error(result, *words):
    assert result.exit_code == 1, result.output
    assert "Error:" in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert "Traceback" not in result.output


@pytest.fixture
def indexed(tmp_path, model_dir, image_folder):
    """An index of image_folder plus one corrupt file, made by the CLI; returns (index dir, summary)."""
    (image_folder / "sub" / "broken.jpg").write_text("this is text, not a JPEG")
    index_dir = tmp_path / "index"
    summary = run_json("index", image_folder, "--index", index_dir, "--model", model_dir, "--workers", 0, "-q")
    return index_dir, summary


# ---- index, errors, info --------------------------------------------------------------


def test_index_creates_an_index_and_reports_counts(indexed, image_folder, model_dir):
    index_dir, summary = indexed
    assert (index_dir / "manifest.json").is_file()
    assert (index_dir / "index.db").is_file()
    assert (index_dir / "vectors.faiss").is_file()
    assert {k: summary[k] for k in ("added", "updated", "unchanged", "failed")} == {
        "added": 12,
        "updated": 0,
        "unchanged": 0,
        "failed": 1,
    }
    assert summary["seconds"] >= 0 and summary["images_per_second"] >= 0
    assert summary["failures"] == [
        {
            "path": str(image_folder / "sub" / "broken.jpg"),
            "error": "not an image Pillow can read (unknown format or not an image file)",
        }
    ]

    # Running again changes nothing, and no --model is needed once the index exists.
    again = run_json("index", image_folder, "--index", index_dir, "--workers", 0)
    assert (again["added"], again["updated"], again["unchanged"], again["failed"]) == (0, 0, 13, 0)


def test_index_text_output_and_failures_on_stderr(tmp_path, model_dir, image_folder):
    (image_folder / "bad.png").write_bytes(b"")
    result = run("index", image_folder, "--index", tmp_path / "ix", "--model", model_dir, "--workers", 0)
    assert result.exit_code == 0, result.output
    assert "added 12, updated 0, moved 0, removed 0, unchanged 0, failed 1; " in result.stdout
    assert "12 new images embedded at " in result.stdout
    assert "bad.png" in result.stderr and "empty file" in result.stderr
    assert "bad.png" not in result.stdout
    # A run with nothing new says so, instead of "0.0 images/s" after a bar that counted files.
    again = run("index", image_folder, "--index", tmp_path / "ix", "--workers", 0)
    assert "unchanged 13" in again.stdout and "nothing new to embed" in again.stdout
    assert "images/s" not in again.stdout


def test_errors_says_so_when_nothing_failed(tmp_path, model_dir, image_folder):
    assert run("index", image_folder, "--index", tmp_path / "ix", "--model", model_dir, "--workers", 0).exit_code == 0
    result = run("errors", "--index", tmp_path / "ix")
    assert result.exit_code == 0 and result.stdout == ""
    assert f"no failed files in {tmp_path / 'ix'}" in result.stderr


def test_errors_lists_the_corrupt_file_with_reason(indexed, image_folder):
    index_dir, _ = indexed
    result = run("errors", "--index", index_dir)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(str(image_folder / "sub" / "broken.jpg") + ": ")
    assert "not an image" in lines[0]
    failures = run_json("errors", "--index", index_dir)
    assert [f["path"] for f in failures] == [str(image_folder / "sub" / "broken.jpg")]


def test_info_json(indexed, model_dir):
    index_dir, _ = indexed
    info = run_json("info", "--index", index_dir)
    assert (info["images"], info["failed"], info["vectors"], info["distinct_contents"]) == (12, 1, 12, 12)
    manifest = info["manifest"]
    assert manifest["embed_dim"] == 32 and manifest["num_regions"] == 16
    assert manifest["metric"] == "inner_product" and manifest["normalized"] is True
    assert manifest["model"]["path"] == str(model_dir.resolve())
    assert len(manifest["model"]["fingerprint"]) == 64
    assert set(info["bytes_on_disk"]) == {"index.db", "vectors.faiss", "manifest.json"}


def test_info_text(indexed):
    index_dir, _ = indexed
    result = run("info", "--index", index_dir)
    assert result.exit_code == 0, result.output
    assert "12 indexed, 1 failed" in result.stdout


def test_index_dir_from_environment(indexed):
    index_dir, _ = indexed
    result = CliRunner().invoke(cli, ["info", "--json"], env={"IMGSEARCH_INDEX": str(index_dir)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 12


# ---- search ---------------------------------------------------------------------------


FIELDS = {
    "rank",
    "id",
    "path",
    "near_duplicates",
    "relevance",
    "score",
    "first_stage_score",
    "rerank_score",
    "first_stage_rank",
    "zero_shot_score",
    "width",
    "height",
    "size",
    "sha256",
    "labels",
    "taken_at",
    "file_date",
}


def test_search_json_fields_and_order(indexed, image_folder):
    index_dir, _ = indexed
    out = run_json("search", "a red circle", "--index", index_dir, "-k", 5, "--candidates", 8, "--device", "cpu")
    assert out["query"] == "a red circle" and out["reranked"] is True
    results = out["results"]
    assert len(results) == 5
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    for r in results:
        assert set(r) == FIELDS
        assert r["path"].startswith(str(image_folder)) and not r["path"].endswith("broken.jpg")
        assert isinstance(r["rerank_score"], float)
        assert r["relevance"] is None  # the test model has no calibration
        assert r["score"] == pytest.approx(r["rerank_score"], abs=1e-5)  # fusion_weight 0
        assert -1.0 - 1e-5 <= r["first_stage_score"] <= 1.0 + 1e-5
        assert 1 <= r["first_stage_rank"] <= 8
        assert (r["width"], r["height"]) == (48, 48)
        assert r["labels"] == []  # the VGG test model has no classifier
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)

    # The CLI is a thin twin of the library call, precision included (the CLI's default is auto).
    exact = run_json(
        "search",
        "a red circle",
        "--index",
        index_dir,
        "-k",
        5,
        "--candidates",
        8,
        "--device",
        "cpu",
        "--precision",
        "float32",
    )["results"]
    with Index.open(index_dir, device="cpu") as index:
        assert [r.to_dict() for r in index.search("a red circle", 5, candidates=8, rerank_precision="auto")] == results
        assert [r.to_dict() for r in index.search("a red circle", 5, candidates=8)] == exact


def test_search_no_rerank_orders_by_first_stage(indexed):
    index_dir, _ = indexed
    out = run_json("search", "a blue square", "--index", index_dir, "-k", 12, "--no-rerank")
    assert out["reranked"] is False
    results = out["results"]
    assert len(results) == 12
    assert all(r["rerank_score"] is None for r in results)
    assert all(r["score"] == r["first_stage_score"] for r in results)
    assert [r["first_stage_rank"] for r in results] == list(range(1, 13))
    firsts = [r["first_stage_score"] for r in results]
    assert firsts == sorted(firsts, reverse=True)


@pytest.mark.parametrize("k, expected", [(1, 1), (3, 3), (12, 12), (40, 12)])
def test_search_k_is_respected(indexed, k, expected):
    index_dir, _ = indexed
    results = run_json("search", "something green", "--index", index_dir, "-k", k)["results"]
    assert len(results) == expected
    assert len({r["id"] for r in results}) == expected


def test_search_text_output(indexed):
    index_dir, _ = indexed
    result = run("search", "a red circle", "--index", index_dir, "--top", 2)
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["rank", "score", "first", "stage", "(rank)", "path", "[labels]"]
    expected = run_json("search", "a red circle", "--index", index_dir, "--top", 2)["results"]
    assert len(rows) == 2
    for row, want in zip(rows, expected):
        rank, score, first, first_rank, path = row.split()[:5]
        assert (int(rank), float(score), float(first), first_rank, path) == (
            want["rank"],
            round(want["score"], 4),
            round(want["first_stage_score"], 4),
            f"(#{want['first_stage_rank']})",
            want["path"],
        )


def test_search_text_output_without_rerank_shows_the_first_stage_score(indexed):
    index_dir, _ = indexed
    result = run("search", "a red circle", "--index", index_dir, "--top", 2, "--no-rerank")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["rank", "first", "stage", "path", "[labels]"]
    expected = run_json("search", "a red circle", "--index", index_dir, "--top", 2, "--no-rerank")["results"]
    assert [(int(r.split()[0]), float(r.split()[1]), r.split()[2]) for r in rows] == [
        (want["rank"], round(want["first_stage_score"], 4), want["path"]) for want in expected
    ]


def test_search_empty_index_says_so(tmp_path, model_dir):
    empty = tmp_path / "empty-photos"
    empty.mkdir()
    assert run("index", empty, "--index", tmp_path / "ix", "--model", model_dir, "--workers", 0).exit_code == 0
    result = run("search", "cat", "--index", tmp_path / "ix")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no images" in result.stderr


# ---- help -----------------------------------------------------------------------------


def test_every_command_has_help_with_an_example():
    assert set(cli.commands) >= {"index", "search", "info", "errors"}
    for args in [[]] + [[name] for name in cli.commands]:
        for flag in ("-h", "--help"):
            result = run(*args, flag)
            assert result.exit_code == 0, (args, result.output)
            assert "Example" in result.stdout, args
            assert "Usage:" in result.stdout


# ---- user errors: exit code 1 and "Error: ..." ----------------------------------------------


@pytest.mark.parametrize("command", [["search", "a cat"], ["info"], ["errors"]])
def test_commands_on_a_directory_without_an_index(tmp_path, command):
    (tmp_path / "not-an-index").mkdir()
    for directory in (tmp_path / "not-an-index", tmp_path / "does-not-exist"):
        result = run(*command, "--index", directory)
        assert_user_error(result, "no index", "imgsearch index")


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_empty_query(indexed, query):
    index_dir, _ = indexed
    assert_user_error(run("search", query, "--index", index_dir), "empty")


def test_model_mismatch_says_to_re_index(indexed, tmp_path, tiny_bert_dir):
    index_dir, _ = indexed
    other = make_model_dir(tmp_path / "other-model", small_config(tiny_bert_dir), seed=1)
    result = run("search", "a red circle", "--index", index_dir, "--model", other)
    assert_user_error(result, "re-index", str(other))
    # Indexing more files with the wrong model is refused too.
    result = run("index", tmp_path, "--index", index_dir, "--model", other, "--workers", 0)
    assert_user_error(result, "re-index")


def test_moved_model_needs_model_option(tmp_path, model_dir, image_folder):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    index_dir = tmp_path / "ix"
    run_json("index", image_folder, "--index", index_dir, "--model", model, "--workers", 0)
    model.rename(tmp_path / "moved-model")
    assert_user_error(run("search", "a red circle", "--index", index_dir), "--model", "no longer at")
    assert_user_error(run("index", image_folder, "--index", index_dir, "--workers", 0), "--model")
    # info and errors need no model: they still work, and info says where the model was.
    info = run_json("info", "--index", index_dir)
    assert info["manifest"]["model"]["path"] == str(model.resolve())
    assert run_json("errors", "--index", index_dir) == []
    # The same model (same fingerprint) at its new place is accepted.
    out = run_json("search", "a red circle", "--index", index_dir, "--model", tmp_path / "moved-model", "-k", 2)
    assert len(out["results"]) == 2


def test_a_new_index_without_model_uses_the_packaged_photo_model(tmp_path):
    photos = make_photos(tmp_path / "photos", range(2))
    summary = run_json("index", photos, "--index", tmp_path / "ix", "--workers", 0)
    assert summary["added"] == 2
    recorded = json.loads((tmp_path / "ix" / "manifest.json").read_text())["model"]
    assert recorded["path"] == str(default_model_dir())
    assert recorded["fingerprint"] == fingerprint(default_model_dir())
    assert "the packaged photo model" in run("info", "--index", tmp_path / "ix").stdout


def test_a_new_index_without_model_or_packaged_model_says_to_pass_one(tmp_path, image_folder, monkeypatch):
    monkeypatch.setattr(
        models, "_candidates", lambda package: [tmp_path / "site-packages" / "imgsearch" / "photo_model"]
    )
    result = run("index", image_folder, "--index", tmp_path / "ix", "--workers", 0)
    assert_user_error(result, "packaged", "--model", str(tmp_path / "site-packages"))
    assert not (tmp_path / "ix" / "manifest.json").exists()


def test_model_from_environment_makes_the_new_index(tmp_path, model_dir, image_folder):
    result = run(
        "index",
        image_folder,
        "--index",
        tmp_path / "ix",
        "--workers",
        0,
        "--json",
        env={"IMGSEARCH_MODEL": str(model_dir)},
    )
    assert result.exit_code == 0, result.output
    assert run_json("info", "--index", tmp_path / "ix")["manifest"]["model"]["path"] == str(model_dir.resolve())


# ---- the default index location -----------------------------------------------------------


def test_index_defaults_to_xdg_data_home(tmp_path, model_dir, image_folder):
    summary = run_json("index", image_folder, "--model", model_dir, "--workers", 0)
    default = tmp_path / "xdg-data" / "imgsearch" / "index"
    assert (default / "manifest.json").is_file()
    assert summary["added"] == 12
    # every command finds it without --index
    assert run_json("info")["directory"] == str(default)
    assert len(run_json("search", "a red circle", "-k", 3)["results"]) == 3
    assert run_json("errors") == []
    assert not (tmp_path / "home" / ".local").exists()


@pytest.mark.parametrize("xdg", [None, "", "relative/dir"])
def test_index_defaults_to_local_share_without_a_usable_xdg_data_home(
    tmp_path, model_dir, image_folder, monkeypatch, xdg
):
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME")
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)  # the XDG spec: empty or relative --> ignored
    run_json("index", image_folder, "--model", model_dir, "--workers", 0)
    default = tmp_path / "home" / ".local" / "share" / "imgsearch" / "index"
    assert (default / "manifest.json").is_file()
    assert default_index_dir() == default
    assert run_json("info")["images"] == 12


def test_first_search_without_the_default_index_says_how_to_make_it(tmp_path):
    result = run("search", "a dog on the beach")
    assert_user_error(result, str(tmp_path / "xdg-data" / "imgsearch" / "index"), "`imgsearch index PHOTOS`.")


def test_index_option_beats_environment_beats_default(tmp_path, model_dir, image_folder, monkeypatch):
    default = tmp_path / "xdg-data" / "imgsearch" / "index"
    from_env, from_flag = tmp_path / "env-index", tmp_path / "flag-index"
    monkeypatch.setenv("IMGSEARCH_INDEX", str(from_env))
    run_json("index", image_folder, "--model", model_dir, "--workers", 0)
    assert (from_env / "manifest.json").is_file() and not default.exists()
    run_json("index", image_folder, "--index", from_flag, "--model", model_dir, "--workers", 0)
    assert (from_flag / "manifest.json").is_file() and not default.exists()
    assert run_json("info")["directory"] == str(from_env)
    assert run_json("info", "--index", from_flag)["directory"] == str(from_flag)


def test_help_shows_the_default_index_and_model(tmp_path):
    squeeze = "".join  # --help wraps long paths (at hyphens too): compare without whitespace
    for command in ("index", "search", "info", "errors"):
        result = run(command, "--help")
        assert squeeze(str(tmp_path / "xdg-data" / "imgsearch" / "index").split()) in squeeze(result.stdout.split())
        assert "IMGSEARCH_INDEX" in result.stdout
    index_help = squeeze(run("index", "--help").stdout.split())
    assert squeeze(str(default_model_dir()).split()) in index_help


def test_an_index_made_with_another_model_keeps_it(tmp_path):
    """An index made with data/demo-model goes on with it: no --model needed, none imposed."""
    demo_model = (Path(__file__).parents[1] / "data" / "demo-model").resolve()
    photos = make_photos(tmp_path / "photos", range(3))
    run_json("index", photos, "--model", demo_model, "--workers", 0)
    make_photos(photos, range(3, 5))
    again = run_json("index", photos, "--workers", 0)
    assert (again["added"], again["unchanged"]) == (2, 3)
    info = run_json("info")
    assert info["manifest"]["model"]["path"] == str(demo_model)
    assert info["images"] == 5
    assert len(run_json("search", "a small red circle", "-k", 2)["results"]) == 2


def test_indexing_a_missing_path(tmp_path, model_dir):
    result = run("index", tmp_path / "no-photos", "--index", tmp_path / "ix", "--model", model_dir)
    assert_user_error(result, "does not exist")


@pytest.mark.parametrize("args", [["--candidates", "0"], ["-k", "0"], ["--top", "-3"], ["--candidates", "many"]])
def test_bad_search_numbers_are_usage_errors(indexed, args):
    index_dir, _ = indexed
    result = run("search", "a cat", "--index", index_dir, *args)
    assert result.exit_code == 2, result.output
    assert "Error:" in result.stderr


@pytest.mark.parametrize(
    "args, said",
    [
        ([], "Error: give exactly one of QUERY, --image PATH or --like PATH_OR_ID.\n"),
        (
            ["a cat", "--like", "3"],
            "Error: give exactly one of QUERY, --image PATH or --like PATH_OR_ID (got QUERY and --like).\n",
        ),
    ],
)
def test_search_wants_exactly_one_query_a_usage_error_before_the_index_is_opened(tmp_path, args, said):
    result = run("search", *args, "--index", tmp_path / "no-index")  # no index there: not looked at
    assert result.exit_code == 2, result.output
    assert result.stderr.endswith(said), result.stderr


def test_model_option_must_exist(tmp_path, image_folder):
    result = run("index", image_folder, "--index", tmp_path / "ix", "--model", tmp_path / "no-model")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


# ---- the library errors behind them ------------------------------------------------------------


def test_open_nonexistent_directory_raises_index_not_found(tmp_path):
    with pytest.raises(IndexNotFound, match="imgsearch index"):
        Index.open(tmp_path / "nowhere")


def test_create_twice_raises_index_exists(tmp_path, model_dir):
    Index.create(tmp_path / "ix", model_dir, device="cpu").close()
    with pytest.raises(IndexExists):
        Index.create(tmp_path / "ix", model_dir, device="cpu")
    (tmp_path / "file").write_text("x")
    with pytest.raises(IndexExists):
        Index.create(tmp_path / "file", model_dir, device="cpu")


def test_open_with_other_model_raises_model_mismatch(tmp_path, model_dir, tiny_bert_dir):
    Index.create(tmp_path / "ix", model_dir, device="cpu").close()
    other = make_model_dir(tmp_path / "other", small_config(tiny_bert_dir), seed=1)
    with pytest.raises(ModelMismatch, match="re-index"):
        Index.open(tmp_path / "ix", other, device="cpu")
    with pytest.raises(ModelNotFound):
        Index.open(tmp_path / "ix", tmp_path / "no-model", device="cpu")


def test_recorded_model_is_checked_on_first_use(tmp_path, model_dir, tiny_bert_dir, image_folder):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    with Index.create(tmp_path / "ix", model, device="cpu") as index:
        index.add([image_folder], workers=0)
    # The model directory is overwritten by another model (e.g. retrained in place).
    shutil.rmtree(model)
    make_model_dir(model, small_config(tiny_bert_dir), seed=1)
    with Index.open(tmp_path / "ix", device="cpu") as index:
        assert index.info()["images"] == 12
        with pytest.raises(ModelMismatch, match="re-index"):
            index.search("a red circle")
        with pytest.raises(ModelMismatch):
            index.add([image_folder], workers=0)
    with pytest.raises(ModelMismatch):
        Index.open(tmp_path / "ix", model, device="cpu")  # a model given explicitly is checked at once


def test_damaged_database_is_a_user_error(indexed):
    index_dir, _ = indexed
    (index_dir / "index.db").write_bytes(b"not sqlite at all" * 100)
    for name in ("index.db-wal", "index.db-shm"):
        (index_dir / name).unlink(missing_ok=True)
    with pytest.raises(StoreCorrupt, match="re-index"):
        Index.open(index_dir)
    assert_user_error(run("info", "--index", index_dir), "re-index")


def test_newer_schema_is_refused(indexed):
    index_dir, _ = indexed
    conn = sqlite3.connect(index_dir / "index.db")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorrupt, match="upgrade imgsearch"):
        Index.open(index_dir)


def test_user_errors_are_click_exceptions_only_in_the_cli():
    # Library errors are plain ImgsearchError subclasses; only the CLI wraps them.
    assert not issubclass(IndexNotFound, click.ClickException)


# ---- mistakes in options: named as the user typed them (issue 23) ----------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("-k", "abc"), "Invalid value for '-k' / '--top': 'abc' is not a whole number."),
        (("-k", "0"), "Invalid value for '-k' / '--top': it must be at least 1 (got 0)."),
        (("--candidates", "1.5"), "Invalid value for '--candidates': '1.5' is not a whole number."),
        (("--after", "01/06/2023"), "Invalid value for '--after': write the date as YYYY-MM-DD (got '01/06/2023')."),
        (("--before", "2023-13-01"), "Invalid value for '--before': write the date as YYYY-MM-DD (got '2023-13-01')."),
    ],
)
def test_option_mistakes_name_the_option_and_the_expected_form(indexed, args, said):
    index_dir, _ = indexed
    result = run("search", "a red circle", "--index", index_dir, *args)
    assert result.exit_code == 2 and said in result.stderr, result.stderr


def test_dates_as_options_filter_as_the_library_does(indexed):
    index_dir, _ = indexed
    everything = run_json("search", "a red circle", "--index", index_dir, "-k", 50)["results"]
    assert (
        run_json(
            "search", "a red circle", "--index", index_dir, "-k", 50, "--after", "2000-01-01", "--before", "2999-12-31"
        )["results"]
        == everything
    )  # files written today: all of them
    assert run_json("search", "a red circle", "--index", index_dir, "--after", "2999-01-01")["results"] == []


def test_a_missing_under_folder_is_an_error_unless_the_index_holds_images_there(indexed, image_folder):
    index_dir, _ = indexed
    result = run("search", "a red circle", "--index", index_dir, "--under", image_folder / "no-such-folder")
    assert_user_error(result, "--under", "no folder", "no-such-folder")
    # an existing folder without images is a search that finds nothing, not a mistake
    (image_folder / "empty").mkdir()
    result = run("search", "a red circle", "--index", index_dir, "--under", image_folder / "empty")
    assert result.exit_code == 0 and "no images match" in result.stderr
    # a folder that is gone while its images are still indexed (an unplugged drive) still searches
    moved = image_folder.parent / "moved-away"
    shutil.move(image_folder / "sub", moved)
    result = run_json("search", "a red circle", "--index", index_dir, "--under", image_folder / "sub")
    assert result["results"] and all("/sub/" in r["path"] for r in result["results"])


def test_a_rerun_reports_the_files_that_still_fail(indexed, image_folder, model_dir):
    """An unchanged broken file is not read again, and the run still says that it fails
    (issue 23: "failed 2", then "unchanged 303, failed 0" while info said 2 failed)."""
    index_dir, first = indexed
    assert [f["path"] for f in first["failures"]] == [str(image_folder / "sub" / "broken.jpg")]
    again = run_json("index", image_folder, "--index", index_dir, "--workers", 0, "-q")
    assert again["failed"] == 0 and again["unchanged"] == first["added"] + 1
    assert again["still_failing"] == first["failures"]
    result = run("index", image_folder, "--index", index_dir, "--workers", 0, "-q")
    assert "failed 0 (and 1 unchanged file still fails)" in result.stdout
    assert f"still failing: {image_folder / 'sub' / 'broken.jpg'}: " in result.stderr


def test_a_bad_device_is_said_before_any_index_is_made(tmp_path, model_dir, image_folder):
    result = run("index", image_folder, "--index", tmp_path / "ix", "--model", model_dir, "--device", "gpu")
    assert_user_error(result, "unknown device 'gpu'")
    assert not (tmp_path / "ix").exists()


def test_a_query_that_is_not_english_is_warned_in_the_table_and_the_json(indexed):
    index_dir, _ = indexed
    where = ("--index", index_dir, "-k", 3, "--device", "cpu")
    french = run("search", "un cercle rouge sur fond blanc", *where)
    assert french.exit_code == 0 and "Warning: The text encoder reads English" in french.stderr
    assert "'fr'" in french.stderr and len(french.stdout.splitlines()) > 3  # the results still come
    assert run_json("search", "un cercle rouge sur fond blanc", *where)["warnings"] == [
        english_warning("un cercle rouge sur fond blanc")
    ]
    english = run("search", "a red circle", *where)
    assert english.exit_code == 0 and "Warning" not in english.stderr
    assert run_json("search", "a red circle", *where)["warnings"] == []
