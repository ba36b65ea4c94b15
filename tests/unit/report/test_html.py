"""write_report on hand-made run folders: missing parts say so, nothing crashes, user text is escaped."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from posttrain.report.html import write_report
from posttrain.report.terminal import print_summary

SECTIONS = ("summary", "training", "pairs", "eval", "lengths", "gates")


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, list):
        path.write_text("".join(json.dumps(r) + "\n" for r in obj))
    else:
        path.write_text(json.dumps(obj))


def section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert m, sid
    return m.group(1)


def svgs_are_wellformed(html: str) -> int:
    found = re.findall(r"<svg .*?</svg>", html, re.S)
    for svg in found:
        ET.fromstring(svg)
    return len(found)


def test_empty_folder_shows_every_section_as_missing(tmp_path):
    html = write_report(tmp_path).read_text()
    for sid in SECTIONS:
        assert "not in this run" in section(html, sid)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html


def test_minimal_run_with_missing_parts_and_hostile_text(tmp_path):
    run = tmp_path / "run"
    evil = "<script>alert('x')</script>"
    write(run / "manifest.json", {
        "run_dir": str(run), "status": "failed", "order": ["sft", "eval", "gate", "judge"],
        "stages": {
            "sft": {"command": "sft", "status": "done", "wall_time_s": 1.5, "folder": "/elsewhere/sft-0123456789ab",
                    "main_metric": ["train/loss", 1.25]},
            "eval": {"command": "eval", "status": "done", "folder": str(run / "eval-aaaaaaaaaaaa")},
            "gate": {"command": "gate", "status": "failed", "error": f"GateFailed: {evil}",
                     "folder": str(run / "gate-bbbbbbbbbbbb")},
            "judge": {"command": "judge", "status": "running", "folder": str(run / "judge-cccccccccccc")}}})
    # The sft folder was recorded elsewhere (the run moved): found by name; metrics.jsonl with a broken line.
    (run / "sft-0123456789ab").mkdir()
    (run / "sft-0123456789ab" / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": NaN}\n{"step": 2, "split": "eval", "loss": 1.9}\n')
    write(run / "eval-aaaaaaaaaaaa" / "metrics.json", {"constraints/pass_rate": 0.6, "baseline/constraints/pass_rate":
                                                       0.5, "winrate/win_rate": 0.7, "winrate/ci_low": 0.55,
                                                       "winrate/ci_high": 0.8, "winrate/n": 20,
                                                       "winrate/slice/constraints/capital/win_rate": 0.9,
                                                       "winrate/slice/constraints/capital/n": 10,
                                                       "winrate/slice/constraints/capital/ci_low": 0.6,
                                                       "winrate/slice/constraints/capital/ci_high": 0.98})
    write(run / "eval-aaaaaaaaaaaa" / "responses.jsonl", [
        {"role": "model", "text": evil, "completion_tokens": 12},
        {"role": "baseline", "text": "plain words here", "completion_tokens": None}])
    write(run / "gate-bbbbbbbbbbbb" / "gates.json", {"passed": False, "results": [
        {"metric": evil, "kind": "min", "threshold": 0.9, "value": 0.6, "passed": False, "reason": "0.6 < 0.9"},
        {"metric": "constraints/pass_rate", "kind": "min_delta", "threshold": 0.0, "value": 0.6,
         "baseline_value": 0.5, "passed": True, "reason": "ok"}]})
    # judge folder does not exist at all.

    html = write_report(run).read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert svgs_are_wellformed(html) >= 2
    training = section(html, "training")
    assert "<svg" in training and 'class="point"' in training  # the eval point is marked
    assert "not in this run" in section(html, "pairs")  # judge folder missing
    ev = section(html, "eval")
    assert "+0.1" in ev and "0.7" in ev and "95% CI 0.55 to 0.8" in ev
    assert "Win rate per slice" in ev and "constraints/capital" in ev and "0.6 to 0.98" in ev
    assert "<svg" in section(html, "lengths")
    gates = section(html, "gates")
    assert gates.count('class="fail"') >= 2 and gates.count('class="pass"') == 1
    summary = section(html, "summary")
    assert "train/loss = 1.25" in summary and "FAIL" in summary and "PASS" in summary


def test_no_manifest_finds_stage_folders_and_print_summary(tmp_path, capsys):
    write(tmp_path / "dpo-0123456789ab" / "metrics.jsonl",
          [{"step": s, "loss": 0.69 - 0.01 * s, "rewards/margins": 0.1 * s, "rewards/accuracy": 0.5, "kl": 0.01}
           for s in range(1, 4)])
    write(tmp_path / "judge-0123456789ab" / "summary.json", {"pairs": {"pairs_kept": 3, "dropped": {"tie": 2},
                                                                       "length": {"unit": "chars"}}})
    write(tmp_path / "gate-0123456789ab" / "gates.json", {"passed": False, "results": [
        {"metric": "refusal/benign_rate", "kind": "max", "threshold": 0.1, "value": 0.3, "passed": False}]})
    html = write_report(tmp_path).read_text()
    training = section(html, "training")
    for chart in ("dpo: loss", "dpo: rewards/margins", "dpo: rewards/accuracy", "dpo: kl"):
        assert f"<title>{chart}</title>" in training
    assert "dropped: tie" in section(html, "pairs")
    print_summary(tmp_path)
    out = capsys.readouterr().out
    assert "dpo" in out and "judge" in out and "FAIL 1/1: refusal/benign_rate" in out
