"""The shipped answer scorer and the answer features it reads."""

from __future__ import annotations

import pytest

import classifiers
from classifiers.answer import ANSWER_STRUCTURE, answer_structure

PROMPT = "Tom has 3 boxes with 12 apples each. He eats 5 apples. How many apples are left?"
RIGHT = "Tom has 3 * 12 = 36 apples.\nAfter eating 5 he has 36 - 5 = 31 apples.\nThe answer is 31."
WRONG = "Tom has 3 * 12 = 38 apples.\nAfter eating 5 he has 38 - 5 = 33 apples.\nThe answer is 33."


def test_answer_structure_checks_the_worked_arithmetic() -> None:
    right = dict(zip(ANSWER_STRUCTURE, answer_structure(PROMPT, RIGHT), strict=True))
    wrong = dict(zip(ANSWER_STRUCTURE, answer_structure(PROMPT, WRONG), strict=True))
    assert right["wrong_equations"] == 0 and wrong["wrong_equations"] == 1
    assert wrong["wrong_equation_share"] == 0.5
    assert right["final_marker"] == 1
    copied = dict(zip(ANSWER_STRUCTURE, answer_structure(PROMPT, "The answer is 12."), strict=True))
    assert copied["final_number_in_prompt"] == 1
    runaway = dict(zip(ANSWER_STRUCTURE, answer_structure(PROMPT, "31\n\nQuestion: Next"), strict=True))
    assert runaway["runs_on"] == 1


def test_shipped_answer_scorer_loads_with_the_same_api_and_prefers_right_arithmetic() -> None:
    judge = classifiers.load(classifiers.default_answer_path())
    assert judge.spec.answer and judge.meta["kind"] == "answer_scorer"
    right = judge.score(classifiers.answer_text(PROMPT, RIGHT))
    wrong = judge.score(classifiers.answer_text(PROMPT, WRONG))
    empty = judge.score(classifiers.answer_text(PROMPT, "I am not sure."))
    assert wrong > right
    assert empty > right
    assert not classifiers.load().spec.answer  # the difficulty classifier is unchanged


@pytest.mark.usefixtures("routing_data")
def test_cascade_protocol_on_recorded_gsm8k_answers_beats_prompt_only_routing() -> None:
    """The README's cascade table, recomputed: same items, same folds, the small model's real answers."""
    from classifiers.lab.evaluate import run_protocols

    (result,) = run_protocols(protocols=("gsm8k cascade 5-fold",))
    rows = {r.router: r for r in result.rows}
    routed, cascade = rows["prompt routing"], rows["cascade (answer scorer)"]
    assert result.items == 1307
    assert cascade.apgr > routed.apgr + 0.05
    assert cascade.share_at_95 < routed.share_at_95 - 0.1
    # The cascade pays for every draft: its saving is the free-small saving less the small model's price.
    assert cascade.saved_priced < cascade.saved_free_small
    assert cascade.saved_priced > 0.5  # the project's promise: more than half the cost, at 95% quality
