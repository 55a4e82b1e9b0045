import pytest

from builders.repository import StagedRepository
from tritune.errors import RepositoryError
from tritune.manifest import load_json as read_manifest
from tritune.manifest import write_json


def _model(root, name, text):
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(text)
    (root / name / "1" / "model.py").write_text("X = 1\n")


def test_commit_replaces_models_and_compiles_model_py(tmp_path):
    repo = tmp_path / "repo"
    with StagedRepository(repo) as staging:
        _model(staging, "a", "old")
        write_json(staging / "manifest.json", {"v": 1})
    with StagedRepository(repo) as staging:
        _model(staging, "a", "new")
        _model(staging, "b", "b")
        write_json(staging / "manifest.json", {"v": 2})
    assert (repo / "a" / "config.pbtxt").read_text() == "new"
    assert (repo / "b" / "config.pbtxt").exists()
    assert list((repo / "a" / "1" / "__pycache__").glob("model.*.pyc"))
    assert read_manifest(repo) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging or trash left behind


def test_failed_build_leaves_the_repository_untouched(tmp_path):
    repo = tmp_path / "repo"
    with StagedRepository(repo) as staging:
        _model(staging, "a", "good")
    with pytest.raises(RuntimeError), StagedRepository(repo) as staging:
        _model(staging, "a", "half-written")
        raise RuntimeError("calibration blew up")
    assert (repo / "a" / "config.pbtxt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_unwritable_repository_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(RepositoryError, match="not writable.*--repository"), StagedRepository(blocker / "repo"):
        pass
    with pytest.raises(RepositoryError, match="is a file"), StagedRepository(blocker):
        pass


def test_missing_or_broken_manifest(tmp_path):
    with pytest.raises(RepositoryError, match="build the repository first"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(RepositoryError, match="not JSON"):
        read_manifest(tmp_path)
