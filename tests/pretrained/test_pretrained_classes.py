"""The packaged ILSVRC-2012 class list and a user's --synsets file."""

import pytest

from alexnet.errors import UserError
from alexnet.pretrained.classes import ilsvrc2012_classes, read_synsets


def test_packaged_list_is_the_standard_label_order():
    wnids, names = ilsvrc2012_classes()
    assert len(wnids) == len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert (wnids[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert (wnids[-1], names[-1]) == ("n15075141", "toilet tissue, toilet paper, bathroom tissue")
    assert names[wnids.index("n02123045")] == "tabby, tabby cat"


def test_synsets_file_renames_and_must_keep_the_order(tmp_path):
    wnids, names = ilsvrc2012_classes()
    path = tmp_path / "LOC_synset_mapping.txt"
    renamed = [f"{w} {'crane_bird' if w == 'n02012849' else n}" for w, n in zip(wnids, names)]
    path.write_text("\n".join(renamed) + "\n")
    got_wnids, got_names = read_synsets(path)
    assert got_wnids == wnids and got_names[wnids.index("n02012849")] == "crane_bird"
    path.write_text("\n".join(renamed[1:] + renamed[:1]) + "\n")
    with pytest.raises(UserError, match="another order"):
        read_synsets(path)
    path.write_text("\n".join(renamed[:999]) + "\n")
    with pytest.raises(UserError, match="lists 999 classes"):
        read_synsets(path)
    path.write_text("\n".join(renamed[:999] + ["n99999999 nothing"]) + "\n")
    with pytest.raises(UserError, match="n99999999, which is not an ILSVRC-2012 class"):
        read_synsets(path)
