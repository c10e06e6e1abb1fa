"""utils/errors.py: finding an error in a chain, wording a constructor's ValueError as a
ConfigError, and the one wrapper every entry point and script uses."""

import pytest

from utils.errors import (
    ConfigError,
    DataError,
    UserError,
    error_in,
    exit_on_user_error,
    settings_of,
    user_error_in,
)


def chained(inner: BaseException) -> RuntimeError:
    """A RuntimeError raised from ``inner``, as Hydra's instantiate wraps a constructor's error."""
    try:
        try:
            raise inner
        except BaseException as error:
            raise RuntimeError("Error in call to target") from error
    except RuntimeError as outer:
        return outer


def test_error_in_walks_the_chain_and_stops_on_a_cycle():
    inner = ValueError("bad")
    outer = chained(inner)
    assert error_in(outer, ValueError) is inner
    assert error_in(outer, RuntimeError) is outer
    assert error_in(outer, KeyError) is None
    data = DataError("missing")
    assert user_error_in(chained(data)) is data
    looped = ValueError("a")
    other = TypeError("b")
    looped.__cause__, other.__cause__ = other, looped
    assert error_in(looped, KeyError) is None  # a cycle ends the walk


def test_settings_of_words_a_value_error_and_lets_everything_else_through():
    with pytest.raises(ConfigError) as caught:
        with settings_of("model.loss"):
            raise chained(ValueError("SDC loss: rec_type 'l3' is not one of l1, l2, hinge"))
    assert str(caught.value) == (
        "Bad setting under model.loss: SDC loss: rec_type 'l3' is not one of l1, l2, hinge"
    )
    data = DataError("missing")
    with pytest.raises(RuntimeError) as kept:  # a UserError in the chain: unchanged
        with settings_of("model.loss"):
            raise chained(data)
    assert user_error_in(kept.value) is data
    with pytest.raises(TypeError, match="unexpected keyword"):  # not a setting's value: as is
        with settings_of("model.loss"):
            raise TypeError("unexpected keyword 'x'")
    with settings_of("model.loss"):
        pass


def test_exit_on_user_error(capsys):
    def fails(error):
        raise error

    assert exit_on_user_error(lambda x: x + 1)(1) == 2
    with pytest.raises(SystemExit) as code:
        exit_on_user_error(fails)(chained(UserError("no data folder: set data_dir")))
    assert code.value.code == 2
    assert capsys.readouterr().err == "error: no data folder: set data_dir\n"
    with pytest.raises(ValueError, match="a bug"):  # not the user's: the traceback stays
        exit_on_user_error(fails)(ValueError("a bug"))
    with pytest.raises(SystemExit) as code:
        exit_on_user_error(fails)(KeyboardInterrupt())
    assert code.value.code == 130
    assert capsys.readouterr().err == "interrupted: resume with resume=<run dir>\n"
    with pytest.raises(KeyboardInterrupt):  # a benchmark has nothing to resume
        exit_on_user_error(fails, interrupted=None)(KeyboardInterrupt())
