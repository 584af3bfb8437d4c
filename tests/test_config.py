import pytest
from pydantic import ValidationError

from ggro import GGROConfig


def test_paper_defaults() -> None:
    c = GGROConfig()
    assert (c.entropy_threshold, c.min_segment_tokens, c.refinement_steps, c.nudge_top_k, c.nudge_temperature) == (
        1.5,
        4,
        8,
        25,
        0.1,
    )
    assert c.nudge_selection == "greedy"
    ref = GGROConfig.reference()
    assert ref.first_insertion_offset == 4 and ref.retokenize_between_segments and ref.final_reward_before_eos
    assert ref.nudge_score_baseline == "zero"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("entropy_threshold", -0.1, "greater than or equal to 0"),
        ("refinement_steps", 0, "greater than or equal to 1"),
        ("refinement_steps", 65, "less than or equal to 64"),
        ("nudge_top_k", 0, "greater than or equal to 1"),
        ("nudge_temperature", 0.0, "greater than 0"),
        ("nudge_selection", "best", "'greedy' or 'sample'"),
        ("max_new_tokens", 0, "greater than or equal to 1"),
        ("min_segment_tokens", 1, "greater than or equal to 2"),
        ("stop_sequences", [""], "non-empty"),
    ],
)
def test_bad_values_name_field_and_range(field: str, value: object, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        GGROConfig(**{field: value})
    text = str(info.value)
    assert field in text and expected in text


def test_unknown_field_rejected() -> None:
    with pytest.raises(ValidationError, match="entropy_treshold"):
        GGROConfig(entropy_treshold=1.0)  # type: ignore[call-arg]


def test_assignment_is_validated() -> None:
    c = GGROConfig()
    with pytest.raises(ValidationError, match="refinement_steps"):
        c.refinement_steps = -3


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="allowed: 'default', 'reference'"):
        GGROConfig.preset("fast")
