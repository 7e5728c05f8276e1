"""The Stage-1 and Stage-2 templates, byte for byte, and where the derivation sits."""

from __future__ import annotations

from proofkd.core.templates import (
    find_derivation_span,
    render_stage1,
    render_stage1_prompt,
    render_stage2,
    token_span_mask,
)

CARD_STAGE1 = (
    "Solve the following problem carefully and show a rigorous derivation.\n"
    "Problem:\n{question}\nProof:\n{CoT}\nFinal Answer:\n{response}"
)


def test_stage1_text_is_the_published_template_byte_for_byte():
    rendered = render_stage1("What is 2+2?", "Add the numbers.\n2 + 2 = 4.", "4")
    assert rendered.text == CARD_STAGE1.format(
        question="What is 2+2?", CoT="Add the numbers.\n2 + 2 = 4.", response="4"
    )


def test_derivation_span_runs_from_after_proof_to_final_answer():
    rendered = render_stage1("Q?", "step one\nstep two", "42")
    start, end = rendered.span
    assert rendered.text[start:end] == "\nstep one\nstep two\n"
    assert rendered.text[:start].endswith("Proof:")
    assert rendered.text[end:].startswith("Final Answer:")
    assert rendered.prompt_end == start


def test_markers_inside_question_or_derivation_do_not_move_the_span():
    rendered = render_stage1("Is Proof: a word?", "We say Final Answer: later.", "yes")
    start, end = rendered.span
    assert rendered.text[start:end] == "\nWe say Final Answer: later.\n"


def test_empty_chain_of_thought_has_no_span():
    assert render_stage1("Q?", "   ", "1").span is None


def test_custom_markers():
    rendered = render_stage1("Q?", "d", "a", start_marker="Derivation:", end_marker="Answer:")
    assert "\nDerivation:\nd\nAnswer:\na" in rendered.text
    assert rendered.text[slice(*rendered.span)] == "\nd\n"


def test_prompt_is_the_text_up_to_the_derivation():
    rendered = render_stage1("Q?", "d", "a")
    assert rendered.text.startswith(render_stage1_prompt("Q?"))


def test_find_span_in_rendered_text_matches_exact_span():
    rendered = render_stage1("Is Proof: a word?", "d1\nd2", "a")
    assert find_derivation_span(rendered.text) == rendered.span
    assert find_derivation_span("no markers here") is None
    assert find_derivation_span("Final Answer: only") is None


def test_token_span_mask_takes_tokens_that_start_inside():
    # text: "ab|cd|ef" with span [2, 4) ("cd"); a token "bc" straddling the start is outside.
    offsets = [(0, 0), (0, 2), (2, 3), (3, 5), (5, 6), (6, 6)]
    assert token_span_mask(offsets, (2, 4)) == [0, 0, 1, 1, 0, 0]
    assert token_span_mask([(1, 3), (3, 4)], (2, 4)) == [0, 1]
    assert token_span_mask(offsets, None) == [0] * 6


def test_stage2_format():
    rendered = render_stage2("Define tort.", "A civil wrong.")
    assert rendered.text == "### Instruction:\nDefine tort.\n### Response:\nA civil wrong."
    assert rendered.text[rendered.prompt_end :] == "A civil wrong."
    assert rendered.span is None
