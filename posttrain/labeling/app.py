"""The labeling and audit web app (``posttrain label serve``): Flask pages over a feedback store, served by waitress.

Pages (HTML, Jinja templates in ``posttrain/resources/label/``, autoescaped: a response containing ``<script>``
shows as text):

- ``/login`` (a token, kept in an HttpOnly, SameSite=Strict cookie; API clients send ``Authorization: Bearer``);
- ``/label``: the next unanswered side-by-side task: the prompt, two responses in the task's display order, left /
  right / tie / both bad (keys 1 2 3 4, arrows, t, x), an optional edit of the better one (key e), progress;
- ``/audit``: the next unanswered audit item: a judge's decision shown blind (its verdict is not on the page);
- ``/admin`` (admin): progress per kind and batch; ``/admin/audit``: the agreement report;
- ``/api/export`` (admin): the store's events as JSONL (``feedback to-pairs`` reads it); ``/api/audit/report``
  (admin): the report as JSON; ``/health``.

A labeler's token opens the task pages only; export and reports need an admin token (403 otherwise; 401 without a
known token). An answer names its task and the side clicked; the side is turned back into the responses' own
labels with the task's recorded display order before it is stored, so a position bias of the page or the person
never reaches the pairs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, g, jsonify, redirect, render_template, request, url_for

from posttrain.data.schema import DataError
from posttrain.feedback.store import FeedbackStore
from posttrain.labeling.audit import audit_report, labeler_agreement

TEMPLATES = Path(__file__).resolve().parents[1] / "resources" / "label"
COOKIE = "posttrain_label_token"
SIDES = {"side_by_side": ("left", "right", "tie", "both_bad"), "audit": ("left", "right", "tie")}
MAX_FORM_BYTES = 1_000_000


def side_to_choice(side: str, display: list[str]) -> str:
    """The side clicked (left / right / tie / both_bad) as the responses' own label (a / b / tie / both_bad)."""
    return {"left": display[0], "right": display[1]}.get(side, side)


def create_app(store: FeedbackStore) -> Flask:
    app = Flask("posttrain.labeling", template_folder=str(TEMPLATES))
    app.config["MAX_CONTENT_LENGTH"] = MAX_FORM_BYTES

    def wants_json() -> bool:
        return request.path.startswith("/api/") or "Bearer" in request.headers.get("Authorization", "")

    @app.before_request
    def identify() -> None:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.startswith("Bearer ") else request.cookies.get(COOKIE)
        who = store.labeler(token)
        g.user, g.role = who if who else (None, None)

    @app.context_processor
    def who() -> dict[str, Any]:
        return {"user": g.get("user"), "role": g.get("role")}

    def needs(role: str | None = None):
        def wrap(view):
            @functools.wraps(view)
            def inner(*args, **kwargs):
                if g.user is None:
                    if wants_json():
                        return jsonify(error={"message": "a valid token is required"}), 401
                    return render_template("login.html", error="Log in with your token."), 401
                if role == "admin" and g.role != "admin":
                    if wants_json():
                        return jsonify(error={"message": "an admin token is required"}), 403
                    return render_template("message.html", heading="Admins only",
                                           message="This page needs an admin token."), 403
                return view(*args, **kwargs)
            return inner
        return wrap

    @app.errorhandler(413)
    def too_large(_e):
        return jsonify(error={"message": f"the request is larger than {MAX_FORM_BYTES} bytes"}), 413

    @app.get("/health")
    def health():
        return jsonify(status="ok")

    @app.route("/login", methods=["GET", "POST"])
    def login():
        token = request.form.get("token") if request.method == "POST" else request.args.get("token")
        if not token:
            return render_template("login.html", error=None)
        if store.labeler(token) is None:
            return render_template("login.html", error="Unknown token."), 401
        resp = redirect(url_for("index"))
        resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", max_age=30 * 24 * 3600)
        return resp

    @app.get("/logout")
    def logout():
        resp = redirect(url_for("login"))
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/")
    @needs()
    def index():
        return redirect(url_for("label"))

    def task_page(kind: str, title: str, view: str):
        batch = request.args.get("batch") or None
        task = store.next_label_task(kind, g.user, batch)
        done, total = store.label_progress(kind, batch, g.user)  # this labeler's tasks
        if task is None:
            return render_template("message.html", heading="All done",
                                   message=f"No {title.lower()} tasks left ({done} of {total} answered).")
        left, right = (task[side] for side in task["display"])
        return render_template("task.html", kind=kind, title=title, prompt=task["prompt"], left=left, right=right,
                               done=done, total=total, batch=batch,
                               action=url_for(view, task_id=task["id"], batch=batch))

    def answer(kind: str, task_id: int, back: str):
        task = store.label_task(task_id)
        if task is None or task["kind"] != kind:
            abort(404)
        side = request.form.get("side") or request.form.get("key_side") or ""
        if side not in SIDES[kind]:
            return jsonify(error={"message": f"side must be one of {', '.join(SIDES[kind])}, got {side!r}",
                                  "param": "side"}), 400
        record = {"choice": side_to_choice(side, task["display"]), "side": side}
        edited = request.form.get("edited", "")
        if kind == "side_by_side" and edited.strip():
            record["edited"] = edited
        try:
            store.add_label_answer(task_id, g.user, record)
        except DataError as e:
            return jsonify(error={"message": str(e), "param": e.field_name}), 409 if e.field_name == "task" else 400
        return redirect(url_for(back, batch=request.args.get("batch") or None))

    @app.get("/label")
    @needs()
    def label():
        return task_page("side_by_side", "Side-by-side", "answer_label")

    @app.post("/label/<int:task_id>")
    @needs()
    def answer_label(task_id: int):
        return answer("side_by_side", task_id, "label")

    @app.get("/audit")
    @needs()
    def audit():
        return task_page("audit", "Audit", "answer_audit")

    @app.post("/audit/<int:task_id>")
    @needs()
    def answer_audit(task_id: int):
        return answer("audit", task_id, "audit")

    @app.get("/admin")
    @needs("admin")
    def admin():
        rows = []
        for kind in SIDES:
            for batch in store.label_batches(kind):
                done, total = store.label_progress(kind, batch)
                rows.append({"kind": kind, "batch": batch, "done": done, "total": total})
        return render_template("admin.html", rows=rows)

    def report() -> dict[str, Any]:
        batch = request.args.get("batch") or None
        return {**audit_report(store.label_answers("audit", batch)),
                "labelers": labeler_agreement(store.label_answers("side_by_side", batch))}

    @app.get("/admin/audit")
    @needs("admin")
    def audit_report_page():
        return render_template("report.html", report=report())

    @app.get("/api/audit/report")
    @needs("admin")
    def audit_report_json():
        return jsonify(report())

    @app.get("/api/export")
    @needs("admin")
    def export_events():
        rows = store.events() + store.label_events()
        return Response("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                        mimetype="application/x-ndjson")

    return app


def serve(store_url: str, host: str = "127.0.0.1", port: int = 8100, threads: int = 8) -> None:
    """Run the app with waitress until interrupted."""
    from waitress import serve as waitress_serve  # optional dependency

    waitress_serve(create_app(FeedbackStore(store_url)), host=host, port=port, threads=threads)
