"""The one vocabulary of argument checks: type mistakes are TypeErrors, range mistakes
ValueErrors, and every message names the argument, the value and what is allowed."""

import numpy as np
import pytest

from artrainer.validation import require_bool, require_choice, require_int, require_real


@pytest.mark.parametrize("value", [True, np.bool_(False), "3", 3.0, None, [1]])
def test_require_int_refuses_non_ints_with_a_type_error(value):
    with pytest.raises(TypeError, match=r"^steps must be an int >= 1; got .*\(\w+\)$"):
        require_int("steps", value, minimum=1)


@pytest.mark.parametrize("value, minimum, maximum, wording", [
    (0, 1, None, "an int >= 1"), (11, 1, 10, r"an int in \[1, 10\]"), (5, None, 4, "an int <= 4")])
def test_require_int_refuses_out_of_range_with_a_value_error(value, minimum, maximum, wording):
    with pytest.raises(ValueError, match=rf"^n must be {wording}; got {value} \(int\)$"):
        require_int("n", value, minimum=minimum, maximum=maximum)


def test_require_int_returns_python_ints_and_passes_none_when_optional():
    assert type(require_int("n", np.int64(3), minimum=0)) is int
    assert require_int("n", None, optional=True) is None
    with pytest.raises(TypeError, match=r"an int >= 1 or None"):
        require_int("n", "x", minimum=1, optional=True)


def test_require_int_explains_the_bound_and_custom_rules():
    with pytest.raises(ValueError, match=r"heads must be an int >= 1 \(a divisor of 64\); got 3"):
        require_int("heads", 3, minimum=1, why="a divisor of 64", ok=lambda v: 64 % v == 0)


@pytest.mark.parametrize("value", [True, "0.5", None, 1j])
def test_require_real_refuses_non_numbers(value):
    with pytest.raises(TypeError, match=r"^p must be a number in \(0, 1\]; got "):
        require_real("p", value, minimum=0, maximum=1, min_open=True)


@pytest.mark.parametrize("value", [0.0, 1.5, float("nan"), float("inf"), 10**400])
def test_require_real_refuses_out_of_range_and_non_finite(value):
    with pytest.raises(ValueError, match=r"^p must be a number in \(0, 1\]; got "):
        require_real("p", value, minimum=0, maximum=1, min_open=True)


def test_require_real_accepts_ints_and_numpy_floats():
    assert require_real("lr", 1, minimum=0, min_open=True) == 1.0
    assert type(require_real("lr", np.float32(0.5), minimum=0)) is float


@pytest.mark.parametrize("value", [0, 1, "True", None, np.array([True])])
def test_require_bool_refuses_everything_but_bools(value):
    with pytest.raises(TypeError, match=r"^flag must be a bool \(True or False\); got "):
        require_bool("flag", value)


def test_require_bool_accepts_numpy_bools():
    assert require_bool("flag", np.bool_(True)) is True


def test_require_choice_lists_the_choices():
    assert require_choice("precision", "bf16", ("fp32", "bf16")) == "bf16"
    with pytest.raises(ValueError, match=r"^precision must be one of 'fp32', 'bf16'; got 'fp16' \(str\)$"):
        require_choice("precision", "fp16", ("fp32", "bf16"))
    with pytest.raises(ValueError, match="must be one of"):
        require_choice("precision", np.zeros(3), ("fp32",))
