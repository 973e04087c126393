"""tasks.results._report: a run's stamp names the commit it started from (read once), also in a copy without .git."""
from tasks.results import _report


def test_commit_is_read_once_and_taken_from_the_environment_without_git(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no .git here: git prints nothing
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("SHAREZOO_GIT_COMMIT", "abc1234")
    _report.checkout_commit.cache_clear()
    try:
        assert _report.stamp("tasks.results.x")["commit"] == "abc1234"
        monkeypatch.setenv("SHAREZOO_GIT_COMMIT", "def5678")  # e.g. another commit lands while the run trains
        assert _report.stamp("tasks.results.x")["commit"] == "abc1234"
    finally:
        _report.checkout_commit.cache_clear()
