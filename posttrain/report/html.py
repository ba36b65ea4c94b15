"""``write_report(run_dir)``: one self-contained ``run_dir/report.html`` (inline CSS, inline SVG charts, no
external URL) with sections ``summary``, ``training``, ``pairs``, ``eval``, ``lengths`` and ``gates``;
``write_comparison(a, b, out)``: two runs' eval metrics with deltas, whether B's pass rates differ from A's beyond
noise (paired intervals on the same rows), and their training curves overlaid. A part
the run does not have is shown as "not in this run"; every piece of user text is HTML-escaped."""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

from posttrain.data.writers import atomic_write_text
from posttrain.eval.significance import compare_responses, paired_heads
from posttrain.report.load import TRAINING, gate_results, load_run, main_metric
from posttrain.report.svg import bar_chart, finite, fmt, histogram, line_chart

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#111827;background:#f9fafb;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;border-bottom:1px solid #d1d5db;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 6px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:8px 18px 16px;margin:16px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#166534;background:#dcfce7;font-weight:600}.fail{color:#991b1b;background:#fee2e2;font-weight:600}
.missing{color:#6b7280;font-style:italic}.meta{color:#4b5563;font-size:13px}
.charts{display:flex;flex-wrap:wrap;gap:12px}svg.chart{border:1px solid #e5e7eb;border-radius:4px}
details.hparams pre{font-size:12px;background:#f3f4f6;padding:8px;max-height:360px;overflow:auto}
td{white-space:pre-wrap;word-break:break-word;max-width:420px}
"""
MISSING = '<p class="missing">not in this run</p>'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], num_cols: Iterable[int] = ()) -> str:
    """Cells are escaped, except a cell given as ``("raw", html, css_class)`` which is trusted markup."""
    nums = set(num_cols)
    out = ["<table><thead><tr>", *(f"<th>{escape(str(h))}</th>" for h in header), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            if isinstance(cell, tuple) and len(cell) == 3 and cell[0] == "raw":
                out.append(f'<td class="{escape(cell[2])}">{cell[1]}</td>')
            else:
                text = fmt(cell) if finite(cell) is not None else ("" if cell is None else str(cell))
                out.append(f'<td{" class=num" if i in nums else ""}>{escape(text)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _verdict(passed: Any) -> tuple:
    return ("raw", "PASS", "pass") if passed is True else ("raw", "FAIL", "fail")


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{escape(title)}</h2>{body or MISSING}</section>'


def _of(stages: list[dict], commands: Iterable[str]) -> list[dict]:
    wanted = set(commands)
    return [s for s in stages if s["command"] in wanted]


def summary_section(run: dict) -> str:
    stages = run["stages"]
    if not stages:
        return ""
    rows = []
    for s in stages:
        main = main_metric(s)
        wall = finite(s.get("wall_time_s"))
        status = str(s.get("status", "?")) + (f" ({s['error']})" if s.get("error") else "")
        rows.append([s["name"], s["command"], status, f"{wall:.1f}s" if wall is not None else "",
                     f"{main[0]} = {fmt(main[1])}" if main else ""])
    body = _table(["stage", "command", "status", "wall time", "main metric"], rows, num_cols=[3])
    verdicts = [[s["name"], r.get("metric", ""), _verdict(r.get("passed"))]
                for s in _of(stages, ["gate"]) for r in gate_results(s)]
    body += "<h3>Gate verdicts</h3>" + (_table(["gate stage", "metric", "verdict"], verdicts) if verdicts else MISSING)
    return body


def _series(rows: list[dict], key: str) -> list[tuple]:
    return [(r.get("step"), r.get(key)) for r in rows if key in r]


def training_section(run: dict) -> str:
    parts = []
    for s in _of(run["stages"], TRAINING):
        train, evals = s["train_rows"], s["eval_rows"]
        parts.append(f"<h3>{escape(s['name'])} ({escape(s['command'])})</h3>")
        if not train and not evals:
            parts.append(MISSING)
            continue
        charts = [line_chart({"train loss": _series(train, "loss"), "eval loss": _series(evals, "loss")},
                             f"{s['name']}: loss", y_label="loss", points_only=["eval loss"])]
        keys = sorted({k for r in train + evals for k in r})
        for key in ("rewards/margins", "rewards/accuracy", "lr", "grad_norm", "tokens_per_s",
                    *[k for k in keys if k == "kl" or k.startswith("kl") or k.endswith("/kl") or "/kl_" in k]):
            if key in keys:
                charts.append(line_chart({f"train {key}": _series(train, key), f"eval {key}": _series(evals, key)},
                                         f"{s['name']}: {key}", y_label=key, points_only=[f"eval {key}"]))
        parts.append('<div class="charts">' + "".join(charts) + "</div>")
        if evals:
            parts.append(f'<p class="meta">eval points (dots) at steps '
                         f'{escape(", ".join(fmt(r.get("step")) for r in evals))}</p>')
        if s.get("config_text"):
            parts.append(f'<details class="hparams"><summary>{escape(s["name"])}: resolved hyperparameters '
                         f'(config.yaml)</summary><pre>{escape(s["config_text"])}</pre></details>')
    return "".join(parts)


def _text_len(value: Any) -> int | None:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):  # chat messages
        return sum(len(str(m.get("content", ""))) if isinstance(m, dict) else len(str(m)) for m in value)
    return None


def pairs_section(run: dict) -> str:
    parts = []
    for s in _of(run["stages"], ["judge"]):
        summary = s.get("summary") or {}
        parts.append(f"<h3>{escape(s['name'])}</h3>")
        if not summary:
            parts.append(MISSING)
            continue
        pairs = summary.get("pairs") if isinstance(summary.get("pairs"), dict) else {}
        counts = [[k, pairs.get(k)] for k in ("prompts_in", "candidates_in", "pairs_considered", "pairs_kept")
                  if k in pairs]
        dropped = pairs.get("dropped") if isinstance(pairs.get("dropped"), dict) else {}
        counts += [[f"dropped: {k}", v] for k, v in dropped.items()]
        parts.append(_table(["pairs", "count"], counts, num_cols=[1]) if counts else MISSING)
        charts = []
        if dropped:
            charts.append(bar_chart(["kept", *dropped], {"pairs": [pairs.get("pairs_kept"), *dropped.values()]},
                                    f"{s['name']}: pairs kept / dropped by reason", y_label="pairs"))
        scores = summary.get("scores") if isinstance(summary.get("scores"), dict) else {}
        rates = [[k, v] for k, v in scores.items() if finite(v) is not None]
        by_kind = scores.get("pass_rate_by_constraint") if isinstance(scores.get("pass_rate_by_constraint"),
                                                                      dict) else {}
        rates += [[f"pass rate: {k}", v] for k, v in by_kind.items()]
        parts.append("<h3>Judge scores and pass rates</h3>" + (_table(["score", "value"], rates, num_cols=[1])
                                                                if rates else MISSING))
        length = pairs.get("length") if isinstance(pairs.get("length"), dict) else {}
        parts.append(f"<h3>Chosen vs rejected length ({escape(str(length.get('unit', 'chars')))})</h3>"
                     + (_table(["statistic", "value"], [[k, v] for k, v in length.items() if k != "unit"],
                               num_cols=[1]) if length else MISSING))
        chosen = [_text_len(p.get("chosen")) for p in s.get("pairs") or []]
        rejected = [_text_len(p.get("rejected")) for p in s.get("pairs") or []]
        if any(v is not None for v in chosen + rejected):
            charts.append(histogram({"chosen": chosen, "rejected": rejected},
                                    f"{s['name']}: chosen vs rejected length", x_label="characters"))
        if charts:
            parts.append('<div class="charts">' + "".join(charts) + "</div>")
        samples = (s.get("pairs") or [])[:SAMPLES]
        if samples:
            parts.append(f"<h3>Sample pairs (the first {len(samples)})</h3>" + _table(
                ["prompt", "chosen", "rejected", "scores"],
                [[_text(p.get("prompt")), _text(p.get("chosen")), _text(p.get("rejected")),
                  f"{fmt(p.get('chosen_score'))} vs {fmt(p.get('rejected_score'))}"] for p in samples]))
    return "".join(parts)


SAMPLES = 5  # sample pairs and generations shown per stage


def _text(value: Any, limit: int = 400) -> str:
    """A prompt or reply (a string or a message list) as short plain text for a table cell."""
    if isinstance(value, list):
        value = "\n".join(f"{m.get('role')}: {m.get('content')}" if isinstance(m, dict) else str(m) for m in value)
    text = str(value if value is not None else "")
    return text if len(text) <= limit else text[:limit] + " ..."


def samples_table(responses: list[dict]) -> str:
    """Sample generations: the model's and the baseline's answer to the same eval rows, side by side, with each
    one's verdict (the first ``SAMPLES`` rows both answered)."""
    by_role: dict[str, dict] = {}
    for r in responses:
        by_role.setdefault(r.get("role"), {}).setdefault((r.get("suite"), r.get("id")), r)
    model, baseline = by_role.get("model", {}), by_role.get("baseline", {})
    keys = [k for k in model if k in baseline][:SAMPLES]
    if not keys:
        return ""

    def verdict(r: dict) -> str:
        return "pass" if r.get("passed") else "fail" if r.get("passed") is not None else fmt(r.get("score"))

    rows = [[f"{k[0]} / {k[1]}", _text(model[k].get("text")), verdict(model[k]), _text(baseline[k].get("text")),
             verdict(baseline[k])] for k in keys]
    return "<h3>Sample generations (model vs baseline)</h3>" + _table(
        ["row", "model", "verdict", "baseline", "verdict"], rows)


# Eval keys shown in their own tables rather than the main one.
_DETAIL_PREFIXES = ("baseline/", "base/", "winrate/", "group/", "suite/", "constraints/kind/")
_REFS = ("baseline", "base")


def _delta_cell(v: Any, ref: Any) -> Any:
    v, b = finite(v), finite(ref)
    if v is None or b is None:
        return ""
    delta = v - b
    return ("raw", escape(f"{delta:+.4g}"), "pass" if delta > 0 else "fail" if delta < 0 else "num")


def _ref_columns(metrics: dict) -> list[str]:
    return [ref for ref in _REFS if any(k.startswith(f"{ref}/") for k in metrics)]


def eval_metrics_table(metrics: dict) -> str:
    """Headline metrics: model, each reference model (baseline, base) and the model's delta to each."""
    refs = _ref_columns(metrics)
    rows = []
    for key, value in metrics.items():
        if key.startswith(_DETAIL_PREFIXES):
            continue
        rows.append([key, value, *(metrics.get(f"{r}/{key}") for r in refs),
                     *(_delta_cell(value, metrics.get(f"{r}/{key}")) for r in refs)])
    header = ["metric", "model", *refs, *(f"delta vs {r}" for r in refs)]
    return _table(header, rows, num_cols=range(1, 2 + len(refs)))


def group_table(metrics: dict) -> str:
    """Pass rates per row group (in distribution vs out of distribution) and per suite, side by side."""
    refs = _ref_columns(metrics)
    parts = []
    for prefix, title in (("group", "In distribution vs out of distribution"), ("suite", "Per suite")):
        names = sorted({k[len(prefix) + 1:].rsplit("/", 1)[0] for k in metrics
                        if k.startswith(f"{prefix}/") and k.endswith("/pass_rate") and k.count("/") == 2})
        if not names:
            continue
        rows = []
        for name in names:
            key = f"{prefix}/{name}"
            row = [name, metrics.get(f"{key}/n"), metrics.get(f"{key}/pass_rate"),
                   *(metrics.get(f"{r}/{key}/pass_rate") for r in refs)]
            for sub in ("constraints/pass_rate", "capability/accuracy", "length/median_words"):
                row += [metrics.get(f"{key}/{sub}"), *(metrics.get(f"{r}/{key}/{sub}") for r in refs)]
            row += [metrics.get(f"{key}/length/paired_words_ratio_to_{r}") for r in refs]
            rows.append(row)
        cols = ["model", *refs]
        # words vs a reference on the same prompts, those where either answer loops left out (drift.paired_length)
        header = [prefix, "n", *(f"pass rate: {c}" for c in cols), *(f"constraints: {c}" for c in cols),
                  *(f"capability: {c}" for c in cols), *(f"median words: {c}" for c in cols),
                  *(f"words / {r}, same prompts, no loops" for r in refs)]
        parts.append(f"<h4>{escape(title)}</h4>" + _table(header, rows, num_cols=range(1, len(header))))
    return "".join(parts)


def kind_table(metrics: dict) -> str:
    """Constraint pass rate per kind, each kind marked trained / unseen when the eval knew the training data."""
    refs = _ref_columns(metrics)
    kinds = sorted({k.split("/")[2] for k in metrics if k.startswith("constraints/kind/") and k.endswith("/pass_rate")})
    if not kinds:
        return ""
    rows = []
    for kind in kinds:
        key = f"constraints/kind/{kind}"
        trained = finite(metrics.get(f"{key}/trained"))
        status = "" if trained is None else "trained" if trained else "unseen"
        rows.append([kind, status, metrics.get(f"{key}/n"), metrics.get(f"{key}/pass_rate"),
                     *(metrics.get(f"{r}/{key}/pass_rate") for r in refs),
                     *(_delta_cell(metrics.get(f"{key}/pass_rate"), metrics.get(f"{r}/{key}/pass_rate"))
                       for r in refs)])
    header = ["constraint kind", "training", "n", "model", *refs, *(f"delta vs {r}" for r in refs)]
    pooled = [[name, metrics.get(f"constraints/{name}/n"), metrics.get(f"constraints/{name}/pass_rate"),
               *(metrics.get(f"{r}/constraints/{name}/pass_rate") for r in refs)]
              for name in ("trained", "unseen") if f"constraints/{name}/pass_rate" in metrics]
    out = "<h4>Constraint pass rate per kind</h4>" + _table(header, rows, num_cols=range(2, 4 + len(refs)))
    if pooled:
        out += _table(["kinds", "n", "model", *refs], pooled, num_cols=range(1, 3 + len(refs)))
    return out


def eval_section(run: dict) -> str:
    parts = []
    for s in _of(run["stages"], ["eval"]):
        metrics = s.get("eval_metrics") or {}
        parts.append(f"<h3>{escape(s['name'])}</h3>")
        if not metrics:
            parts.append(MISSING)
            continue
        parts.append(eval_metrics_table(metrics))
        parts.append(group_table(metrics))
        parts.append(kind_table(metrics))
        wr = {k[len("winrate/"):]: v for k, v in metrics.items() if k.startswith("winrate/")}
        if finite(wr.get("win_rate")) is not None:
            ci = (f" (95% CI {fmt(wr.get('ci_low'), 3)} to {fmt(wr.get('ci_high'), 3)})"
                  if finite(wr.get("ci_low")) is not None else "")
            lc = (f"; length-controlled {fmt(wr.get('lc_win_rate'), 3)}" if finite(wr.get("lc_win_rate")) is not None
                  else "")
            parts.append(f"<p><b>Win rate vs baseline: {escape(fmt(wr['win_rate'], 3))}</b>{escape(ci + lc)}; "
                         f"n={escape(fmt(wr.get('n')))}, wins {escape(fmt(wr.get('wins')))}, losses "
                         f"{escape(fmt(wr.get('losses')))}, ties {escape(fmt(wr.get('ties')))}</p>")
            parts.append(slice_table(wr))
        else:
            parts.append('<p class="missing">win rate: not in this run (needs a baseline and a judge)</p>')
        parts.append(samples_table(s.get("responses") or []))
    return "".join(parts)


def slice_table(wr: dict) -> str:
    """Win rate per slice (``slice/<name>/win_rate`` etc. of the ``winrate/`` metrics), one row per slice."""
    names = sorted({k[len("slice/"):].rsplit("/", 1)[0] for k in wr if k.startswith("slice/")})
    if not names:
        return ""
    rows = [[name, wr.get(f"slice/{name}/n"), wr.get(f"slice/{name}/win_rate"),
             f"{fmt(wr.get(f'slice/{name}/ci_low'), 3)} to {fmt(wr.get(f'slice/{name}/ci_high'), 3)}"]
            for name in names]
    return "<h4>Win rate per slice</h4>" + _table(["slice", "n", "win rate", "95% CI"], rows, num_cols=[1, 2])


def _response_len(row: dict) -> float | None:
    tokens = finite(row.get("completion_tokens"))
    if tokens is not None:
        return tokens
    return float(len(row["text"].split())) if isinstance(row.get("text"), str) else None


def lengths_section(run: dict) -> str:
    parts = []
    for s in _of(run["stages"], ["eval"]):
        responses = s.get("responses") or []
        parts.append(f"<h3>{escape(s['name'])}</h3>")
        if not responses:
            parts.append(MISSING)
            continue
        by_role: dict[str, list] = {}
        for row in responses:
            by_role.setdefault(str(row.get("role", "model")), []).append(_response_len(row))
        # before (base, then baseline) then after (model)
        order = sorted(by_role, key=lambda r: ({"base": 0, "baseline": 1}.get(r, 2), r))
        unit = "tokens" if any(finite(r.get("completion_tokens")) is not None for r in responses) else "words"
        parts.append('<div class="charts">' + histogram({r: by_role[r] for r in order},
                                                        f"{s['name']}: response length, baseline vs model",
                                                        x_label=f"response length ({unit})") + "</div>")
        stats = []
        for role in order:
            vals = sorted(v for v in by_role[role] if v is not None)
            if vals:
                stats.append([role, len(vals), sum(vals) / len(vals), vals[len(vals) // 2], vals[-1]])
        parts.append(_table(["responses", "n", f"mean {unit}", f"median {unit}", f"max {unit}"], stats,
                            num_cols=[1, 2, 3, 4]))
    return "".join(parts)


def gates_section(run: dict) -> str:
    parts = []
    for s in _of(run["stages"], ["gate"]):
        results = gate_results(s)
        overall = (s.get("gates") or {}).get("passed")
        parts.append(f"<h3>{escape(s['name'])}: " + ('<span class="pass">PASS</span>' if overall is True else
                                                     '<span class="fail">FAIL</span>' if overall is False else
                                                     '<span class="missing">no verdict</span>') + "</h3>")
        if not results:
            parts.append(MISSING)
            continue
        parts.append(_table(["metric", "value", "baseline", "gate", "threshold", "verdict", "reason"],
                            [[r.get("metric"), r.get("value"), r.get("baseline_value"), r.get("kind"),
                              r.get("threshold"), _verdict(r.get("passed")), r.get("reason")] for r in results],
                            num_cols=[1, 2, 4]))
    return "".join(parts)


SECTIONS = (("summary", "Summary", summary_section), ("training", "Training", training_section),
            ("pairs", "Preference pairs", pairs_section), ("eval", "Eval", eval_section),
            ("lengths", "Response lengths", lengths_section), ("gates", "Gates", gates_section))


def render_report(run: dict) -> str:
    manifest = run.get("manifest") or {}
    meta = [f"status: {manifest.get('status', 'unknown')}", f"started {manifest.get('started_at', '?')}",
            f"finished {manifest.get('finished_at', '?')}", f"git {str(manifest.get('git_sha') or '?')[:12]}"]
    versions = manifest.get("versions") if isinstance(manifest.get("versions"), dict) else {}
    if versions:
        meta.append(", ".join(f"{k} {v}" for k, v in versions.items()))
    nav = " | ".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in SECTIONS)
    body = "".join(_section(sid, title, fn(run)) for sid, title, fn in SECTIONS)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>posttrain report: {escape(str(run['run_dir']))}</title><style>{CSS}</style></head><body>"
            f"<h1>posttrain run report</h1><p class=\"meta\">{escape(str(run['run_dir']))} &middot; "
            f"{escape(' · '.join(meta))}</p><p class=\"meta\">{nav}</p>{body}"
            f"<p class=\"meta\">written {escape(time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime()))}</p>"
            "</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    atomic_write_text(path, render_report(load_run(run_dir)))
    return path


def paired_comparisons(a: dict, b: dict) -> list[tuple[str, dict[str, float]]]:
    """(eval stage name, B-vs-A paired-difference metrics) for each eval stage both loaded runs have with
    responses (``significance.compare_responses``: the same rows, matched by suite and id)."""
    evals_b = {s["name"]: s for s in _of(b["stages"], ["eval"])}
    out = []
    for s in _of(a["stages"], ["eval"]):
        other = evals_b.get(s["name"])
        if other is not None and s["responses"] and other["responses"]:
            out.append((s["name"], compare_responses(s["responses"], other["responses"])))
    return out


def paired_verdict(metrics: dict[str, float], head: str) -> str:
    """``B better``, ``A better`` or ``no difference shown`` from the 95% interval of ``head`` (B - A)."""
    low, high = metrics[f"{head}/ci_low"], metrics[f"{head}/ci_high"]
    return "B better" if low > 0 else "A better" if high < 0 else "no difference shown"


def render_comparison(a: dict, b: dict) -> str:
    """Two runs side by side: every eval metric both have (per eval stage of the same name) with B - A, and the
    training curves of same-named stages overlaid (loss, and the reward margins where both logged them)."""
    name_a, name_b = str(a["run_dir"]), str(b["run_dir"])
    label_a, label_b = "A", "B"
    parts = [f"<p class=\"meta\">A = {escape(name_a)} &middot; B = {escape(name_b)}</p>"]
    evals_b = {s["name"]: s for s in _of(b["stages"], ["eval"])}
    rows = []
    for s in _of(a["stages"], ["eval"]):
        other = evals_b.get(s["name"])
        ma, mb = s.get("eval_metrics") or {}, (other or {}).get("eval_metrics") or {}
        for key in sorted(k for k in ma if k in mb and finite(ma[k]) is not None and finite(mb[k]) is not None):
            rows.append([s["name"], key, ma[key], mb[key], finite(mb[key]) - finite(ma[key])])
    parts.append(_section("compare-metrics", "Eval metrics (B - A)", _table(
        ["stage", "metric", label_a, label_b, "B - A"], rows, num_cols=[2, 3, 4]) if rows else MISSING))
    paired = []
    for stage, m in paired_comparisons(a, b):
        for head in paired_heads(m):
            verdict = paired_verdict(m, head)
            css = "pass" if verdict == "B better" else "fail" if verdict == "A better" else "num"
            paired.append([stage, head.rsplit("/", 1)[0], m[head], m[f"{head}/ci_low"], m[f"{head}/ci_high"],
                           m[f"{head}/gained"], m[f"{head}/lost"], ("raw", escape(verdict), css)])
    parts.append(_section("compare-paired", "Is B better than A? Pass rates on the same rows (95% paired interval)",
                          _table(["stage", "metric", "B - A", "low", "high", "rows B gained", "rows B lost",
                                  "verdict"], paired, num_cols=range(2, 7)) if paired else MISSING))
    train_b = {s["name"]: s for s in _of(b["stages"], TRAINING)}
    charts = []
    for s in _of(a["stages"], TRAINING):
        other = train_b.get(s["name"])
        if other is None:
            continue
        for key in ("loss", "rewards/margins", "reward/mean"):
            if any(key in r for r in s["train_rows"]) and any(key in r for r in other["train_rows"]):
                charts.append(line_chart({f"A {key}": _series(s["train_rows"], key),
                                          f"B {key}": _series(other["train_rows"], key)},
                                         f"{s['name']}: {key}, A vs B", y_label=key))
    parts.append(_section("compare-curves", "Training curves (A vs B)",
                          '<div class="charts">' + "".join(charts) + "</div>" if charts else MISSING))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>posttrain comparison: {escape(name_a)} vs {escape(name_b)}</title><style>{CSS}</style></head>"
            f"<body><h1>posttrain run comparison</h1>{''.join(parts)}"
            f"<p class=\"meta\">written {escape(time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime()))}</p>"
            "</body></html>\n")


def write_comparison(a: dict, b: dict, output: str | Path) -> Path:
    """Write the comparison of two loaded runs (``load_run``) to ``output`` (atomically) and return its path."""
    atomic_write_text(output, render_comparison(a, b))
    return Path(output)
