"""`mgcc evaluate` says when the scored images include images the model trained or was validated on."""

import json

from mgcc.data.prepare import prepare_dataset
from mgcc.external import section_datalist, seen_in_training


def test_images_of_the_models_own_training_split_are_found(prepared_phantom, phantom_raw, tmp_path):
    stage = tmp_path / "segmentation"
    stage.mkdir()
    (stage / "args.json").write_text(json.dumps({"dataset_dir": str(prepared_phantom)}))
    again = tmp_path / "again"
    prepare_dataset(phantom_raw, again, labeled_fraction=0.25, seed=5)  # the same images, another split
    scored = section_datalist(again, "all", None, tmp_path)
    seen = seen_in_training(stage, again, scored)
    trained = [
        r for r in json.loads((prepared_phantom / "manifest.json").read_text())["images"] if r["section"] != "test"
    ]
    assert len(seen) == len(trained) > 0
    assert seen_in_training(stage, again, section_datalist(again, "test", None, tmp_path)) != seen
