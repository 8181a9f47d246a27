"""The helper process: calls run in another, light process (no TensorFlow), errors come back with
their traceback, and a helper that died is replaced."""

import os
import sys

import pytest

from multiloss import helper_process


def heavy_modules_loaded() -> list[str]:
    return [name for name in ("tensorflow", "tf_keras", "mlflow") if name in sys.modules]


def test_a_call_runs_in_another_process_and_returns_its_result():
    assert helper_process.call(os.getpid) != os.getpid()
    assert helper_process.call(divmod, 17, 5) == (3, 2)


def heavy_modules_after_the_figures_imports() -> list[str]:
    import multiloss.classification.scoring  # noqa: F401  (what drawing a classifier's figures imports)
    import multiloss.plots  # noqa: F401

    return heavy_modules_loaded()


def shout() -> str:
    print("drawn", flush=True)
    sys.stdout.write("x" * 20000)
    sys.stdout.flush()
    os.write(1, b"from C, say")
    return "answer"


def test_the_helper_imports_what_its_calls_need_and_never_tensorflow():
    import tensorflow  # noqa: F401  (loaded here; the helper must not load it too)

    assert helper_process.call(heavy_modules_after_the_figures_imports) == []


def test_what_a_call_prints_does_not_get_into_its_answer():
    assert helper_process.call(shout) == "answer"
    assert helper_process.call(divmod, 7, 2) == (3, 1)


def test_an_argument_that_does_not_pickle_is_raised_here_and_the_helper_stays():
    first = helper_process.call(os.getpid)
    with pytest.raises(Exception, match="pickle"):
        helper_process.call(divmod, lambda: 1, 2)
    assert helper_process.call(os.getpid) == first


def test_an_error_comes_back_with_its_traceback():
    with pytest.raises(RuntimeError, match=r"in the helper process:(.|\n)*ValueError: invalid literal"):
        helper_process.call(int, "not a number")
    assert helper_process.call(int, "12") == 12          # the helper survives its callers' errors


def test_a_helper_that_dies_in_a_call_is_named_and_the_next_call_gets_a_new_one():
    first = helper_process.call(os.getpid)
    with pytest.raises(RuntimeError, match=rf"helper process {first} ended \(exit code 3\)"):
        helper_process.call(os._exit, 3)
    assert helper_process.call(os.getpid) not in (first, os.getpid())
