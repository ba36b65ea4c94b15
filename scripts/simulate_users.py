"""Simulated users for the feedback loop (README "The production loop"): they chat with a running `posttrain serve
--store ...` and post feedback about its answers, with the verifiers as their judgement.

Each user takes prompt rows (with verifiable metadata: constraints, answers) from a prompts file, asks for two
answers at once (n=2, sampled), scores both with the verifier, and posts what a person would:

- the two answers score differently: a side-by-side choice of the better one;
- they score the same: a thumbs up for the first if it passes every check, else a thumbs down.

Every event names the completion it is about (``response_id`` = the ``chatcmpl-...`` id, ``choice_index``) and
carries an idempotency key, so rerunning the script never stores an event twice. Only the standard library and
posttrain's verifiers are used (no model is loaded here).

    python scripts/simulate_users.py --url http://127.0.0.1:8000 --prompts examples/data/prompts_diverse.jsonl \\
        --limit 40 --users 4
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from posttrain.judges.verifier import VerifierJudge

VERIFIABLE = ("constraints", "constraint", "constraint_args")  # a prompt row's fields the verifier reads


def post(url: str, body: dict, headers: dict | None = None, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def feedback_for(completion: dict, row: dict, judge: VerifierJudge) -> dict:
    """The event a user posts about a two-choice completion (module docstring)."""
    texts = [c["message"]["content"] for c in completion["choices"]]
    scores = [judge.score(row["messages"], t, row["metadata"]) for t in texts]
    base = {"response_id": completion["id"], "user_id": row["user"]}
    if scores[0].value != scores[1].value:
        return {**base, "kind": "side_by_side", "response_a": texts[0], "response_b": texts[1],
                "choice": "a" if scores[0].value > scores[1].value else "b"}
    return {**base, "kind": "thumbs", "choice_index": 0, "rating": "up" if scores[0].passed else "down"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the posttrain serve URL (started with --store)")
    ap.add_argument("--prompts", required=True, help="prompt rows with verifiable metadata (JSONL)")
    ap.add_argument("--limit", type=int, default=40, help="prompts to ask (default 40)")
    ap.add_argument("--users", type=int, default=4, help="concurrent users (default 4)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--api-key", default=None)
    args = ap.parse_args(argv)

    rows = []
    for n, line in enumerate(Path(args.prompts).read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        prompt = record["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        metadata = record.get("metadata") or {k: record[k] for k in VERIFIABLE if k in record}
        rows.append({"messages": messages, "metadata": metadata, "line": n})
        if len(rows) == args.limit:
            break
    judge = VerifierJudge(components=["constraints"])
    auth = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    counts = {"side_by_side": 0, "thumbs": 0, "errors": 0}
    lock = threading.Lock()

    def user(u: int) -> None:
        for row in rows[u::args.users]:
            row = {**row, "user": f"sim-{u}"}
            try:
                completion = post(args.url + "/v1/chat/completions",
                                  {"messages": row["messages"], "n": 2, "temperature": args.temperature,
                                   "max_tokens": args.max_tokens, "seed": row["line"]}, auth)
                event = feedback_for(completion, row, judge)
                post(args.url + "/v1/feedback", event, {**auth, "Idempotency-Key": f"sim:{row['line']}"})
                with lock:
                    counts[event["kind"]] += 1
            except (urllib.error.URLError, ValueError, KeyError) as e:
                with lock:
                    counts["errors"] += 1
                print(f"line {row['line']}: {type(e).__name__}: {e}", file=sys.stderr)

    threads = [threading.Thread(target=user, args=(u,)) for u in range(args.users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"posted {counts['side_by_side']} side-by-side and {counts['thumbs']} thumbs event(s) about "
          f"{len(rows)} prompt(s); {counts['errors']} error(s)")
    return 1 if counts["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
