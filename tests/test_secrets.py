"""Secrets in configs, errors and logs (issue 17, defects 2 and 12): secret shapes anywhere in a value
are refused without being echoed, every message and log line is redacted by one function, and every
secret a config names is checked on the driver before Ray starts."""

from __future__ import annotations

import io
import logging

import pytest

from soulray.cli import DEMO_CONFIG, main
from soulray.config import RegenerateConfig, check_named_secrets, load_config
from soulray.errors import ConfigError, SourceError
from soulray.llm.client import resolve_api_key
from soulray.redaction import RedactingFilter, find_secret, redact
from tests.conftest import PLANTED_API_KEY, PLANTED_SECRET

AZURE_HEX = "deadbeef0123456789abcdef01234567"  # 32 hex, starts with a letter: also a valid env var name
BASE64_TOKEN = "Zm9vYmFyQmF6UXV4MTIzNDU2Nzg5MGFiY2RlZg"


@pytest.mark.parametrize("override, secret", [
    (f"rewrite.base_url=https://llm.example.com/v1?api-key={PLANTED_API_KEY}", PLANTED_API_KEY),
    ("rewrite.base_url=https://llm.example.com/v1?api-version=2024-06-01&api-key=short-but-named", "short-but-named"),
    ("rewrite.base_url=https://team:hunter2pass@llm.example.com/v1", "hunter2pass"),
    (f"rewrite.keys=[{{name: azure, api_key_env: {AZURE_HEX}}}]", AZURE_HEX),
    (f"s3.endpoint_url=http://127.0.0.1:9000/?X-Amz-Signature={AZURE_HEX}", AZURE_HEX),
    (f"sources.0.default_topic={BASE64_TOKEN}", BASE64_TOKEN),
    (f"rewrite.keys=[{{name: k, base_url: 'https://h/v1', api_key_file: '/keys/{PLANTED_SECRET}'}}]", PLANTED_SECRET),
])
def test_secret_shapes_inside_values_are_refused_without_echo(override, secret, capsys):
    with pytest.raises(ConfigError, match="looks like a secret") as error:
        load_config(RegenerateConfig, None, [override])
    assert secret not in str(error.value)
    assert main(["regenerate", "--set", override]) == 2  # and the command says so in one line, no echo
    err = capsys.readouterr().err
    assert secret not in err and err.count("\n") == 1 and "looks like a secret" in err


def test_ordinary_values_are_not_secret_shaped():
    for value in ("/tmp/pytest-of-user/pytest-12/test_killed_job_resumes_and_pa0/out", "s3://corpus-bucket/soulchat",
                  "http://127.0.0.1:9000", "https://my-resource.openai.azure.com", "20261129T043733Z-6cbfe6",
                  "gpt-3.5-turbo", "OPENAI_KEY_A", "builtin:demo/qa.parquet", "https://api.deepseek.com/v1"):
        assert find_secret(value) is None, value


def test_redact_keeps_what_is_useful_around_the_secret():
    text = f"calling https://team:pw1234@h.example/v1?api-key={PLANTED_API_KEY}&x=1 with {AZURE_HEX}"
    assert redact(text) == "calling https://team:[redacted]@h.example/v1?api-key=[redacted]&x=1 with [redacted]"
    assert PLANTED_SECRET not in str(SourceError(f"bad file {PLANTED_SECRET}"))  # every user error, when made


def test_log_lines_are_redacted():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("soulray.test_secrets")
    logger.addHandler(handler)
    try:
        logger.warning("endpoint %s answered 401", f"https://h/v1?token={PLANTED_API_KEY}")
        try:
            raise RuntimeError(f"key {AZURE_HEX} refused")
        except RuntimeError:
            logger.exception("call failed")
    finally:
        logger.removeHandler(handler)
    assert PLANTED_API_KEY not in stream.getvalue() and AZURE_HEX not in stream.getvalue()
    assert "token=[redacted]" in stream.getvalue() and "key [redacted] refused" in stream.getvalue()


def test_named_secrets_are_checked_before_anything_starts(monkeypatch, tmp_path, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the job started before its secrets were checked")

    monkeypatch.setattr("soulray.runtime.init_ray", must_not_run)  # soulray/pipeline.py imports it at run time
    monkeypatch.setattr("soulray.regenerate.plan_fragments", must_not_run)
    keys = ("[{name: a, api_key_env: SOULRAY_UNSET_KEY_A}, {name: b, api_key_file: /no/such/key.txt},"
            " {name: c, api_key_env: notAVariableButAPastedKey}]")
    code = main(["regenerate", "--set", f"rewrite.keys={keys}", "--set", "s3.secret_access_key_env=SOULRAY_UNSET_S3",
                 "--set", f"storage.root={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for named in ("rewrite.keys.0.api_key_env: environment variable SOULRAY_UNSET_KEY_A is not set",
                  "rewrite.keys.1.api_key_file: /no/such/key.txt is missing", "s3.secret_access_key_env"):
        assert named in err
    assert "notAVariableButAPastedKey" not in err  # not shaped like a name: perhaps a pasted key, never shown


def test_named_secrets_that_are_there_pass(tmp_path, monkeypatch):
    key_file = tmp_path / "key.txt"
    key_file.write_text("sk-from-a-file\n")
    monkeypatch.setenv("SOULRAY_SET_KEY", "value")
    check_named_secrets(load_config(RegenerateConfig, DEMO_CONFIG, [
        f"rewrite.keys=[{{name: a, api_key_env: SOULRAY_SET_KEY}}, {{name: b, api_key_file: '{key_file}'}}]"]))
    key_file.write_text("")
    with pytest.raises(ConfigError, match="missing, unreadable or empty"):
        check_named_secrets(load_config(RegenerateConfig, DEMO_CONFIG, [f"rewrite.keys=[{{name: b, api_key_file: '{key_file}'}}]"]))


def test_workers_check_again_when_they_resolve_the_key(monkeypatch):
    config = load_config(RegenerateConfig, DEMO_CONFIG, ["rewrite.keys=[{name: a, api_key_env: SOULRAY_GONE_ON_WORKER}]"])
    monkeypatch.delenv("SOULRAY_GONE_ON_WORKER", raising=False)
    with pytest.raises(ConfigError, match="SOULRAY_GONE_ON_WORKER is not set on this node"):
        resolve_api_key(config.rewrite.keys[0])
