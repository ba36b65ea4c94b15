import json

from typer.testing import CliRunner

from posttrain.data.layouts import load_examples
from posttrain.data.schema import PreferencePair, UnpairedExample
from posttrain.feedback.cli import feedback_app

runner = CliRunner()

EVENTS = [
    {"event_id": "t1", "kind": "thumbs", "prompt": "Capital of France?", "response": "Paris.", "rating": "up"},
    {"event_id": "t2", "kind": "thumbs", "prompt": "Capital of France?", "response": "Lyon.", "rating": "down"},
    {"event_id": "e1", "kind": "edit", "prompt": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "Say hi"}],
     "response": "Hello there, how can I help?", "edited": "Hi!"},
    {"event_id": "s1", "kind": "side_by_side", "prompt": "2+2?", "responses": ["4", "5"], "choice": "a"},
    {"event_id": "s2", "kind": "pairwise", "prompt": "2+2?", "response_a": "4", "response_b": "5", "choice": "b"},
    {"event_id": "r1", "kind": "ranking", "prompt": "Pick", "responses": ["x", "y", "z"], "ranking": [2, 0, 1]},
    {"event_id": "l1", "kind": "likert", "prompt": "Poem", "response": "roses", "score": 5},
    {"event_id": "l2", "kind": "likert", "prompt": "Poem", "response": "violets", "score": 2},
]
BAD = ['{"kind": "stars", "prompt": "p"}', "not json",
       '{"kind": "ranking", "prompt": "p", "responses": ["x", "y"], "ranking": [1, 1]}',
       '{"kind": "side_by_side", "prompt": "p", "responses": ["x", "y"], "choice": "c"}',
       '{"kind": "edit", "prompt": "p", "response": "r", "edited": ""}']


def write_events(path, bad=()):
    path.write_text("".join(json.dumps(e) + "\n" for e in EVENTS) + "".join(line + "\n" for line in bad))
    return path


def test_end_to_end_writes_rows_the_trainers_load(tmp_path):
    events = write_events(tmp_path / "events.jsonl")
    out = tmp_path / "out"
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["conflicts.jsonl", "pairs.jsonl", "summary.json",
                                                    "unpaired.jsonl"]  # no temp files left behind

    pairs = load_examples(str(out / "pairs.jsonl"), "preference")
    assert [(p.prompt[-1]["content"], p.chosen, p.rejected, p.metadata["event_ids"]) for p in pairs] == [
        ("Capital of France?", [{"role": "assistant", "content": "Paris."}],
         [{"role": "assistant", "content": "Lyon."}], ["t1", "t2"]),
        ("Say hi", [{"role": "assistant", "content": "Hi!"}],
         [{"role": "assistant", "content": "Hello there, how can I help?"}], ["e1"]),
        ("Pick", [{"role": "assistant", "content": "z"}], [{"role": "assistant", "content": "x"}], ["r1"]),
        ("Pick", [{"role": "assistant", "content": "z"}], [{"role": "assistant", "content": "y"}], ["r1"]),
        ("Pick", [{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "y"}], ["r1"]),
        ("Poem", [{"role": "assistant", "content": "roses"}], [{"role": "assistant", "content": "violets"}],
         ["l1", "l2"]),
    ]
    assert all(isinstance(p, PreferencePair) for p in pairs)
    assert pairs[1].prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    assert pairs[0].metadata == {"source_kind": "thumbs", "event_ids": ["t1", "t2"], "votes": 1, "votes_against": 0}

    unpaired = load_examples(str(out / "unpaired.jsonl"), "unpaired")
    assert [(u.completion[0]["content"], u.label, u.metadata["event_ids"]) for u in unpaired] == [
        ("Paris.", True, ["t1"]), ("Lyon.", False, ["t2"])]
    assert all(isinstance(u, UnpairedExample) for u in unpaired)

    conflicts = [json.loads(line) for line in (out / "conflicts.jsonl").read_text().splitlines()]
    assert [(c["response_a"], c["response_b"], c["resolution"]) for c in conflicts] == [("4", "5", "dropped")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events"] == {"lines": 8, "malformed": 0, "valid": 8, "by_kind": {
        "thumbs": 2, "edit": 1, "side_by_side": 2, "ranking": 1, "likert": 2}}
    assert summary["rows_out"]["pairs"] == 6 and summary["rows_out"]["unpaired"] == 2
    assert summary["conflicts"]["pairs"] == 1 and summary["malformed"] == []
    assert "conflicts: 1 pairs" in result.stdout and "dropped" in result.stdout
    assert "events in" in result.stdout


def test_malformed_lines_get_one_line_errors_and_valid_lines_still_convert(tmp_path):
    events = write_events(tmp_path / "events.jsonl", BAD)
    out = tmp_path / "out"
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "--output", str(out)])
    assert result.exit_code == 0, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith(str(events))]
    assert errors == [
        f"{events}:9: field 'kind': unknown kind 'stars' (expected one of thumbs, edit, side_by_side, pairwise, "
        "ranking, likert)",
        f"{events}:10: invalid JSON: Expecting value (column 1)",
        f"{events}:11: field 'ranking': must be a permutation of 0..1 (best first): repeated [1], missing [0]",
        f"{events}:12: field 'choice': must be 'a', 'b' or 'tie', got 'c'",
        f"{events}:13: field 'edited': is empty",
    ]
    assert "warning: 5 malformed event(s) skipped" in result.stderr
    assert len(load_examples(str(out / "pairs.jsonl"), "preference")) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events"]["malformed"] == 5 and summary["malformed"] == errors


def test_strict_writes_nothing_and_exits_2(tmp_path):
    events = write_events(tmp_path / "events.jsonl", BAD[:1])
    out = tmp_path / "out"
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(out), "--strict"])
    assert result.exit_code == 2
    assert f"{events}:9: field 'kind'" in result.stderr
    assert "--strict: nothing written" in result.stderr
    assert not out.exists()
    # the same file without the bad line passes --strict
    write_events(events)
    assert runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(out), "--strict"]).exit_code == 0


def test_error_display_is_capped_with_a_count(tmp_path):
    events = write_events(tmp_path / "events.jsonl", ["not json"] * 25)
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0
    assert sum(line.startswith(str(events)) for line in result.stderr.splitlines()) == 20
    assert "... and 5 more malformed events" in result.stderr


def test_options_reach_the_conversion(tmp_path):
    events = write_events(tmp_path / "events.jsonl")
    out = tmp_path / "out"
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(out), "--ranking-mode",
                                          "best_vs_rest", "--likert-min-gap", "4", "--likert-scale", "0,10",
                                          "--likert-unpaired", "2,5", "--conflicts", "majority",
                                          "--max-pairs-per-prompt", "1"])
    assert result.exit_code == 0, result.output
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    # ranking capped to its best pair; Likert 5 vs 2 is under the gap of 4; the side-by-side tie is dropped
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("Paris.", "Lyon."), ("Hi!", "Hello there, how can I help?"), ("z", "x")]
    unpaired = [json.loads(line) for line in (out / "unpaired.jsonl").read_text().splitlines()]
    assert [(u["completion"][0]["content"], u["label"], u["source_kind"]) for u in unpaired] == [
        ("Paris.", True, "thumbs"), ("Lyon.", False, "thumbs"), ("roses", True, "likert"),
        ("violets", False, "likert")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conflicts"]["resolutions"] == {"dropped (tied)": 1}
    assert summary["skipped"]["pairs over max_pairs_per_prompt"] == 1


def test_user_mistakes_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(feedback_app, ["to-pairs", str(tmp_path / "missing.jsonl"), "-o", str(out)])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path / 'missing.jsonl'}: no such file"
    events = write_events(tmp_path / "events.jsonl")
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(out), "--conflicts", "keep"])
    assert result.exit_code == 2 and "conflict policy must be one of drop, majority" in result.stderr
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(out), "--likert-scale", "1-5"])
    assert result.exit_code == 2 and "--likert-scale must be LOW,HIGH" in result.stderr
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("not json\n")
    result = runner.invoke(feedback_app, ["to-pairs", str(only_bad), "-o", str(out)])
    assert result.exit_code == 2 and "no valid events" in result.stderr
    assert not out.exists()


def test_conflict_table_shows_replies_literally(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"kind": "side_by_side", "prompt": "p", "responses": ["[b]x[/b]", "y"],
                                          "choice": choice}) + "\n" for choice in ("a", "b")))
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0 and "[b]x[/b]" in result.stdout


def test_output_inside_a_file_is_one_line_before_reading_events(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    result = runner.invoke(feedback_app, ["to-pairs", str(tmp_path / "missing.jsonl"), "-o", str(blocker / "out")])
    assert result.exit_code == 2
    assert "--output" in result.output and "blocker" in result.output and "missing.jsonl" not in result.output


def test_multi_aspect_options_and_the_aspect_table(tmp_path):
    events = tmp_path / "aspects.jsonl"
    events.write_text("".join(json.dumps({"kind": "likert", "prompt": "Q?", "response": r, "scores": s}) + "\n"
                              for r, s in [("x", {"help": 5, "accuracy": 2}), ("y", {"help": 2, "accuracy": 4}),
                                           ("z", {"help": 1, "accuracy": 1})]))
    # accuracy 3, help 1: x 2.75, y 3.5, z 1 -> only y over z is 2 or more apart
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(tmp_path / "w"),
                                          "--aspect-weights", "accuracy=3,help=1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "w" / "pairs.jsonl").read_text().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("y", "z")]
    assert "aspects over the Likert pairs" in result.output
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["aspects"]["help"] == {"pairs": 1, "agree": 1, "tie": 0, "disagree": 0, "agreement": 1.0}
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(tmp_path / "v"), "--aspect", "help"])
    rows = [json.loads(line) for line in (tmp_path / "v" / "pairs.jsonl").read_text().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("x", "y"), ("x", "z")]
    result = runner.invoke(feedback_app, ["to-pairs", str(events), "-o", str(tmp_path / "u"),
                                          "--aspect-weights", "help"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "error: --aspect-weights: expected NAME=WEIGHT,..., got 'help'"
