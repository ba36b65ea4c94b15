"""The labeling and audit app end to end: its store tables on SQLite and a real PostgreSQL server, and the pages
driven by a real headless Chromium (Debian's, through Playwright) against `posttrain label serve` on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.data.schema import DataError
from posttrain.feedback.convert import convert_events
from posttrain.feedback.events import read_events
from posttrain.feedback.store import FeedbackStore

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPT = [{"role": "user", "content": "Name a colour."}]


def test_label_tables_and_their_events(store_url, tmp_path):
    store = FeedbackStore(store_url)
    token = store.add_labeler("ann")
    admin = store.add_labeler("root", "admin")
    assert store.labeler(token) == ("ann", "labeler") and store.labeler(admin) == ("root", "admin")
    assert store.labeler("nope") is None and store.labeler(None) is None
    with pytest.raises(DataError, match="field 'role'"):
        store.add_labeler("x", "owner")
    ids = store.add_label_tasks("side_by_side", [
        {"prompt": PROMPT, "a": "Red.", "b": "Soup.", "display": ["b", "a"]},
        {"prompt": PROMPT, "a": "Blue.", "b": "Lamp.", "display": ["a", "b"]},
        {"prompt": PROMPT, "a": "Tea.", "b": "Rock.", "display": ["a", "b"]},
        {"prompt": PROMPT, "a": "Green.", "b": "Teal.", "display": ["a", "b"]}], batch="b1")
    assert store.next_label_task("side_by_side", "ann")["id"] == ids[0]
    store.add_label_answer(ids[0], "ann", {"choice": "a", "side": "right"})
    with pytest.raises(DataError, match="already answered by ann"):
        store.add_label_answer(ids[0], "ann", {"choice": "b", "side": "left"})
    with pytest.raises(DataError, match="field 'choice'"):
        store.add_label_answer(ids[1], "ann", {"choice": "up"})
    with pytest.raises(DataError, match="no label task 999"):
        store.add_label_answer(999, "ann", {"choice": "a"})
    store.add_label_answer(ids[1], "ann", {"choice": "a", "side": "left", "edited": "Blue, like the sky."})
    store.add_label_answer(ids[2], "ann", {"choice": "both_bad", "side": "both_bad"})
    store.add_label_answer(ids[3], "ann", {"choice": "tie", "side": "tie"})
    assert store.label_progress("side_by_side") == (4, 4) and store.next_label_task("side_by_side", "ann") is None
    assert store.label_batches("side_by_side") == ["b1"] and store.count("label_answers") == 4
    kinds = [(e["kind"], e["event_id"].split(":", 2)[-1] if e["event_id"].count(":") == 2 else "")
             for e in store.label_events()]
    assert kinds == [("side_by_side", ""), ("side_by_side", ""), ("edit", "edit"), ("thumbs", "a"), ("thumbs", "b"),
                     ("side_by_side", "")]
    out = tmp_path / "events.jsonl"
    assert CliRunner().invoke(app, ["feedback", "export", "--store", store_url, "-o", str(out)]).exit_code == 0
    events, errors, _ = read_events([str(out)])
    conv = convert_events(events)
    assert not errors
    assert sorted((p.chosen[-1]["content"], p.rejected[-1]["content"]) for p in conv.pairs) == [("Blue, like the sky.", "Blue."), ("Blue.", "Lamp."),
                                                                  ("Red.", "Soup.")]
    assert sorted((u.completion[-1]["content"], u.label) for u in conv.unpaired) == [("Rock.", False), ("Tea.", False)]


def test_several_labelers_per_task_assignment_and_agreement(store_url, tmp_path):
    """``label add --answers 2 --assign ann,bob,cy``: each task goes to two of the three assigned labelers, never twice
    to one, and to nobody else; `label report` gives their agreement (hand-counted)."""
    store = FeedbackStore(store_url)
    for name in ("ann", "bob", "cy", "dan"):
        store.add_labeler(name)
    rows = [{"prompt": PROMPT, "a": a, "b": b, "display": ["a", "b"]}
            for a, b in [("Red.", "Soup."), ("Blue.", "Lamp."), ("Tea.", "Rock.")]]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "response_a": r["a"], "response_b": r["b"]}) + "\n"
                            for r in rows))
    res = CliRunner().invoke(app, ["label", "add", str(path), "--store", store_url, "--answers", "2",
                                   "--assign", "ann,bob,cy"])
    assert res.exit_code == 0 and "3 side-by-side task(s), 2 answers each, for ann, bob, cy" in res.output
    assert store.next_label_task("side_by_side", "dan") is None  # not assigned
    first = store.next_label_task("side_by_side", "ann")
    with pytest.raises(DataError, match="is assigned to ann, bob, cy, not dan"):
        store.add_label_answer(first["id"], "dan", {"choice": "a"})
    # ann and bob answer all three; cy finds nothing left; the choices (response labels) agree on 2 of 3 tasks
    choices = {"ann": ["a", "b", "tie"], "bob": ["a", "b", "a"]}
    for user, picks in choices.items():
        for pick in picks:
            task = store.next_label_task("side_by_side", user)
            store.add_label_answer(task["id"], user, {"choice": pick, "side": "left"})
        assert store.next_label_task("side_by_side", user) is None
        assert store.label_progress("side_by_side", user=user) == (3, 3)
    assert store.next_label_task("side_by_side", "cy") is None and store.label_progress("side_by_side") == (3, 3)
    assert store.label_progress("side_by_side", user="cy") == (0, 0)
    with pytest.raises(DataError, match="already has its 2 answer"):
        store.add_label_answer(first["id"], "cy", {"choice": "a"})
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["label", "report", "--store", store_url, "-o", str(out)])
    assert res.exit_code == 0, res.output
    agree = json.loads(out.read_text())["labelers"]
    # tasks: (a, a), (b, b), (tie, a): all agree 2/3; Fleiss over 3 tasks x 2 raters, categories a, b, tie, both_bad:
    # P_i = 1, 1, 0 -> P_bar 2/3; p = (3/6, 2/6, 1/6, 0) -> P_e = 14/36; kappa = (2/3 - 14/36) / (1 - 14/36) = 10/22
    assert agree["tasks"] == 3 and agree["all_agree"] == pytest.approx(2 / 3)
    assert agree["fleiss_kappa"] == pytest.approx(10 / 22) and agree["raters_per_task"] == 2
    assert agree["pairs"] == {"ann|bob": {"tasks": 3, "agreement": pytest.approx(2 / 3)}}
    assert "Fleiss kappa 0.455 (3 tasks x 2 labelers)" in res.output
    # both labelers' answers are feedback events (each its own vote), with who gave them
    assert sorted(e["user_id"] for e in store.label_events()) == ["ann"] * 3 + ["bob"] * 3


# -- the app in a real browser ---------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def browser_store_url(request, tmp_path):
    """The browser tests' store: SQLite in the default run; the PostgreSQL twin is marked slow (`make test-slow`),
    since every store operation the app makes is also tested against PostgreSQL without a browser."""
    if request.param == "sqlite":
        return str(tmp_path / "feedback.db")
    return request.getfixturevalue("postgres")()


@pytest.fixture
def label_server(browser_store_url):
    store_url = browser_store_url
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "label", "serve", "--store", store_url, "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _get(base + "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"label serve did not start: {proc.communicate()[0]}")
    try:
        yield store_url, base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _comparisons(path: Path) -> Path:
    """10 prompts; the better answer (it says GOOD) is response_a in even rows and response_b in odd ones."""
    rows = []
    for i in range(10):
        good, bad = f"GOOD answer {i}", f"weak answer {i}"
        if i == 3:
            bad = f"<script>window.pwned = 1</script><b>weak</b> answer {i}"
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        rows.append({"prompt": f"Question {i}?", "response_a": a, "response_b": b})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _judge_pairs(path: Path) -> Path:
    """8 judge decisions: chosen is the GOOD one in rows 0-4, the weak one in rows 5-7 (the judge is wrong)."""
    rows = []
    for i in range(8):
        good, weak = f"GOOD audited {i}", f"weak audited {i}"
        chosen, rejected = (good, weak) if i < 5 else (weak, good)
        rows.append({"prompt": f"Audit question {i}?", "chosen": chosen, "rejected": rejected,
                     "margin": 0.1 + 0.1 * i, "prompt_id": f"p{i}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output.strip()


def _pick_good(page, how: str) -> None:
    left = page.inner_text("#left pre")
    side = "left" if "GOOD" in left else "right"
    with page.expect_navigation():  # the answer is posted, then the next task loads
        if how == "click":
            page.click(f"#pick-{side}")
        elif how == "digit":
            page.keyboard.press("1" if side == "left" else "2")
        else:
            page.keyboard.press("ArrowLeft" if side == "left" else "ArrowRight")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it as root)")
def test_label_and_audit_in_a_browser(label_server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    store_url, base = label_server
    ann = _cli("label", "user", "ann", "--store", store_url).splitlines()[-1]
    root = _cli("label", "user", "root", "--admin", "--store", store_url).splitlines()[-1]
    assert "added 10 side-by-side task(s) to batch main" in _cli(
        "label", "add", str(_comparisons(tmp_path / "cmp.jsonl")), "--store", store_url, "--batch", "main")
    assert "added 5 audit task(s) from 8 decisions" in _cli(
        "label", "audit", str(_judge_pairs(tmp_path / "pairs.jsonl")), "--store", store_url, "-n", "5",
        "--batch", "wk1")

    # tokens: none -> 401, a labeler's on admin routes -> 403, bad input -> 4xx naming it, nothing stored
    assert _get(base + "/api/export")[0] == 401 and _get(base + "/api/export", "wrong")[0] == 401
    assert _get(base + "/api/export", ann)[0] == 403 and _get(base + "/api/audit/report", ann)[0] == 403
    first = FeedbackStore(store_url).next_label_task("side_by_side", "ann")["id"]
    status, body = _get(f"{base}/label/{first}", ann, b"side=up")
    assert status == 400 and json.loads(body)["error"]["param"] == "side"
    assert _get(f"{base}/label/99999", ann, b"side=left")[0] == 404
    assert _get(f"{base}/label/{first}", ann, b"side=left&edited=" + b"x" * 1_100_000)[0] == 413
    assert FeedbackStore(store_url).count("label_answers") == 0 and _get(base + "/health")[0] == 200

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(base + "/login")
        page.fill("#token", "not-a-token")
        page.click("#login")
        assert page.inner_text("#error") == "Unknown token."
        page.fill("#token", ann)
        page.click("#login")
        assert page.url.endswith("/label")
        assert page.inner_text("#progress").startswith("Side-by-side: task 1 of 10 (10 left)")
        page.set_viewport_size({"width": 1200, "height": 700})
        page.screenshot(path=str(tmp_path / "label_page.png"))  # what a labeler sees (kept with the test's files)
        for i in range(10):
            assert f"task {i + 1} of 10" in page.inner_text("#progress")
            if "<script>" in page.inner_text("#left pre") + page.inner_text("#right pre"):
                # the model's output is shown as text: the markup is on the page, the script never ran
                assert page.evaluate("typeof window.pwned") == "undefined"
                assert page.locator(".response b").count() == 0
            _pick_good(page, ("click", "digit", "arrow")[i % 3])
        assert page.inner_text("#heading") == "All done"
        page.goto(base + "/admin")
        assert page.inner_text("#heading") == "Admins only"

        # the audit: blind (neither the verdict nor the margin on the page), the human picks the GOOD side
        page.goto(base + "/audit")
        for i in range(5):
            shown = page.inner_text("main").lower()
            assert not any(word in shown for word in ("chosen", "rejected", "margin", "judge", "verdict"))
            assert f"Audit: task {i + 1} of 5" in page.inner_text("#progress")
            _pick_good(page, "click" if i % 2 else "digit")
        assert page.inner_text("#heading") == "All done"

        # the admin sees progress and the report page
        page.goto(base + "/logout")
        page.goto(f"{base}/login?token={root}")
        page.goto(base + "/admin")
        assert "10" in page.inner_text("#progress-table") and "wk1" in page.inner_text("#progress-table")
        page.goto(base + "/admin/audit")
        assert page.locator("#overall").count() == 1
        browser.close()

    # export -> to-pairs: exactly the 10 pairs, the GOOD answer chosen every time whatever side it was shown on
    status, body = _get(base + "/api/export", root)
    assert status == 200
    out = tmp_path / "events.jsonl"
    out.write_bytes(body)
    events, errors, _ = read_events([str(out)])
    conv = convert_events(events)
    assert not errors and len(conv.pairs) == 10
    assert all(p.chosen[-1]["content"].startswith("GOOD") and not p.rejected[-1]["content"].startswith("GOOD")
               for p in conv.pairs)
    store = FeedbackStore(store_url)
    sides = [a["side"] for a in store.label_answers("side_by_side")]
    assert {"left", "right"} <= set(sides)  # the display order was randomised, and undone

    # the audit report against a hand count: the human agrees with the judge where its chosen one is GOOD
    audits = store.label_answers("audit")
    agree = sum(a["task"]["a"].startswith("GOOD") for a in audits)
    report = json.loads(_get(base + "/api/audit/report", root)[1])
    assert report["overall"]["n"] == 5 and report["overall"]["agreement"] == pytest.approx(agree / 5)
    written = tmp_path / "audit.json"
    assert f"agreement {agree / 5:.3f}" in _cli("label", "report", "--store", store_url, "-o", str(written))
    assert json.loads(written.read_text()) == report


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it as root)")
def test_edit_and_both_bad_by_keys(label_server, tmp_path):
    """Key e opens the edit box, Ctrl+digit answers from inside it (the edit becomes an edit event); key x is
    "both bad" (two thumbs-down rows, no pair)."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    store_url, base = label_server
    ann = _cli("label", "user", "ann", "--store", store_url).splitlines()[-1]
    rows = [{"prompt": "Q0?", "response_a": "GOOD zero", "response_b": "weak zero"},
            {"prompt": "Q1?", "response_a": "weak one", "response_b": "weaker one"}]
    (tmp_path / "two.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _cli("label", "add", str(tmp_path / "two.jsonl"), "--store", store_url, "--batch", "extra", "--seed", "1")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{base}/login?token={ann}")
        page.goto(base + "/label?batch=extra")
        assert "batch extra" in page.inner_text("#progress")
        page.keyboard.press("e")
        assert page.evaluate("document.activeElement.id") == "edited"
        page.keyboard.type("GOOD zero, improved.")
        side = "1" if "GOOD" in page.inner_text("#left pre") else "2"
        page.keyboard.press("2" if side == "1" else "1")  # a digit typed in the box is text, not an answer
        assert FeedbackStore(store_url).count("label_answers") == 0
        page.fill("#edited", "GOOD zero, improved.")
        with page.expect_navigation():
            page.keyboard.press(f"Control+{side}")
        assert "task 2 of 2" in page.inner_text("#progress")
        with page.expect_navigation():
            page.keyboard.press("x")
        assert page.inner_text("#heading") == "All done"
        browser.close()
    out = tmp_path / "events.jsonl"
    _cli("feedback", "export", "--store", store_url, "-o", str(out))
    conv = convert_events(read_events([str(out)])[0])
    assert sorted((p.chosen[-1]["content"], p.rejected[-1]["content"]) for p in conv.pairs) == [
        ("GOOD zero", "weak zero"), ("GOOD zero, improved.", "GOOD zero")]
    assert sorted((u.completion[-1]["content"], u.label) for u in conv.unpaired) == [("weak one", False),
                                                                                   ("weaker one", False)]


def test_tasks_from_recorded_two_choice_completions(tmp_path):
    """`label add --from-store`: completions served with n=2 whose two choices differ become side-by-side tasks,
    once each."""
    db = str(tmp_path / "f.db")
    store = FeedbackStore(db)
    for i, (a, b) in enumerate([("Red.", "Blue."), ("Same.", "Same."), ("Tea.", "Rock.")]):
        for choice, text in enumerate((a, b)):
            store.record_response(model="m", messages=PROMPT, response=text, request_id=f"chatcmpl-{i}",
                                  choice_index=choice)
    store.record_response(model="m", messages=PROMPT, response="alone", request_id="chatcmpl-9")
    assert "added 2 side-by-side task(s)" in _cli("label", "add", "--from-store", "--store", db)
    tasks = [store.next_label_task("side_by_side", "x")]
    assert (tasks[0]["a"], tasks[0]["b"], tasks[0]["request_id"]) == ("Red.", "Blue.", "chatcmpl-0")
    res = CliRunner().invoke(app, ["label", "add", "--from-store", "--store", db])
    assert res.exit_code == 2 and "no recorded completion with two different choices" in res.output
