"""The internal plane's pure parts: a Redis URL shown without its password, registry
records signed with the cluster token, the serve banner, Ray's token authentication set
explicitly. Real processes and a real Redis: tests/integration/test_internal_plane.py."""

from __future__ import annotations

import os

import pytest

from engine import EngineConfig
from services.cluster import ray_auth
from services.cluster.cluster_config import ClusterConfig
from services.cluster.record_signing import DIGEST_BYTES, VERSION, sign, signing_key, verify
from services.cluster.redis_url import (
    REDIS_URL_ENV,
    redact_url,
    redis_url_from,
    url_with_password,
)
from services.cluster.serve import Cluster
from services.pb.events_pb2 import WorkerRecord

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (
            f"redis://alice:{SECRET}@redis.internal:6380/2",
            "redis://alice:***@redis.internal:6380/2",
        ),
        (f"rediss://{SECRET}@h:1/0", "rediss://***@h:1/0"),  # meant as a password, often
        (f"redis://h:1/0?password={SECRET}&db=3", "redis://h:1/0?password=***&db=3"),
        (f"unix://:{SECRET}@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # nothing to hide
    ],
)
def test_redact_url_masks_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET not in redact_url(url)


def test_redact_url_shows_nothing_of_what_it_cannot_parse() -> None:
    assert redact_url(f"redis://:{SECRET}@[::1") == "***"  # an unclosed IPv6 bracket


def test_a_password_goes_back_into_a_redacted_url() -> None:
    url = url_with_password("redis://:***@127.0.0.1:6379/0", "a/b@c")  # quoted in the URL
    assert url == "redis://:a%2Fb%40c@127.0.0.1:6379/0"
    assert redact_url(url) == "redis://:***@127.0.0.1:6379/0"


def test_the_url_comes_from_the_flag_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    with pytest.raises(SystemExit, match=REDIS_URL_ENV):
        redis_url_from(None)
    monkeypatch.setenv(REDIS_URL_ENV, "redis://env:1/0")
    assert redis_url_from(None) == "redis://env:1/0"
    assert redis_url_from("redis://flag:1/0") == "redis://flag:1/0"


def _record_bytes() -> bytes:
    record = WorkerRecord(worker_id="decode-0", role="decode", grpc_address="127.0.0.1:1")
    record.nixl_metadata = b"\x00agent"
    return record.SerializeToString()


def test_a_signed_record_verifies_with_its_key_only() -> None:
    payload, key = _record_bytes(), signing_key("the-cluster-token")
    value = sign(key, payload)
    assert value[: len(VERSION)] == VERSION and len(value) == 2 + DIGEST_BYTES + len(payload)
    assert verify(key, value) == payload
    assert verify(signing_key("another-token"), value) is None  # wrong key
    assert verify(signing_key(None), value) is None  # a reader without the token
    assert verify(key, payload) is None  # unsigned: the bare protobuf


@pytest.mark.parametrize("where", [0, 1, 2, 2 + DIGEST_BYTES - 1, 2 + DIGEST_BYTES, -1])
def test_any_changed_byte_is_rejected(where: int) -> None:
    """In the version, the digest or the record itself."""
    key = signing_key("the-cluster-token")
    value = bytearray(sign(key, _record_bytes()))
    value[where] ^= 0x01
    assert verify(key, bytes(value)) is None


def test_short_or_truncated_values_are_rejected() -> None:
    key = signing_key("t")
    value = sign(key, _record_bytes())
    for cut in (b"", VERSION, value[: 2 + DIGEST_BYTES - 1], value[:-1]):
        assert verify(key, cut) is None


def test_no_token_is_the_empty_key_and_still_one_format() -> None:
    """A cluster without a token: records carry an HMAC under the empty key, which a
    reader with a token refuses."""
    value = sign(signing_key(None), _record_bytes())
    assert verify(signing_key(""), value) == _record_bytes()
    assert verify(signing_key("the-cluster-token"), value) is None


def test_the_serve_banner_masks_the_redis_password() -> None:
    cluster = Cluster(ClusterConfig(EngineConfig(model="m"), cluster_token=SECRET))
    cluster.redis_url = f"redis://:{SECRET}@127.0.0.1:6379/0"
    cluster.ray_address = "127.0.0.1:6380"
    banner = "\n".join(cluster.banner())
    assert "Redis:          redis://:***@127.0.0.1:6379/0" in banner
    assert SECRET not in banner
    assert SECRET not in repr(cluster.config)  # secrets are kept out of the config's repr


class _Reloads:
    def __init__(self) -> None:
        self.expected: list[bool] = []

    def __call__(self, expect_token: bool) -> None:
        self.expected.append(expect_token)


def test_a_ray_we_start_gets_token_auth_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    reloads = _Reloads()  # Ray's cached config stays as it is in this process
    monkeypatch.setattr(ray_auth, "_reload_ray_config", reloads)
    monkeypatch.delenv(ray_auth.AUTH_MODE_ENV, raising=False)
    assert ray_auth.require_token_auth(starting_ray=True) == "token"
    assert os.environ[ray_auth.AUTH_MODE_ENV] == "token"  # the GCS and raylets inherit it
    assert reloads.expected == [True]


def test_a_mode_the_user_set_wins_and_a_joined_ray_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reloads = _Reloads()
    monkeypatch.setattr(ray_auth, "_reload_ray_config", reloads)
    monkeypatch.setenv(ray_auth.AUTH_MODE_ENV, "disabled")
    assert ray_auth.require_token_auth(starting_ray=True) == "disabled"
    assert "takes any caller" in caplog.text
    monkeypatch.delenv(ray_auth.AUTH_MODE_ENV)
    assert ray_auth.require_token_auth(starting_ray=False) is None  # RAY_ADDRESS: theirs
    assert ray_auth.AUTH_MODE_ENV not in os.environ
    assert reloads.expected == [False]
