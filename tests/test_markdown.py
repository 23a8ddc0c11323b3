"""funcnn._markdown.table: the formatter behind every table funcnn prints."""

import pytest

from funcnn import _markdown


def test_columns_padded_and_numbers_right_aligned():
    text = _markdown.table(["name", "loss", "diverged"],
                           [["adam", "0.067", "False"], ["sgd_momentum", "1e-3", "True"],
                            ["rmsprop", "", "False"]])
    lines = text.splitlines()
    assert lines[0] == "| name         |  loss | diverged |"
    assert lines[1] == "|--------------|------:|----------|"
    assert lines[3] == "| sgd_momentum |  1e-3 | True     |"
    assert lines[4] == "| rmsprop      |       | False    |"
    assert len({len(line) for line in lines}) == 1


def test_no_rows_and_ragged_rows():
    assert _markdown.table(["a", "b"], []).splitlines() == ["| a   | b   |", "|-----|-----|"]
    with pytest.raises(ValueError, match="one cell per header"):
        _markdown.table(["a", "b"], [["1"]])
