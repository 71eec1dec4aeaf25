"""bnlib section 4, checking tools: rel_error, numerical_gradient, compare and its Verdict.
References: closed forms written here."""
import numpy as np
import pytest

import bnlib


def test_numerical_gradient_matches_closed_form_of_a_cube():
    x = np.array([[0.5, -1.0], [2.0, 3.0]])
    dout = np.array([[1.0, 2.0], [-1.0, 0.5]])
    grad = bnlib.numerical_gradient(lambda v: v**3, x, dout)
    assert np.max(np.abs(grad - 3 * x**2 * dout)) < 1e-8


def test_rel_error_follows_its_formula():
    assert bnlib.rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert bnlib.rel_error([1.0], [3.0]) == pytest.approx(0.5)
    assert bnlib.rel_error([0.0], [1e-9]) == pytest.approx(0.1)  # floor of 1e-8 in the denominator


def test_rel_error_of_values_with_opposite_signs_is_one():
    # |a - b| / (|a| + |b|) = 2|a| / 2|a|; a denominator of |a + b| would divide by zero
    assert bnlib.rel_error([1.0], [-1.0]) == 1.0
    assert bnlib.rel_error([2.0, -3.0], [-2.0, 3.0]) == 1.0


def test_compare_is_true_within_tol_and_false_beyond_it_or_for_another_shape(capsys):
    assert bnlib.compare("close", [1.0, 2.0], [1.0, 2.0 + 1e-12])
    assert not bnlib.compare("far", [1.0, 2.0], [1.0, 2.0 + 1e-9])
    assert not bnlib.compare("other shape", [1.0, 2.0], [1.0])


def test_verdict_is_true_or_false_in_code():
    assert bnlib.Verdict(True) and not bnlib.Verdict(False)


def test_verdict_shows_nothing_as_the_last_line_of_a_cell():
    # IPython's own formatter, which a cell's last value goes through: no data, no stray "True"
    from IPython.core.formatters import DisplayFormatter
    assert DisplayFormatter().format(True) == ({"text/plain": "True"}, {})
    assert DisplayFormatter().format(bnlib.Verdict(True)) == ({}, {})


# --- careless input (issue "No silent wrong answers") ---------------------------------------

def test_numerical_gradient_refuses_an_integer_array_it_would_truncate():
    with pytest.raises(TypeError, match="float"):
        bnlib.numerical_gradient(lambda v: v**2, np.arange(3), np.ones(3))


def test_numerical_gradient_gives_x_back_unchanged_when_f_raises():
    x = np.array([1.0, 2.0, 3.0])
    calls = []

    def f(v):
        calls.append(1)
        if len(calls) == 3:                    # raise while x[1] is shifted by +h
            raise RuntimeError("boom")
        return v

    with pytest.raises(RuntimeError):
        bnlib.numerical_gradient(f, x, np.ones(3))
    assert np.array_equal(x, [1.0, 2.0, 3.0])
