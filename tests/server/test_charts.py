"""The pure pieces of the dashboard: JSON folding, chart geometry, durations."""

from __future__ import annotations

from stride.server.charts import CHART_H, bar_chart, human_ms, polyline
from stride.server.jsonfold import FOLD_CHARS, MAX_NODES, fold, preview


def test_small_values_stay_open_and_big_ones_fold() -> None:
    tree = fold({"id": 7, "name": "ada", "blob": "x" * (FOLD_CHARS + 10), "rows": list(range(200))})
    assert tree.kind == "object" and tree.folded
    by_key = {child.key: child for child in tree.children}
    assert (by_key["id"].kind, by_key["id"].text, by_key["id"].folded) == ("scalar", "7", False)
    assert by_key["blob"].kind == "string" and by_key["blob"].folded
    assert preview(by_key["blob"]).endswith(f"{FOLD_CHARS + 12:,} chars")
    assert by_key["rows"].folded and preview(by_key["rows"]).startswith("[…] 200 items")


def test_huge_values_are_cut_after_the_node_budget() -> None:
    tree = fold(list(range(MAX_NODES * 3)))
    assert len(tree.children) == MAX_NODES
    assert tree.children[-1].kind == "raw"
    assert tree.children[-1].text.endswith("more not shown")


def test_bars_scale_to_the_largest_value_and_skip_zeros() -> None:
    rects = bar_chart([0, 2, 4], ["a", "b", "c"])
    assert [r.title for r in rects] == ["b", "c"]
    assert rects[1].h == CHART_H - 2 and rects[0].h == (CHART_H - 2) / 2


def test_lines_break_at_gaps_and_show_lone_points() -> None:
    lines = polyline([1.0, 2.0, None, 3.0], top=3.0)
    assert len(lines) == 2
    assert len(lines[0].split()) == 2
    assert len(lines[1].split()) == 2, "a lone point becomes a short dash"


def test_durations_read_well() -> None:
    assert [human_ms(v) for v in (None, 5, 1530, 125_000, 7_500_000)] == [
        "\u2013", "5 ms", "1.5 s", "2 m 05 s", "2 h 05 m"]
