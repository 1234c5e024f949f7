"""The taxonomy API as a user calls it; hard-coded facts from the MSeg spreadsheet (no ../shared needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mseg_semantic import TaxonomyError
from mseg_semantic.taxonomy import (
    DEFAULT_TRAIN_DATASETS,
    TEST_DATASETS,
    TaxonomyConverter,
    class_names,
    get_taxonomy,
    producible_classes,
    taxonomy_names,
)

CLASS_COUNTS = {
    "universal": 194,
    "naive": 316,
    "ade20k-150": 150,
    "ade20k-150-relabeled": 141,
    "ade20k-151": 151,
    "bdd": 19,
    "bdd-relabeled": 21,
    "camvid-11": 11,
    "camvid-32": 32,
    "cityscapes-19": 19,
    "cityscapes-19-relabeled": 21,
    "cityscapes-34": 34,
    "cityscapes-34-relabeled": 26,
    "coco-panoptic-133": 133,
    "coco-panoptic-133-relabeled": 155,
    "coco-panoptic-201": 201,
    "coco-panoptic-inst-201": 201,
    "idd-39": 39,
    "idd-39-relabeled": 30,
    "idd-40": 40,
    "kitti-19": 19,
    "kitti-34": 34,
    "mapillary-public65": 65,
    "mapillary-public65-relabeled": 51,
    "mapillary-public66": 66,
    "pascal-context-460": 460,
    "pascal-context-60": 60,
    "scannet-20": 20,
    "scannet-41": 41,
    "sunrgbd-37": 37,
    "sunrgbd-37-relabeled": 48,
    "sunrgbd-38": 38,
    "voc2012": 21,
    "wilddash-19": 19,
    "wilddash-34": 34,
}

# dataset: (classes sent to a real universal class, classes sent to 255, distinct universal targets)
TRAIN_FACTS = {
    "ade20k-150": (141, 9, 117),
    "bdd": (19, 0, 19),
    "cityscapes-19": (19, 0, 19),
    "coco-panoptic-133": (133, 0, 122),
    "idd-39": (30, 9, 25),
    "mapillary-public65": (60, 5, 44),
    "sunrgbd-37": (37, 0, 37),
    "ade20k-150-relabeled": (141, 0, 141),
    "bdd-relabeled": (21, 0, 21),
    "cityscapes-19-relabeled": (21, 0, 21),
    "cityscapes-34-relabeled": (26, 0, 26),
    "coco-panoptic-133-relabeled": (155, 0, 155),
    "idd-39-relabeled": (30, 0, 30),
    "mapillary-public65-relabeled": (51, 0, 51),
    "sunrgbd-37-relabeled": (48, 0, 48),
    "cityscapes-34": (26, 8, 24),
}

# test dataset: number of universal classes mapped (ones in the matrix), test classes with no source
TEST_FACTS = {
    "camvid-11": (12, []),
    "kitti-19": (22, []),
    "pascal-context-60": (194, ["flower", "wood"]),
    "scannet-20": (37, []),
    "voc2012": (194, []),
    "wilddash-19": (23, []),
}


@pytest.fixture(scope="module")
def tc() -> TaxonomyConverter:
    return TaxonomyConverter()


def uid(name: str) -> int:
    return class_names("universal").index(name)


def test_every_taxonomy_and_its_class_count():
    assert set(taxonomy_names()) == set(CLASS_COUNTS)
    for name, count in CLASS_COUNTS.items():
        assert len(class_names(name)) == count, name
    assert len(DEFAULT_TRAIN_DATASETS) == 15
    assert TEST_DATASETS == ("camvid-11", "kitti-19", "pascal-context-60", "scannet-20", "voc2012", "wilddash-19")
    assert set(taxonomy_names("test")) == set(TEST_DATASETS)


def test_universal_spot_checks():
    names = class_names("universal")
    assert (names[0], names[41], names[98], names[125], names[142], names[193]) == (
        "backpack",
        "cell phone",
        "road",
        "person",
        "sky",
        "window_blind",
    )
    assert len(set(names)) == 194
    assert get_taxonomy("universal").details["definition"][0].startswith("a bag carried by a strap")


def test_dataset_name_orders():
    assert class_names("camvid-11")[:3] == ["Building", "Tree", "Sky"]
    assert class_names("pascal-context-60")[:2] == ["aeroplane", "background"]
    assert class_names("voc2012")[0] == "background"
    assert class_names("cityscapes-19") == class_names("bdd") == class_names("kitti-19") == class_names("wilddash-19")
    assert class_names("mapillary-public66")[-1] == "Unlabeled"
    assert get_taxonomy("camvid-32").colors[0] == (64, 128, 64)
    assert get_taxonomy("camvid-32").colors[-1] == (64, 192, 0)


@pytest.mark.parametrize("dataset", sorted(TRAIN_FACTS))
def test_training_map_counts(tc, dataset):
    mapped, ignored, distinct = TRAIN_FACTS[dataset]
    out = tc.to_universal(np.arange(len(class_names(dataset))), dataset)
    assert int((out != 255).sum()) == mapped
    assert int((out == 255).sum()) == ignored
    assert len(set(out[out != 255].tolist())) == distinct
    assert producible_classes(dataset, "universal") == tuple(sorted(set(out[out != 255].tolist())))


@pytest.mark.parametrize(
    ("dataset", "cls", "universal"),
    [
        ("mapillary-public65", "Motorcyclist", "motorcyclist"),
        ("mapillary-public65", "Bird", "bird"),
        ("mapillary-public65", "Ground Animal", "dog"),
        ("ade20k-150", "minibike", "motorcycle"),
        ("ade20k-150", "skyscraper", "building"),
        ("cityscapes-19", "rider", "bicyclist"),
        ("idd-39", "rider", "motorcyclist"),
        ("bdd", "rider", "rider_other"),
        ("coco-panoptic-133", "stop sign", "traffic_sign"),
        ("sunrgbd-37", "refridgerator", "refrigerator"),
        ("cityscapes-34", "polegroup", "pole"),
        ("idd-39", "license plate", None),
        ("ade20k-150", "signboard", None),
    ],
)
def test_training_class_spot_checks(tc, dataset, cls, universal):
    value = class_names(dataset).index(cls)
    out = tc.to_universal(np.array([value, 255], dtype=np.uint8), dataset)
    assert out.tolist() == [255 if universal is None else uid(universal), 255]


def test_mapillary_motorcyclist_is_value_21(tc):
    assert class_names("mapillary-public65")[21] == "Motorcyclist"
    assert tc.to_universal(np.array([21]), "mapillary-public65").tolist() == [uid("motorcyclist")]


@pytest.mark.parametrize("dataset", TEST_DATASETS)
def test_test_matrices(tc, dataset):
    ones, empty = TEST_FACTS[dataset]
    matrix = tc.universal_to_test_matrix(dataset)
    assert matrix.shape == (len(class_names(dataset)), 194)
    assert set(np.unique(matrix).tolist()) <= {0.0, 1.0}
    assert int(matrix.sum()) == ones
    assert (matrix.sum(axis=0) <= 1).all()  # each universal class feeds at most one test class
    names = class_names(dataset)
    assert [names[t] for t in np.nonzero(matrix.sum(axis=1) == 0)[0]] == empty


def test_camvid_mapping_details(tc):
    m = tc.universal_to_test_matrix("camvid-11")
    bicyclist = class_names("camvid-11").index("Bicyclist")
    assert np.nonzero(m[bicyclist])[0].tolist() == [uid("bicyclist"), uid("bicycle")]
    assert m[:, uid("sky")].argmax() == class_names("camvid-11").index("Sky")
    wilddash, kitti = tc.universal_to_test_matrix("wilddash-19"), tc.universal_to_test_matrix("kitti-19")
    assert wilddash[:, uid("autorickshaw")].sum() == 1 and kitti[:, uid("autorickshaw")].sum() == 0


def test_logits_to_camvid_like_the_original(tc):
    # The original's test: sky wins the top row; person and bicycle tie on the bottom row, and Bicyclist wins
    # because both bicycle and bicyclist feed it.
    logits = torch.zeros(1, 194, 2, 3)
    logits[0, uid("sky"), 0, :] = 1.0
    logits[0, uid("person"), 1, :] = 0.5
    logits[0, uid("bicycle"), 1, :] = 0.5
    logits[0, uid("bicyclist"), 1, :] = 0.5
    out = tc.universal_logits_to("camvid-11", logits)
    assert out.shape == (1, 11, 2, 3) and out.dtype == torch.float32
    names = class_names("camvid-11")
    assert out.argmax(dim=1).tolist() == [[[names.index("Sky")] * 3, [names.index("Bicyclist")] * 3]]


def test_probs_to_sums_the_mapped_channels(tc):
    probs = torch.rand(2, 194, 4, 5, dtype=torch.float64).softmax(dim=1)
    out = tc.universal_probs_to("voc2012", probs)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 4, 5, dtype=torch.float64))  # voc maps all 194
    person = class_names("voc2012").index("person")
    expected = probs[:, [uid(n) for n in ("person", "rider_other", "bicyclist", "motorcyclist")]].sum(dim=1)
    torch.testing.assert_close(out[:, person], expected)
    single = tc.universal_probs_to("camvid-11", probs[0])
    assert single.shape == (11, 4, 5)
    assert tc.universal_probs_to("universal", probs) is probs


def test_naive_taxonomy(tc):
    naive = class_names("naive")
    assert len(naive) == 316 and naive[254] == "non-drivable fallback" and naive[256] == "autorickshaw"
    assert len({n for i, n in enumerate(naive) if i != 255}) == 315
    probs = torch.rand(1, 316, 2, 2).softmax(dim=1)
    assert tc.universal_probs_to("camvid-11", probs).shape == (1, 11, 2, 2)
    matrix = tc.universal_to_test_matrix("camvid-11", source="naive")
    unmatched = [class_names("camvid-11")[t] for t in np.nonzero(matrix.sum(axis=1) == 0)[0]]
    assert unmatched == ["SignSymbol", "Pedestrian", "Column_Pole"]
    # Bird (mapillary) and bird (ade20k) merge; classes the master table ignores still get a naive id.
    bird = naive.index("bird")
    assert tc.to_naive(np.array([class_names("mapillary-public65").index("Bird")]), "mapillary-public65")[0] == bird
    assert tc.to_naive(np.array([255, class_names("ade20k-150").index("signboard")]), "ade20k-150")[1] != 255


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint16])
def test_to_universal_numpy_dtypes(tc, dtype):
    label = np.array([[0, 1, 2], [255, 10, 3]], dtype=dtype)
    out = tc.to_universal(label, "cityscapes-19")
    assert out.shape == label.shape and out.dtype == dtype
    assert out.tolist() == [[uid("road"), uid("sidewalk_pavement"), uid("building")], [255, uid("sky"), uid("wall")]]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_to_universal_torch_dtypes(tc, dtype):
    label = torch.tensor([[0, 255], [18, 11]], dtype=dtype)
    out = tc.to_universal(label, "cityscapes-19")
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == label.shape
    assert out.tolist() == [[uid("road"), 255], [uid("bicycle"), uid("person")]]


def test_to_universal_keeps_size_one_dims(tc):
    label = np.zeros((1, 5), dtype=np.uint8)
    assert tc.to_universal(label, "cityscapes-19").shape == (1, 5)
    assert tc.to_universal(torch.zeros(1, 1, dtype=torch.int64), "bdd").shape == (1, 1)


def test_values_outside_the_taxonomy_are_an_error(tc):
    label = np.array([[0, 19, 254, 255]], dtype=np.uint8)
    with pytest.raises(TaxonomyError, match=r"\[19, 254\].*cityscapes-19"):
        tc.to_universal(label, "cityscapes-19")
    with pytest.raises(TaxonomyError, match=r"\[-3, 300\]"):
        tc.to_universal(torch.tensor([-3, 300, 1]), "cityscapes-19")
    lenient = tc.to_universal(label, "cityscapes-19", strict=False)
    assert lenient.tolist() == [[uid("road"), 255, 255, 255]]
    assert tc.to_universal(np.array([-1, 6]), "bdd", strict=False).tolist() == [255, uid("traffic_light")]


def test_universal_labels_are_validated(tc):
    assert tc.to_universal(np.array([0, 193, 255]), "universal").tolist() == [0, 193, 255]
    with pytest.raises(TaxonomyError, match="194"):
        tc.to_universal(np.array([194]), "universal")


def test_raw_labels_reach_universal_through_a_pairwise_table(tc):
    # sunrgbd-38 -> sunrgbd-37 -> universal; ade20k-151 value 0 is 'unlabeled'
    assert tc.to_universal(np.array([0, 1]), "sunrgbd-38").tolist() == [255, uid("wall")]
    assert tc.to_universal(np.array([0, 1]), "ade20k-151").tolist() == [255, uid("wall")]
    cs = class_names("cityscapes-34")
    out = tc.convert_labels(np.array([cs.index("road"), cs.index("parking"), 255]), "cityscapes-34", "cityscapes-19")
    assert out.tolist() == [class_names("cityscapes-19").index("road"), 255, 255]


def test_pascal_context_460_keeps_uint16_values(tc):
    label = np.array([[0, 459, 255]], dtype=np.uint16)
    out = tc.convert_labels(label, "pascal-context-460", "pascal-context-60")
    background = class_names("pascal-context-60").index("background")
    assert out.dtype == np.uint16
    assert out[0, 0] == background and out[0, 2] == background  # unlabeled (and value 255) -> background


def test_errors_name_the_problem(tc):
    with pytest.raises(TaxonomyError, match="Known taxonomies: universal, naive"):
        class_names("camvid11")
    with pytest.raises(TaxonomyError, match="Did you mean 'camvid-11'"):
        tc.to_universal(np.zeros(2, np.uint8), "camvid11")
    with pytest.raises(TaxonomyError, match="Test taxonomies have no label map"):
        tc.to_universal(np.zeros(2, np.uint8), "camvid-11")
    with pytest.raises(TaxonomyError, match="test taxonomies"):
        tc.universal_to_test_matrix("ade20k-150")
    with pytest.raises(TaxonomyError, match="C = 194"):
        tc.universal_probs_to("camvid-11", torch.zeros(1, 19, 2, 2))
    with pytest.raises(TaxonomyError, match="integer dtype"):
        tc.to_universal(np.zeros(2, np.float32), "bdd")
