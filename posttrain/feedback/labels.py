"""The labeling app's tables in the feedback store: labelers (token holders), label tasks (a side-by-side
comparison, or one judge decision to audit), and the answers people give.

``LabelTables`` is mixed into ``FeedbackStore`` (``store.py``), so a store URL is all the labeling app
(``posttrain/labeling/``) needs. Tokens are stored as their SHA-256 only; the plain token is returned once, when the
labeler is added.

A task's ``payload`` is JSON written when the task is created (``labeling/tasks.py``): the prompt messages, the two
responses as given (``a``, ``b``) and the order they are shown in (``display``: ``["a", "b"]`` or ``["b", "a"]``,
drawn per task so that no tally is biased by position), plus for an audit the judge's verdict and the strata. An
answer is JSON too: what the person chose, in the responses' own labels (``a`` / ``b`` / ``tie`` / ``both_bad``),
and the side they clicked (``left`` / ``right``), so the display order can be audited as well as undone.

``label_events`` turns the answered side-by-side tasks into the feedback events ``feedback to-pairs`` reads: a
choice of a or b or a tie is a ``side_by_side`` event (a tie gives no pair), "both bad" is a ``thumbs`` down for each
response (KTO rows, no pair), and an edit of the better response is an ``edit`` event beside the side-by-side one.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from posttrain.data.schema import DataError

ROLES = ("labeler", "admin")
TASK_KINDS = ("side_by_side", "audit")
CHOICES = ("a", "b", "tie", "both_bad")
AUDIT_CHOICES = ("a", "b", "tie")


def answers_needed(task: dict[str, Any]) -> int:
    """How many labelers answer a task (``label add --answers N``; default 1)."""
    return int(task.get("answers_needed") or 1)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _loads(row: tuple) -> dict[str, Any]:
    task_id, created_at, kind, payload, batch = row
    return {"id": int(task_id), "created_at": created_at, "kind": kind, "batch": batch, **json.loads(payload)}


class LabelTables:
    """Labelers, label tasks and answers (needs ``_transaction``, ``_execute`` and ``now`` from the store)."""

    # -- labelers ----------------------------------------------------------------------------------------------
    def add_labeler(self, name: str, role: str = "labeler") -> str:
        """Add a labeler (or an admin) and return their new token (shown once; only its hash is stored). Adding a
        name again replaces its token (a lost token is re-issued this way)."""
        if role not in ROLES:
            raise DataError("labeler", None, "role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise DataError("labeler", None, "name", "must be a non-empty name of at most 100 characters")
        token = secrets.token_urlsafe(24)
        with self._transaction() as cur:
            self._execute(cur, "DELETE FROM labelers WHERE name = ?", (name,))
            self._execute(cur, "INSERT INTO labelers (name, token_sha256, role, created_at) VALUES (?, ?, ?, ?)",
                          (name, hash_token(token), role, self._now()))
        return token

    def labeler(self, token: str | None) -> tuple[str, str] | None:
        """(name, role) of a token's holder, or None for no or an unknown token."""
        if not token:
            return None
        with self._transaction() as cur:
            row = self._execute(cur, "SELECT name, role FROM labelers WHERE token_sha256 = ?",
                                (hash_token(token),)).fetchone()
        return (row[0], row[1]) if row else None

    # -- tasks -------------------------------------------------------------------------------------------------
    def add_label_tasks(self, kind: str, payloads: list[dict[str, Any]], batch: str | None = None) -> list[int]:
        """Store tasks in one transaction (all or none); returns their ids."""
        if kind not in TASK_KINDS:
            raise ValueError(f"task kind must be one of {', '.join(TASK_KINDS)}, got {kind!r}")
        ids = []
        with self._transaction() as cur:
            for payload in payloads:
                row = self._execute(cur, "INSERT INTO label_tasks (created_at, kind, payload, batch) "
                                         "VALUES (?, ?, ?, ?) RETURNING id",
                                    (self._now(), kind, json.dumps(payload), batch)).fetchone()
                ids.append(int(row[0]))
        return ids

    def label_task(self, task_id: int) -> dict[str, Any] | None:
        with self._transaction() as cur:
            row = self._execute(cur, "SELECT id, created_at, kind, payload, batch FROM label_tasks WHERE id = ?",
                                (task_id,)).fetchone()
        return _loads(row) if row else None

    def _open_tasks(self, kind: str, batch: str | None, user: str | None = None) -> list[tuple[dict, int]]:
        """(task, answers so far) of ``kind`` (and ``batch``), oldest first; with ``user``: only the tasks that
        user has not answered and is assigned to (a task's ``assignees``, when it has them)."""
        where, args = "t.kind = ?", [kind]
        if batch is not None:
            where, args = where + " AND t.batch = ?", args + [batch]
        if user is not None:
            where, args = where + " AND NOT EXISTS (SELECT 1 FROM label_answers a WHERE a.task_id = t.id AND " \
                                  "a.user_id = ?)", args + [user]
        with self._transaction() as cur:
            rows = self._execute(cur, "SELECT t.id, t.created_at, t.kind, t.payload, t.batch, (SELECT COUNT(*) FROM "
                                      "label_answers a WHERE a.task_id = t.id) FROM label_tasks t "
                                      f"WHERE {where} ORDER BY t.id", tuple(args)).fetchall()
        tasks = [(_loads(r[:5]), int(r[5])) for r in rows]
        if user is not None:
            tasks = [(t, n) for t, n in tasks if not t.get("assignees") or user in t["assignees"]]
        return tasks

    def next_label_task(self, kind: str, user: str, batch: str | None = None) -> dict[str, Any] | None:
        """The oldest task of ``kind`` (and ``batch``) for ``user``: assigned to them (or to anyone), not answered
        by them, and with fewer answers than it needs (``answers_needed``, default 1); None when none is left."""
        return next((t for t, n in self._open_tasks(kind, batch, user) if n < answers_needed(t)), None)

    def label_progress(self, kind: str, batch: str | None = None, user: str | None = None) -> tuple[int, int]:
        """(done, all) tasks of ``kind`` (and ``batch``): a task is done when it has the answers it needs. With
        ``user``: (answered by them, answered by them + still open for them)."""
        if user is None:
            tasks = self._open_tasks(kind, batch)
            return sum(n >= answers_needed(t) for t, n in tasks), len(tasks)
        left = sum(n < answers_needed(t) for t, n in self._open_tasks(kind, batch, user))
        with self._transaction() as cur:
            where, args = "t.kind = ? AND a.user_id = ?", [kind, user]
            if batch is not None:
                where, args = where + " AND t.batch = ?", args + [batch]
            mine = self._execute(cur, "SELECT COUNT(*) FROM label_answers a JOIN label_tasks t ON a.task_id = t.id "
                                      f"WHERE {where}", tuple(args)).fetchone()[0]
        return int(mine), int(mine) + left

    def add_label_answer(self, task_id: int, user: str, answer: dict[str, Any]) -> int:
        """Store one person's answer to a task (checked against the task's kind); returns its id. A second answer
        by the same person to the same task replaces nothing: it is refused (``DataError`` on ``task``)."""
        task = self.label_task(task_id)
        if task is None:
            raise DataError("answer", None, "task", f"no label task {task_id}")
        choices = CHOICES if task["kind"] == "side_by_side" else AUDIT_CHOICES
        if answer.get("choice") not in choices:
            raise DataError("answer", None, "choice", f"must be one of {', '.join(choices)}, "
                            f"got {answer.get('choice')!r}")
        edited = answer.get("edited")
        if edited is not None and (not isinstance(edited, str) or len(edited) > 200_000):
            raise DataError("answer", None, "edited", "must be text of at most 200000 characters")
        if task.get("assignees") and user not in task["assignees"]:
            raise DataError("answer", None, "task", f"task {task_id} is assigned to {', '.join(task['assignees'])}, "
                            f"not {user}")
        with self._transaction() as cur:
            if self._execute(cur, "SELECT 1 FROM label_answers WHERE task_id = ? AND user_id = ?",
                             (task_id, user)).fetchone():
                raise DataError("answer", None, "task", f"task {task_id} is already answered by {user}")
            count = self._execute(cur, "SELECT COUNT(*) FROM label_answers WHERE task_id = ?",
                                  (task_id,)).fetchone()[0]
            if count >= answers_needed(task):
                raise DataError("answer", None, "task", f"task {task_id} already has its {answers_needed(task)} "
                                "answer(s)")
            row = self._execute(cur, "INSERT INTO label_answers (created_at, task_id, user_id, answer) "
                                     "VALUES (?, ?, ?, ?) RETURNING id",
                                (self._now(), task_id, user, json.dumps(answer))).fetchone()
        return int(row[0])

    def label_answers(self, kind: str, batch: str | None = None) -> list[dict[str, Any]]:
        """Every answer to tasks of ``kind`` (and ``batch``), oldest first: the task's payload (``task``), the
        answer's fields, ``answer_id``, ``user_id``, ``answered_at``."""
        where, args = "t.kind = ?", [kind]
        if batch is not None:
            where, args = where + " AND t.batch = ?", args + [batch]
        with self._transaction() as cur:
            rows = self._execute(cur, "SELECT a.id, a.created_at, a.user_id, a.answer, t.id, t.created_at, t.kind, "
                                      "t.payload, t.batch FROM label_answers a JOIN label_tasks t ON a.task_id = t.id "
                                      f"WHERE {where} ORDER BY a.id", tuple(args)).fetchall()
        return [{"answer_id": int(r[0]), "answered_at": r[1], "user_id": r[2], **json.loads(r[3]),
                 "task": _loads(r[4:])} for r in rows]

    def label_batches(self, kind: str) -> list[str]:
        """The batches of ``kind``'s tasks, in the order they were first created."""
        with self._transaction() as cur:
            rows = self._execute(cur, "SELECT batch, MIN(id) FROM label_tasks WHERE kind = ? GROUP BY batch "
                                      "ORDER BY MIN(id)", (kind,)).fetchall()
        return [r[0] for r in rows]

    def two_choice_responses(self) -> list[dict[str, Any]]:
        """Recorded completions with two different choices (``n`` >= 2: choices 0 and 1), oldest first, that no
        side-by-side task was made from yet: ``{request_id, prompt, a, b, model}``."""
        with self._transaction() as cur:
            rows = self._execute(cur, "SELECT r0.request_id, r0.messages, r0.response, r1.response, r0.model "
                                      "FROM responses r0 JOIN responses r1 ON r0.request_id = r1.request_id "
                                      "AND r0.choice_index = 0 AND r1.choice_index = 1 "
                                      "WHERE r0.response <> r1.response ORDER BY r0.id").fetchall()
            tasked = {json.loads(p[0]).get("request_id") for p in self._execute(
                cur, "SELECT payload FROM label_tasks WHERE kind = 'side_by_side'").fetchall()}
        return [{"request_id": r[0], "prompt": json.loads(r[1]), "a": r[2], "b": r[3], "model": r[4]}
                for r in rows if r[0] not in tasked]

    def label_events(self) -> list[dict[str, Any]]:
        """The answered side-by-side tasks as feedback events (module docstring), oldest answer first."""
        out = []
        for ans in self.label_answers("side_by_side"):
            task, choice = ans["task"], ans["choice"]
            base = {"prompt": task["prompt"], "user_id": ans["user_id"], "timestamp": ans["answered_at"]}
            if task.get("model"):
                base["model"] = task["model"]
            event_id = f"label:{ans['answer_id']}"
            if choice == "both_bad":
                for side in ("a", "b"):
                    out.append({**base, "kind": "thumbs", "response": task[side], "rating": "down",
                                "event_id": f"{event_id}:{side}"})
                continue
            out.append({**base, "kind": "side_by_side", "response_a": task["a"], "response_b": task["b"],
                        "choice": choice, "event_id": event_id})
            if choice in ("a", "b") and (ans.get("edited") or "").strip() and ans["edited"] != task[choice]:
                out.append({**base, "kind": "edit", "response": task[choice], "edited": ans["edited"],
                            "event_id": f"{event_id}:edit"})
        return out
