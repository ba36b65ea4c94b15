"""The report's inline-SVG helpers: well-formed SVG with a <title> for every edge case."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from posttrain.report.svg import bar_chart, fmt, histogram, line_chart

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on malformed XML
    assert root.tag == f"{NS}svg"
    assert root[0].tag == f"{NS}title" and root[0].text
    for el in root.iter():  # no coordinate is NaN or infinite
        for name, value in el.attrib.items():
            assert "nan" not in value.lower() and "inf" not in value.lower(), (el.tag, name, value)
    return root


def test_line_chart_draws_a_polyline_through_every_point():
    root = parse(line_chart({"loss": [(1, 2.0), (2, 1.5), (3, 1.0)]}, "loss"))
    lines = root.findall(f".//{NS}polyline")
    assert len(lines) == 1 and len(lines[0].get("points").split()) == 3
    assert root.find(f"{NS}title").text == "loss"


def test_line_chart_one_point_is_a_marker():
    root = parse(line_chart({"loss": [(5, 0.7)]}, "one"))
    assert root.findall(f".//{NS}polyline") == [] and len(root.findall(f".//{NS}circle")) == 1


def test_line_chart_skips_none_nan_and_inf():
    root = parse(line_chart({"s": [(1, 1.0), (2, None), (3, float("nan")), (4, math.inf), (5, 2.0), (None, 3.0),
                                   (6, True)]}, "gaps"))
    assert len(root.find(f".//{NS}polyline").get("points").split()) == 2


def test_line_chart_constant_series_is_finite_and_inside_the_plot():
    root = parse(line_chart({"c": [(1, 0.5), (2, 0.5), (3, 0.5)]}, "constant"))
    ys = {float(p.split(",")[1]) for p in root.find(f".//{NS}polyline").get("points").split()}
    assert len(ys) == 1 and 0 < ys.pop() < 240


def test_line_chart_eval_points_only_and_empty_input():
    root = parse(line_chart({"train": [(1, 1.0), (2, 0.9)], "eval": [(2, 0.95)]}, "t", points_only=["eval"]))
    assert len(root.findall(f".//{NS}polyline")) == 1 and len(root.findall(f".//{NS}circle")) == 1
    empty = parse(line_chart({"s": [(1, None)]}, "empty"))
    assert "no data" in "".join(empty.itertext())
    assert "no data" in "".join(parse(line_chart({}, "nothing")).itertext())


def test_text_is_escaped():
    svg = line_chart({"<b>&": [(1, 1.0), (2, 2.0)]}, "a <script>alert(1)</script> & b")
    root = parse(svg)
    assert "<script>" not in svg and root.find(f"{NS}title").text == "a <script>alert(1)</script> & b"


def test_bar_chart_and_histogram():
    root = parse(bar_chart(["kept", "tie", "margin"], {"pairs": [8, 0, None]}, "pairs"))
    assert len(root.findall(f".//{NS}rect[@class='bar']")) == 2  # None draws no bar
    hist = parse(histogram({"baseline": [1, 2, 2, 3, float("nan")], "model": [3, 4, None]}, "lengths", bins=3))
    heights = [r for r in hist.findall(f".//{NS}rect[@class='bar']")]
    counts = [int(re.search(r": (\d+)$", r.find(f"{NS}title").text).group(1)) for r in heights]
    assert sum(counts) == 6  # 4 baseline + 2 model finite samples
    single = parse(histogram({"model": [8, 8, 8]}, "constant lengths"))
    assert len(single.findall(f".//{NS}rect[@class='bar']")) == 1
    parse(histogram({"model": []}, "empty"))
    parse(bar_chart([], {}, "empty"))


def test_fmt():
    assert fmt(3.0) == "3" and fmt(0.69314718) == "0.6931" and fmt(None) == "" and fmt("x") == "x"
    assert fmt(float("nan")) == "nan"


def test_bar_labels_are_cut_to_the_width_of_their_group():
    """12 long labels on a 460 px chart: each x label fits its group (~6 px a character at font-size 10), so no two
    overlap; the full label stays as the text's tooltip."""
    labels = [f"pass rate: constraint_kind_{i}" for i in range(12)]
    root = parse(bar_chart(labels, {"rate": [0.5] * 12}, "per kind"))
    texts = [t for t in root.iter(f"{NS}text") if t.find(f"{NS}title") is not None]
    assert len(texts) == 12
    xs = [float(t.get("x")) for t in texts]
    gap = xs[1] - xs[0]
    for t in texts:
        shown = "".join(t.itertext())[len(t.find(f"{NS}title").text):]
        assert len(shown) * 6.2 <= gap + 1e-6 and shown.endswith("\u2026")
        assert t.find(f"{NS}title").text.startswith("pass rate: constraint_kind_")
    short = parse(bar_chart(["kept", "tie"], {"pairs": [8, 1]}, "pairs"))
    assert [t.find(f"{NS}title").text for t in short.iter(f"{NS}text") if t.find(f"{NS}title") is not None] == [
        "kept", "tie"]
