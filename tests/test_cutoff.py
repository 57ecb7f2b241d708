"""Cut-offs: parsing ``--arch``, kept widths for ``--rate``, and picking the top-scoring units."""
from __future__ import annotations

import pytest
import torch

from pyro_dirichlet_prune.errors import UserError
from pyro_dirichlet_prune.pruning.cutoff import arch_string, keep_top, parse_arch, rate_widths

WIDTHS = {"conv1": 10, "conv2": 20, "fc1": 100, "fc2": 25}


def test_parse_arch_valid():
    assert parse_arch("6-8-40-20", WIDTHS) == {"conv1": 6, "conv2": 8, "fc1": 40, "fc2": 20}
    assert parse_arch(" 10-20-100-25 ", WIDTHS) == WIDTHS
    assert parse_arch("1-1-1-1", WIDTHS) == dict.fromkeys(WIDTHS, 1)


@pytest.mark.parametrize(
    "arch",
    [
        "6-8-40",  # too short
        "6-8-40-20-5",  # too long
        "11-8-40-20",  # wider than conv1
        "6-8-40-26",  # wider than fc2
        "0-8-40-20",  # zero
        "6-8-40-x",  # not an integer
        "6-8-40.5-20",  # not an integer
        "6-8--40-20",  # empty / negative
        "-6-8-40-20",
        "",
        "6,8,40,20",
    ],
)
def test_parse_arch_errors(arch):
    with pytest.raises(UserError):
        parse_arch(arch, WIDTHS)


def test_parse_arch_error_messages_are_informative():
    with pytest.raises(UserError, match="4 prunable"):
        parse_arch("6-8-40", WIDTHS)
    with pytest.raises(UserError, match="fc1 has 100 units"):
        parse_arch("6-8-400-20", WIDTHS)


def test_rate_widths():
    """kept = max(1, round(D·(1 - rate)))."""
    assert rate_widths(0.0, WIDTHS) == WIDTHS
    assert rate_widths(0.5, WIDTHS) == {"conv1": 5, "conv2": 10, "fc1": 50, "fc2": 13}  # 12.5 rounds up
    assert rate_widths(0.99, WIDTHS) == {"conv1": 1, "conv2": 1, "fc1": 1, "fc2": 1}
    assert rate_widths(0.7, WIDTHS) == {"conv1": 3, "conv2": 6, "fc1": 30, "fc2": 8}
    for rate in (0.1, 0.33, 0.6, 0.85):
        for name, k in rate_widths(rate, WIDTHS).items():
            d = WIDTHS[name]
            assert 1 <= k <= d
            assert abs(k - d * (1 - rate)) <= 0.5 + 1e-9 or k == 1
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(UserError):
            rate_widths(bad, WIDTHS)


def test_keep_top_picks_highest_scores():
    torch.manual_seed(0)
    scores = {"a": torch.rand(30, dtype=torch.float64), "b": torch.tensor([0.1, 0.5, 0.2, 0.9])}
    out = keep_top(scores, {"a": 7, "b": 2})
    assert out["b"] == [1, 3]
    expected = sorted(torch.topk(scores["a"], 7).indices.tolist())
    assert out["a"] == expected
    assert out["a"] == sorted(out["a"])
    kept_min = min(float(scores["a"][i]) for i in out["a"])
    dropped_max = max(float(scores["a"][i]) for i in range(30) if i not in out["a"])
    assert kept_min > dropped_max


def test_keep_top_ties_go_to_lower_index_and_keep_all():
    scores = {"a": torch.tensor([0.2, 0.5, 0.5, 0.5, 0.1])}
    assert keep_top(scores, {"a": 2}) == {"a": [1, 2]}
    assert keep_top(scores, {"a": 5}) == {"a": [0, 1, 2, 3, 4]}
    assert keep_top(scores, {"a": 1}) == {"a": [1]}


def test_arch_string():
    assert arch_string({"a": [0, 3, 4], "b": [1]}) == "3-1"
    assert arch_string({"a": 6, "b": 8, "c": 40, "d": 20}) == "6-8-40-20"
