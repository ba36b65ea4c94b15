"""The release gates of examples/gates.yaml against the model the quickstart released before issue 16.

``tests/fixtures/quickstart_released_recipe_eval.json`` is a measurement, not a hand-made file: the
``metrics.json`` of the quickstart's eval stage from ``make demo`` on a fresh clone (2 CPU cores), whose training
stages are exactly the recipe released before issue 16 (LoRA SFT on templated demos -> on-policy + shipped pairs
-> LoRA DPO; the same stage keys as at commit f61f921) and whose eval runs the DPO model, the SFT baseline and the
untouched base on the six builtin suites. The same DPO model evaluated alone by the code of f61f921's era gave the
same numbers to the last digit. Its in-distribution numbers are the ones that release passed with (constraints
0.417 -> 0.525).

The old gates passed that model; the new ones must stop it, and for the reasons issue 16 found: answers far
shorter than the base model's, capability lost on free-form questions, quotes nobody asked for."""

import json
from pathlib import Path

from posttrain.eval.gates import evaluate_gates, load_gates, parse_gates

ROOT = Path(__file__).resolve().parents[3]
METRICS = json.loads((ROOT / "tests" / "fixtures" / "quickstart_released_recipe_eval.json").read_text())
OLD_GATES = [  # examples/gates.yaml before issue 16, on the in-distribution metrics they measured then
    {"metric": "group/in_distribution/constraints/pass_rate", "min_delta": 0.10},
    {"metric": "group/in_distribution/capability/accuracy", "max_drop": 0.02},
    {"metric": "refusal/benign_rate", "max": 0.10},
]


def failed(gates) -> set[str]:
    return {r.metric for r in evaluate_gates(METRICS, gates) if not r.passed}


def test_the_old_gates_passed_it():
    assert failed(parse_gates(OLD_GATES, "old")) == set()


def test_the_new_gates_stop_it_for_the_reasons_issue_16_found():
    assert failed(load_gates(ROOT / "examples" / "gates.yaml")) == {
        "group/out_of_distribution/constraints/pass_rate",  # 0.227, below the SFT model's 0.238 (base 0.122)
        "group/out_of_distribution/capability/accuracy",  # 0.437 vs the base's 0.549
        # 16 words vs the base's 44 (the plain median: the fixture was measured before the length on the prompts
        # where neither answer loops existed; a gate on a metric the eval did not report fails, it does not pass)
        "group/out_of_distribution/length/paired_words_ratio_to_base",
        "format/unrequested_quotes_rate",  # 0.19 of answers wrapped in quotes nobody asked for
        "format/unrequested_lowercase_rate",  # not in the fixture either (measured before the metric existed)
        "format/instruction_echo_delta_vs_base",  # nor this one
    }
    assert METRICS["group/out_of_distribution/length/median_words_ratio_to_base"] < 0.75
    # and the in-distribution gain it was released for is still there and still passes its own gates
    assert METRICS["group/in_distribution/constraints/pass_rate"] == 0.525
