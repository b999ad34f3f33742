import os

import pytest

from refinedet_tf.data.label_map import LabelMap, load_label_map, parse_names, parse_pbtxt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_names_file_ids_are_positions(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# classes\ncat\n\ndog  # a comment\n")
    m = load_label_map(str(path))
    assert m.names == ("background", "cat", "dog")
    assert m.dataset_ids == (0, 1, 2)
    assert m.name_to_id == {"cat": 1, "dog": 2}
    assert m.num_classes == 3


def test_names_file_leading_background_is_dropped():
    assert parse_names("__background__\ncat\n").names == ("background", "cat")


def test_pbtxt_keeps_file_order_and_dataset_ids():
    text = """
    # comment
    item { id: 7 name: "dog" display_name: "Dog" }
    item {
      name: 'cat'   # single quotes, fields in any order
      id: 3
      keypoints { id: 0 label: "nose" }
    }
    item: { id: 0 name: "background" }
    """
    m = parse_pbtxt(text)
    assert m.names == ("background", "dog", "cat")
    assert m.dataset_ids == (0, 7, 3)
    assert m.display_names == ("background", "Dog", "cat")
    assert m.dataset_id_to_id == {7: 1, 3: 2}
    assert m.name_to_id["Dog"] == 1  # display names are accepted too


def test_pbtxt_round_trip(tmp_path):
    m = LabelMap.from_names(['a "quoted" name', "b"], [5, 9])
    path = tmp_path / "m.pbtxt"
    m.save(str(path))
    assert load_label_map(str(path)) == m


@pytest.mark.parametrize("text, message", [
    ('item { id: 1 name: "a" } item { id: 2 name: "a" }', "duplicate name 'a'"),
    ('item { id: 1 name: "a" } item { id: 1 name: "b" }', "duplicate dataset id 1"),
    ('item { name: "a" }', "needs an id and a name"),
    ('item { id: 1 name: "a" ', "unexpected end of file"),
    ('item { id: x name: "a" }', "id must be an integer"),
    ("", "no items"),
])
def test_pbtxt_errors_name_the_file_and_problem(tmp_path, text, message):
    path = tmp_path / "bad.pbtxt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_label_map(str(path))
    assert str(path) in str(info.value)


def test_missing_file_is_named():
    with pytest.raises(ValueError, match="nope.txt: cannot read label map"):
        load_label_map("nope.txt")


def test_repo_label_maps():
    voc = load_label_map(os.path.join(REPO, "data", "voc_labelmap.txt"))
    assert voc.num_classes == 21
    assert voc.names[1] == "aeroplane" and voc.names[20] == "tvmonitor"
    coco = load_label_map(os.path.join(REPO, "data", "coco_labelmap.pbtxt"))
    assert coco.num_classes == 81
    assert coco.names[1] == "person" and coco.names[80] == "toothbrush"
    assert coco.dataset_ids[1] == 1 and coco.dataset_ids[80] == 90
    assert list(coco.dataset_ids[1:]) == sorted(coco.dataset_ids[1:])
    assert 12 not in coco.dataset_id_to_id and coco.dataset_id_to_id[13] == 12  # stop sign
