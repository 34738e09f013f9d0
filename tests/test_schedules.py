import pytest

from comp.errors import CompError
from comp.training.schedules import cosine_decay, step_decay


def test_step_decay_values():
    values = [step_decay(e, 0.1, 0.5, 10) for e in (0, 9, 10, 19, 20, 35)]
    assert values == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.0125])


def test_cosine_decay_ends_at_zero():
    assert cosine_decay(0, 1.0, 10) == pytest.approx(1.0)
    assert cosine_decay(5, 1.0, 10) == pytest.approx(0.5)
    assert cosine_decay(10, 1.0, 10) == pytest.approx(0.0)


def test_an_unknown_schedule_is_refused_with_the_config_naming_the_table():
    from comp.config import load_config
    from comp.training.schedules import SCHEDULES

    with pytest.raises(CompError, match="train.schedule='warp': use one of " +
                       "\\|".join(SCHEDULES)):
        load_config(["train.schedule=warp"])
