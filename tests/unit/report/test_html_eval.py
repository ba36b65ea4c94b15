"""The eval section of report.html: base model column, in- vs out-of-distribution side by side, per-kind table."""

import json
import re

from posttrain.report.html import write_report


def test_eval_section_shows_base_groups_and_trained_kinds(tmp_path):
    run = tmp_path / "run"
    folder = run / "eval-aaaaaaaaaaaa"
    folder.mkdir(parents=True)
    metrics = {"constraints/pass_rate": 0.5, "baseline/constraints/pass_rate": 0.4, "base/constraints/pass_rate": 0.6,
               "length/median_words_ratio_to_base": 0.3,
               "group/in_distribution/pass_rate": 0.7, "group/in_distribution/n": 240,
               "baseline/group/in_distribution/pass_rate": 0.5, "base/group/in_distribution/pass_rate": 0.45,
               "group/out_of_distribution/pass_rate": 0.41, "group/out_of_distribution/n": 243,
               "group/out_of_distribution/constraints/pass_rate": 0.39,
               "group/out_of_distribution/length/paired_words_ratio_to_base": 0.875,
               "base/group/out_of_distribution/pass_rate": 0.43,
               "suite/constraints_ood/pass_rate": 0.38, "suite/constraints_ood/n": 142,
               "constraints/kind/lowercase/pass_rate": 0.9, "constraints/kind/lowercase/n": 10,
               "constraints/kind/lowercase/trained": 1.0, "base/constraints/kind/lowercase/pass_rate": 0.2,
               "constraints/kind/title/pass_rate": 0.1, "constraints/kind/title/n": 7,
               "constraints/kind/title/trained": 0.0,
               "constraints/trained/pass_rate": 0.9, "constraints/trained/n": 10,
               "constraints/unseen/pass_rate": 0.1, "constraints/unseen/n": 7}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"role": "model", "text": "a b", "completion_tokens": 2}, {"role": "base", "text": "a b c d",
                                                                   "completion_tokens": 4}]))
    html = write_report(run).read_text()
    section = re.search(r'<section id="eval">(.*?)</section>', html, re.S).group(1)
    assert "<th>base</th>" in section and "<th>delta vs base</th>" in section
    # the headline table: model 0.5, baseline 0.4, base 0.6, then +0.1 vs baseline and -0.1 vs base
    row = re.search(r"<tr><td>constraints/pass_rate</td>(.*?)</tr>", section).group(1)
    assert re.findall(r">([^<]*)</td>", row) == ["0.5", "0.4", "0.6", "+0.1", "-0.1"]
    assert "In distribution vs out of distribution" in section
    assert "<td>in_distribution</td>" in section and "<td>out_of_distribution</td>" in section
    assert "<td>constraints_ood</td>" in section  # per suite
    # the length against the base on the same prompts, the last column of its group's row
    ood_row = re.search(r"<tr><td>out_of_distribution</td>(.*?)</tr>", section).group(1)
    assert re.findall(r">([^<]*)</td>", ood_row)[-1] == "0.875"
    assert "<th>words / base, same prompts, no loops</th>" in section
    kinds = section[section.index("Constraint pass rate per kind"):]
    assert re.search(r"<td>lowercase</td><td>trained</td>", kinds)
    assert re.search(r"<td>title</td><td>unseen</td>", kinds)
    assert "group/" not in section.split("In distribution vs")[0]  # group keys are not repeated in the main table
    lengths = re.search(r'<section id="lengths">(.*?)</section>', html, re.S).group(1)
    assert lengths.index("<td>base</td>") < lengths.index("<td>model</td>")
