from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from onceonly.config import IdempotencyConfig, InProgressPolicy, StoreErrorPolicy
from onceonly.errors import IdempotencyConfigError, IdempotencyError

SECONDS_OPTIONS = ["lease_seconds", "expires_after_seconds", "wait_timeout_seconds"]


def config_error(option: str) -> Any:
    """pytest.raises for an IdempotencyConfigError whose message starts with the option name."""
    return pytest.raises(IdempotencyConfigError, match=rf"^{re.escape(option)}\b")


def test_defaults() -> None:
    config = IdempotencyConfig()
    assert config.event_key_jmespath is None
    assert config.payload_validation_jmespath is None
    assert config.raise_on_no_idempotency_key is False
    assert config.expires_after_seconds == 3600.0
    assert config.use_local_cache is False
    assert config.local_cache_max_items == 256
    assert config.hash_function == "md5"
    assert config.response_hook is None
    assert config.key_prefix is None
    assert config.lease_seconds == 60.0
    assert config.heartbeat is False
    assert config.on_in_progress is InProgressPolicy.RAISE
    assert config.wait_timeout_seconds == 30.0
    assert config.on_store_error is StoreErrorPolicy.RAISE
    assert config.lease_ms == 60_000
    assert config.ttl_ms == 3_600_000


@pytest.mark.parametrize("option", SECONDS_OPTIONS)
@pytest.mark.parametrize(
    "bad",
    [0, 0.0, -1, -0.5, float("nan"), float("inf"), float("-inf"), True, False, "10", None, 0.0004],
    ids=repr,
)
def test_seconds_options_reject_bad_values(option: str, bad: Any) -> None:
    with config_error(option):
        IdempotencyConfig(**{option: bad})


@pytest.mark.parametrize("option", SECONDS_OPTIONS)
def test_seconds_options_accept_positive_numbers_as_float(option: str) -> None:
    config = IdempotencyConfig(**{option: 5})
    value = getattr(config, option)
    assert type(value) is float
    assert value == 5.0
    assert getattr(IdempotencyConfig(**{option: 0.001}), option) == 0.001


@pytest.mark.parametrize(
    ("seconds", "ms"), [(0.001, 1), (1.001, 1001), (2.5, 2500), (0.29, 290), (86400, 86_400_000)]
)
def test_lease_and_ttl_milliseconds(seconds: float, ms: int) -> None:
    config = IdempotencyConfig(lease_seconds=seconds, expires_after_seconds=seconds)
    assert config.lease_ms == ms
    assert config.ttl_ms == ms


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10", None], ids=repr)
def test_local_cache_max_items_rejects_bad_values(bad: Any) -> None:
    with config_error("local_cache_max_items"):
        IdempotencyConfig(local_cache_max_items=bad)


def test_local_cache_max_items_accepts_one() -> None:
    assert IdempotencyConfig(local_cache_max_items=1).local_cache_max_items == 1


@pytest.mark.parametrize("bad", ["sha999", "", "SHA-256!", 256, None, "shake_128", "shake_256"])
def test_hash_function_rejects_unknown_or_variable_length(bad: Any) -> None:
    with config_error("hash_function"):
        IdempotencyConfig(hash_function=bad)


@pytest.mark.parametrize("name", ["md5", "sha1", "sha256", "sha512", "blake2b", "sha3_256"])
def test_hash_function_accepts_hashlib_names(name: str) -> None:
    assert IdempotencyConfig(hash_function=name).hash_function == name


@pytest.mark.parametrize("option", ["event_key_jmespath", "payload_validation_jmespath"])
# "" is Powertools' default, "no expression" (tests/compat/test_powertools_migration.py).
@pytest.mark.parametrize("bad", ["[[", "foo.", "a ||", "   ", 123, ["id"]], ids=repr)
def test_jmespath_options_reject_invalid_expressions(option: str, bad: Any) -> None:
    with config_error(option):
        IdempotencyConfig(**{option: bad})


def test_jmespath_options_are_compiled() -> None:
    config = IdempotencyConfig(
        event_key_jmespath="powertools_json(body).id", payload_validation_jmespath="[a, b]"
    )
    assert config.event_key_jmespath == "powertools_json(body).id"
    assert config._key_expr.expression == "powertools_json(body).id"
    assert config._validation_expr.expression == "[a, b]"


@pytest.mark.parametrize("bad", ["hook", 1, object()], ids=["str", "int", "object"])
def test_response_hook_must_be_callable(bad: Any) -> None:
    with config_error("response_hook"):
        IdempotencyConfig(response_hook=bad)


@pytest.mark.parametrize("option", ["raise_on_no_idempotency_key", "use_local_cache", "heartbeat"])
@pytest.mark.parametrize("bad", [1, 0, "yes", None], ids=repr)
def test_flag_options_must_be_bool(option: str, bad: Any) -> None:
    with config_error(option):
        IdempotencyConfig(**{option: bad})


@pytest.mark.parametrize("bad", ["", 5, b"prefix"], ids=repr)
def test_key_prefix_must_be_non_empty_string(bad: Any) -> None:
    with config_error("key_prefix"):
        IdempotencyConfig(key_prefix=bad)


@pytest.mark.parametrize("bad", ["sleep", "RAISE", "", None, 1, ["wait"]], ids=repr)
def test_on_in_progress_rejects_unknown_policies(bad: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match=r"^on_in_progress must be 'raise' \| 'wait'"):
        IdempotencyConfig(on_in_progress=bad)


@pytest.mark.parametrize("bad", ["ignore", "Run", "", None, 0], ids=repr)
def test_on_store_error_rejects_unknown_policies(bad: Any) -> None:
    with pytest.raises(IdempotencyConfigError, match=r"^on_store_error must be 'raise' \| 'run'"):
        IdempotencyConfig(on_store_error=bad)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("raise", InProgressPolicy.RAISE),
        ("wait", InProgressPolicy.WAIT),
        (InProgressPolicy.WAIT, InProgressPolicy.WAIT),
    ],
)
def test_on_in_progress_strings_become_enums(given: Any, expected: InProgressPolicy) -> None:
    assert IdempotencyConfig(on_in_progress=given).on_in_progress is expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("raise", StoreErrorPolicy.RAISE),
        ("run", StoreErrorPolicy.RUN),
        (StoreErrorPolicy.RUN, StoreErrorPolicy.RUN),
    ],
)
def test_on_store_error_strings_become_enums(given: Any, expected: StoreErrorPolicy) -> None:
    assert IdempotencyConfig(on_store_error=given).on_store_error is expected


def test_config_error_is_in_the_error_tree_and_a_value_error() -> None:
    with pytest.raises(IdempotencyConfigError) as info:
        IdempotencyConfig(lease_seconds=-1)
    assert isinstance(info.value, IdempotencyError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("lease_seconds", 5),
        ("on_in_progress", "wait"),
        ("event_key_jmespath", "id"),
        ("response_hook", None),
        ("_key_expr", None),
    ],
)
def test_config_is_frozen(option: str, value: Any) -> None:
    config = IdempotencyConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, option, value)


def test_replace_validates_the_new_values() -> None:
    config = IdempotencyConfig(lease_seconds=10)
    assert dataclasses.replace(config, lease_seconds=20).lease_ms == 20_000
    with config_error("lease_seconds"):
        dataclasses.replace(config, lease_seconds=0)
