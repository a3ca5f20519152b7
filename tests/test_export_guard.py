"""`mgcc export` replaces only an earlier export of its own: never the project's bundles or the user's files."""

import json

import pytest

from mgcc import LDM_BUNDLE, SEG_BUNDLE
from mgcc.export import EXPORT_RECORD, refuse_to_overwrite
from mgcc.stages import StageError


@pytest.mark.parametrize("bundle", [SEG_BUNDLE, LDM_BUNDLE])
def test_the_projects_own_bundles_are_refused(bundle):
    with pytest.raises(StageError, match="the project's own bundle"):
        refuse_to_overwrite(bundle)


def test_a_folder_of_the_users_is_refused(tmp_path):
    target = tmp_path / "ultrasound_mgcc_segmentation"
    (target / "eval").mkdir(parents=True)
    (target / "eval" / "dice.csv").write_text("mine")
    with pytest.raises(StageError, match="is not an earlier export"):
        refuse_to_overwrite(target)


def test_an_earlier_export_is_replaced_unless_files_were_added(tmp_path):
    target = tmp_path / "ultrasound_mgcc_segmentation"
    (target / "models").mkdir(parents=True)
    (target / "models" / "model.pt").write_bytes(b"weights")
    (target / EXPORT_RECORD).write_text(json.dumps({"files": ["models/model.pt"]}))
    refuse_to_overwrite(target)  # only what the export wrote: may be replaced
    (target / "notes.txt").write_text("mine")
    with pytest.raises(StageError, match=r"files added since \(notes.txt\)"):
        refuse_to_overwrite(target)
    refuse_to_overwrite(tmp_path / "new")
