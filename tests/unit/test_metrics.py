"""models.metrics against second implementations (scikit-learn, pycocotools via torchmetrics) and hand-worked cases.

The quality tests recompute the published figures with these same functions, so only checks like these
catch a bug in the metrics themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, jaccard_score, precision_recall_fscore_support
from torchmetrics.detection import MeanAveragePrecision

from models.metrics import Detections, classification_report, detection_map, mean_iou, segmentation_confusion

# ---- classification ---------------------------------------------------------------------


def _random_labels(seed: int, num_classes: int = 6, size: int = 150) -> tuple[list[int], list[int]]:
    """Skewed truth (the last class rare) and predictions right about 60% of the time."""
    rng = np.random.default_rng(seed)
    weights = np.array([5, 4, 3, 3, 2, 0.2])[:num_classes]
    truth = rng.choice(num_classes, size, p=weights / weights.sum())
    guess = rng.choice(num_classes - 1, size)  # never the last class by guessing
    predicted = np.where(rng.random(size) < 0.6, truth, guess)
    return truth.tolist(), predicted.tolist()


def _assert_matches_sklearn(truth: list[int], predicted: list[int], num_classes: int) -> None:
    report = classification_report(truth, predicted, num_classes)
    # scikit-learn's macro average runs over the labels seen in truth or predictions, as ours does, and
    # zero_division=0 is ours for a class never predicted (precision) or absent from the truth (recall).
    precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0.0)
    assert report.accuracy == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    assert report.precision == pytest.approx(precision, abs=1e-12)
    assert report.recall == pytest.approx(recall, abs=1e-12)
    assert report.f1 == pytest.approx(f1, abs=1e-12)
    np.testing.assert_array_equal(report.confusion, confusion_matrix(truth, predicted, labels=list(range(num_classes))))


@pytest.mark.parametrize("seed", range(6))
def test_classification_report_matches_scikit_learn_on_random_labels(seed: int) -> None:
    _assert_matches_sklearn(*_random_labels(seed), num_classes=6)


@dataclass(frozen=True)
class ClassificationCase:
    """Labels and the figures worked out by hand for them."""

    truth: list[int]
    predicted: list[int]
    accuracy: float
    precision: float
    recall: float
    f1: float


CLASSIFICATION_CASES = {
    # Class 3 is in neither list, so it is left out of the averages rather than counted as 0.
    "all_correct": ClassificationCase([0, 1, 2, 2], [0, 1, 2, 2], 1.0, 1.0, 1.0, 1.0),
    "all_wrong": ClassificationCase([0, 1, 2], [1, 2, 0], 0.0, 0.0, 0.0, 0.0),
    # Class 2 is never predicted: its precision counts as 0 (P 1/2, 1/2, 0; R 1, 1, 0; F1 2/3, 2/3, 0).
    "class_never_predicted": ClassificationCase([0, 1, 2, 2], [0, 1, 1, 0], 0.5, 1 / 3, 2 / 3, 4 / 9),
    # Class 2 is predicted but absent from the truth: its recall counts as 0 (P 1, 1, 0; R 1/2, 1, 0).
    "class_absent_from_truth": ClassificationCase([0, 0, 1, 1], [0, 2, 1, 1], 0.75, 2 / 3, 1 / 2, 5 / 9),
}


@pytest.mark.parametrize("case", CLASSIFICATION_CASES.values(), ids=CLASSIFICATION_CASES.keys())
def test_classification_report_gives_the_hand_computed_figures(case: ClassificationCase) -> None:
    report = classification_report(case.truth, case.predicted, num_classes=4)
    assert report.accuracy == pytest.approx(case.accuracy, abs=1e-12)
    assert report.precision == pytest.approx(case.precision, abs=1e-12)
    assert report.recall == pytest.approx(case.recall, abs=1e-12)
    assert report.f1 == pytest.approx(case.f1, abs=1e-12)
    _assert_matches_sklearn(case.truth, case.predicted, num_classes=4)


def test_classification_confusion_has_truth_in_rows_and_predictions_in_columns() -> None:
    report = classification_report([0, 0, 1], [1, 1, 1], num_classes=3)
    assert report.confusion.tolist() == [[0, 2, 0], [0, 1, 0], [0, 0, 0]]
    assert report.as_dict(["a", "b", "c"])["confusion"] == [[0, 2, 0], [0, 1, 0], [0, 0, 0]]


# ---- detection --------------------------------------------------------------------------


def _random_scenes(seed: int, ties: bool, images: int = 40, num_classes: int = 4) -> tuple[list[Detections], ...]:
    """Ground truth, jittered hits (some duplicated, some mislabelled) and stray boxes, integer coordinates."""
    rng = np.random.default_rng(seed)
    predictions, truths = [], []
    for _ in range(images):
        count = int(rng.integers(0, 5))  # images with no ground truth too
        corner = rng.integers(0, 80, (count, 2))
        truth_boxes = np.concatenate([corner, corner + rng.integers(10, 40, (count, 2))], axis=1).astype(np.float32)
        truth_labels = rng.integers(0, num_classes, count)
        boxes, labels = [], []
        for box, label in zip(truth_boxes, truth_labels, strict=True):
            for _ in range(int(rng.integers(0, 3))):  # missed, found, or found twice
                boxes.append(box + rng.integers(-4, 5, 4))
                labels.append(label if rng.random() < 0.85 else rng.integers(0, num_classes))
        for _ in range(int(rng.integers(0, 3))):
            stray = rng.integers(0, 80, 2)
            boxes.append(np.concatenate([stray, stray + rng.integers(10, 40, 2)]))
            labels.append(rng.integers(0, num_classes))
        predicted = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        predicted[:, 2:] = np.maximum(predicted[:, 2:], predicted[:, :2] + 1)
        scores = rng.random(len(boxes))
        if ties:
            scores = np.round(scores, 1)  # many equal scores, within and across images
        predictions.append(Detections(predicted, np.asarray(labels, dtype=np.int64), scores.astype(np.float32)))
        truths.append(Detections(truth_boxes, truth_labels.astype(np.int64)))
    return predictions, truths


def _coco_average_precision(
    predictions: list[Detections], truths: list[Detections], cls: int, iou_threshold: float
) -> float:
    """AP of one class by pycocotools' COCOeval (through torchmetrics), on the all-point definition ours uses.

    COCOeval samples the precision envelope at fixed recall thresholds (101 by default) where ours
    integrates it over every recall step (VOC 2010+ all points), so on their defaults the two legitimately
    differ. A class with P ground-truth boxes only reaches recalls k/P, and on ((k-1)/P, k/P] the envelope is
    constant, so sampling it just below each k/P and averaging is exactly the all-point area. The offset keeps
    a rounding of k/P in either code from moving a sample into the next step.
    """
    positives = sum(int((truth.labels == cls).sum()) for truth in truths)
    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        iou_thresholds=[iou_threshold],
        rec_thresholds=[k / positives - 1e-9 for k in range(1, positives + 1)],
        backend="pycocotools",
    )
    # COCOeval also keeps at most 100 detections per image and class; no case here has that many.
    metric.update(
        [
            {
                "boxes": torch.as_tensor(p.boxes[p.labels == cls]),
                "scores": torch.as_tensor(_scores(p)[p.labels == cls]),
                "labels": torch.as_tensor(p.labels[p.labels == cls]),
            }
            for p in predictions
        ],
        [
            {"boxes": torch.as_tensor(t.boxes[t.labels == cls]), "labels": torch.as_tensor(t.labels[t.labels == cls])}
            for t in truths
        ],
    )
    return float(metric.compute()["map"])


def _scores(prediction: Detections) -> np.ndarray:
    """The scores of a prediction, which every case here has."""
    assert prediction.scores is not None
    return prediction.scores


@pytest.mark.parametrize("ties", [False, True], ids=["distinct_scores", "tied_scores"])
@pytest.mark.parametrize("iou_threshold", [0.5, 0.75])
@pytest.mark.parametrize("seed", range(4))
def test_detection_map_matches_coco_evaluation_on_random_scenes(seed: int, iou_threshold: float, ties: bool) -> None:
    predictions, truths = _random_scenes(seed, ties)
    mean, per_class = detection_map(predictions, truths, num_classes=4, iou_threshold=iou_threshold)
    assert sorted(per_class) == [c for c in range(4) if any((t.labels == c).any() for t in truths)]
    for cls, ap in per_class.items():
        # torchmetrics returns float32.
        assert ap == pytest.approx(_coco_average_precision(predictions, truths, cls, iou_threshold), abs=1e-6), cls
    assert mean == pytest.approx(float(np.mean(list(per_class.values()))), abs=1e-12)


def _image(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None) -> Detections:
    """One image's boxes, x1 y1 x2 y2."""
    return Detections(
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
        None if scores is None else np.asarray(scores, dtype=np.float32),
    )


A, B, C = [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 0.0, 50.0, 10.0]
STRAY = [60.0, 60.0, 70.0, 70.0]


@dataclass(frozen=True)
class DetectionCase:
    """Detections, ground truth and the AP per class worked out by hand."""

    predictions: list[Detections]
    truths: list[Detections]
    expected: dict[int, float]
    iou_threshold: float = 0.5


DETECTION_CASES = {
    "perfect": DetectionCase([_image([A, B], [0, 1], [0.9, 0.8])], [_image([A, B], [0, 1])], {0: 1.0, 1: 1.0}),
    # The second box on A finds A taken: a false positive ranked above B's hit. Precision 1, 1/2, 2/3 at
    # recall 1/2, 1/2, 1: area 1/2 * 1 + 1/2 * 2/3.
    "duplicate_detection_is_a_false_positive": DetectionCase(
        [_image([A, A, B], [0, 0, 0], [0.9, 0.8, 0.7])], [_image([A, B], [0, 0])], {0: 5 / 6}
    ),
    # Equal scores rank in image order, then in order within an image, as COCOeval's stable sorts do: the
    # same two detections score 1/2 or 1 depending on which image comes first.
    "tied_scores_rank_a_false_positive_of_an_earlier_image_first": DetectionCase(
        [_image([STRAY], [0], [0.5]), _image([A], [0], [0.5])], [_image([], []), _image([A], [0])], {0: 0.5}
    ),
    "tied_scores_rank_a_hit_of_an_earlier_image_first": DetectionCase(
        [_image([A], [0], [0.5]), _image([STRAY], [0], [0.5])], [_image([A], [0]), _image([], [])], {0: 1.0}
    ),
    "tied_scores_within_an_image_keep_their_order": DetectionCase(
        [_image([STRAY, A], [0, 0], [0.5, 0.5])], [_image([A], [0])], {0: 0.5}
    ),
    "no_predictions_score_zero": DetectionCase(
        [_image([], [], []), _image([], [], [])], [_image([A], [0]), _image([B], [1])], {0: 0.0, 1: 0.0}
    ),
    "false_positive_on_an_image_without_ground_truth_costs_precision": DetectionCase(
        [_image([A], [0], [0.9]), _image([STRAY], [0], [0.95])], [_image([A], [0]), _image([], [])], {0: 0.5}
    ),
    "false_positive_ranked_below_every_hit_costs_nothing": DetectionCase(
        [_image([A], [0], [0.9]), _image([STRAY], [0], [0.1])], [_image([A], [0]), _image([], [])], {0: 1.0}
    ),
    # Class 1 has no ground truth: it has no AP and is left out of the mean (which stays 1, not 1/2).
    "class_without_ground_truth_is_left_out": DetectionCase(
        [_image([A, STRAY], [0, 1], [0.9, 0.99])], [_image([A], [0])], {0: 1.0}
    ),
    "right_box_with_the_wrong_class_is_a_miss": DetectionCase([_image([A], [1], [0.9])], [_image([A], [0])], {0: 0.0}),
    # IoU 1/2 and 3/4 exactly (both exact in binary): a hit at that threshold, as COCOeval's >=.
    "iou_exactly_at_the_threshold_is_a_hit": DetectionCase(
        [_image([[0, 0, 1, 1]], [0], [0.9])], [_image([[0, 0, 2, 1]], [0])], {0: 1.0}
    ),
    "iou_exactly_at_a_threshold_of_0_75_is_a_hit": DetectionCase(
        [_image([[0, 0, 3, 1]], [0], [0.9])], [_image([[0, 0, 4, 1]], [0])], {0: 1.0}, iou_threshold=0.75
    ),
    "iou_just_below_the_threshold_is_a_miss": DetectionCase(
        [_image([[0, 0, 499, 1]], [0], [0.9])], [_image([[0, 0, 1000, 1]], [0])], {0: 0.0}
    ),
    # Hit, miss, hit, miss, miss on 3 objects: precision envelope 1 up to recall 1/3 and 2/3 up to 2/3, so
    # the all-point area is 1/3 + 2/9 = 5/9. COCO's 101-point sampling would give 56/101.
    "ap_is_the_area_under_the_precision_envelope_at_every_recall_step": DetectionCase(
        [_image([A, STRAY, B, [80, 0, 90, 10], [0, 80, 10, 90]], [0] * 5, [0.9, 0.8, 0.7, 0.6, 0.5])],
        [_image([A, B, C], [0, 0, 0])],
        {0: 5 / 9},
    ),
    # The second box overlaps the taken A best (IoU 0.9) and B next (8/9): it matches B, as in COCOeval;
    # the VOC devkit, which only looks at the best overlap, would count it a false positive (AP 1/2).
    "detection_whose_best_box_is_taken_matches_the_next_best": DetectionCase(
        [_image([[0, 0, 10, 10], [0, 0, 10, 9]], [0, 0], [0.9, 0.8])],
        [_image([[0, 0, 10, 10], [0, 0, 10, 8]], [0, 0])],
        {0: 1.0},
    ),
}


@pytest.mark.parametrize("case", DETECTION_CASES.values(), ids=DETECTION_CASES.keys())
def test_detection_map_gives_the_hand_computed_ap(case: DetectionCase) -> None:
    mean, per_class = detection_map(case.predictions, case.truths, num_classes=2, iou_threshold=case.iou_threshold)
    assert per_class == pytest.approx(case.expected, abs=1e-12)
    assert mean == pytest.approx(float(np.mean(list(case.expected.values()))), abs=1e-12)


@pytest.mark.parametrize("case", DETECTION_CASES.values(), ids=DETECTION_CASES.keys())
def test_coco_evaluation_gives_the_same_hand_computed_ap(case: DetectionCase) -> None:
    # Checks the hand-worked answers and the reference harness against each other.
    for cls, expected in case.expected.items():
        assert _coco_average_precision(case.predictions, case.truths, cls, case.iou_threshold) == pytest.approx(
            expected, abs=1e-6
        )


def test_map_gives_an_iou_tie_to_the_first_ground_truth_box() -> None:
    # The first detection overlaps both boxes by 0.6; ours matches the first box, so the second detection,
    # which overlaps only that box, misses. COCOeval gives the tie to the last box instead and scores 1:
    # both are greedy matchings, and none of the seeded scenes above has a tie that changes a match.
    predictions = [_image([[2.5, 0, 12.5, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])]
    truths = [_image([[0, 0, 10, 10], [5, 0, 15, 10]], [0, 0])]
    assert detection_map(predictions, truths, num_classes=1) == (0.5, {0: 0.5})


def test_map_of_predictions_without_scores_ranks_them_in_order() -> None:
    truths = [_image([A, B], [0, 0])]
    assert detection_map([_image([STRAY, A, B], [0, 0, 0])], truths, num_classes=1)[1] == pytest.approx(
        {0: 2 / 3}, abs=1e-12
    )


def test_map_without_any_ground_truth_is_zero_over_no_classes() -> None:
    assert detection_map([_image([A], [0], [0.9])], [_image([], [])], num_classes=2) == (0.0, {})


# ---- segmentation -----------------------------------------------------------------------


def test_mean_iou_gives_the_hand_computed_figures_and_leaves_out_an_absent_class() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    predicted = np.array([[0, 1, 1], [1, 2, 0]])
    # Class 0: 1 shared pixel of 3 in either; class 1: 2 of 3; class 2: 1 of 2; class 3 in neither.
    miou, ious = mean_iou(segmentation_confusion(truth, predicted, num_classes=4))
    np.testing.assert_allclose(ious, [1 / 3, 2 / 3, 1 / 2, np.nan], rtol=0, atol=1e-12)
    assert miou == pytest.approx(0.5, abs=1e-12)


def test_mean_iou_counts_a_class_only_predicted_as_zero() -> None:
    miou, ious = mean_iou(segmentation_confusion(np.array([0, 0]), np.array([0, 2]), num_classes=3))
    np.testing.assert_allclose(ious, [1 / 2, np.nan, 0.0], rtol=0, atol=1e-12)
    assert miou == pytest.approx(0.25, abs=1e-12)


def test_mean_iou_pools_the_pixels_of_a_data_set_before_dividing() -> None:
    # Per image the means would be 1 and 1/4; pooled, class 0 is 1 of 2 pixels and class 1 is 4 of 5.
    confusion = segmentation_confusion(np.ones((2, 2)), np.ones((2, 2)), num_classes=2)
    confusion += segmentation_confusion(np.array([[0, 1]]), np.array([[0, 0]]), num_classes=2)
    miou, ious = mean_iou(confusion)
    np.testing.assert_allclose(ious, [1 / 2, 4 / 5], rtol=0, atol=1e-12)
    assert miou == pytest.approx(0.65, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_mean_iou_matches_scikit_learn_jaccard_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Five classes in use out of seven: two absent from both masks, and class 4 only in the prediction.
    truth = rng.choice(4, (2, 24, 24), p=[0.55, 0.25, 0.15, 0.05])
    predicted = np.where(rng.random(truth.shape) < 0.7, truth, rng.choice(5, truth.shape))
    confusion = sum(segmentation_confusion(t, p, num_classes=7) for t, p in zip(truth, predicted, strict=True))
    miou, ious = mean_iou(np.asarray(confusion))
    present = np.union1d(truth, predicted)
    expected = jaccard_score(truth.ravel(), predicted.ravel(), labels=present, average=None)
    np.testing.assert_allclose(ious[present], expected, rtol=0, atol=1e-12)
    assert np.isnan(np.delete(ious, present)).all()
    assert miou == pytest.approx(jaccard_score(truth.ravel(), predicted.ravel(), average="macro"), abs=1e-12)


def test_mean_iou_of_an_empty_confusion_is_zero_with_every_class_absent() -> None:
    miou, ious = mean_iou(np.zeros((3, 3), dtype=np.int64))
    assert miou == 0.0
    assert np.isnan(ious).all()


def test_segmentation_confusion_rejects_masks_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="mask shapes differ"):
        segmentation_confusion(np.zeros((2, 2)), np.zeros((2, 3)), num_classes=2)
