"""Who owns a run folder: another recipe's results are never overwritten without --force."""

import json

import pytest

from mmcompress.errors import ConfigError
from mmcompress.recipe.run_folder import RUN_FILE, claim


def test_a_run_that_wrote_nothing_does_not_lock_its_folder(tmp_path):
    """A run that failed at its first stage (wrong --data) left run.json and an empty stage folder;
    the corrected command was refused ('holds the run of another recipe') although nothing was kept."""
    (tmp_path / RUN_FILE).write_text(json.dumps({"recipe": "0123456789abcdef"}))
    (tmp_path / "stages" / "00-baseline").mkdir(parents=True)
    claim(tmp_path, {"stages": [{"pass": "evaluate"}]}, ["k0"], force=False)
    assert json.loads((tmp_path / RUN_FILE).read_text())["recipe"] != "0123456789abcdef"

    (tmp_path / RUN_FILE).write_text(json.dumps({"recipe": "0123456789abcdef"}))
    (tmp_path / "stages" / "00-baseline" / "last.pt").write_bytes(b"a checkpoint")  # work to keep
    with pytest.raises(ConfigError, match="holds the run of another recipe"):
        claim(tmp_path, {"stages": [{"pass": "evaluate"}]}, ["k0"], force=False)
