"""Settings precedence, secret masking and the URL rule: pure logic, no database."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsave.adapters.imageapi.kinds import FACTS
from imgsave.core.kind_facts import KindFacts
from imgsave.core.redaction import mask_url, redact
from imgsave.core.settings import load_settings as load_with_kinds
from imgsave.core.settings import load_sourced as sourced_with_kinds
from imgsave.core.url_rule import url_problem
from imgsave.errors import UsageError


def load_settings(*args: Any, **kwargs: Any) -> Any:
    """The loader with the kinds imgsave knows, as the CLI calls it."""
    return load_with_kinds(*args, **{"kinds": FACTS, **kwargs})


def load_sourced(*args: Any, **kwargs: Any) -> Any:
    return sourced_with_kinds(*args, **{"kinds": FACTS, **kwargs})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imgsave.toml"
    path.write_text(text)
    return path


def test_flags_beat_environment_beat_file(tmp_path):
    write(
        tmp_path,
        'model = "from-file"\nbase_url = "https://file/v1"\nlog_dir = "/file/logs"\n'
        '[names]\ntable = "stories"\nprompt_keys = ["caption"]\n[database]\nlock_timeout = 2\n',
    )
    env = {"IMGSAVE_MODEL": "from-env", "IMGSAVE_LOG_DIR": "/env/logs", "OPENAI_API_KEY": "k1"}
    s = load_settings({"model": "from-flag", "log_dir": None}, environ=env, cwd=tmp_path)
    assert (s.model, s.base_url, str(s.log_dir), s.api_key) == (
        "from-flag",
        "https://file/v1",
        "/env/logs",
        "k1",
    )
    assert s.names.table == "stories" and s.names.key_column == "id"
    assert s.shape.prompt_keys == ("caption",)
    assert s.database.lock_timeout == 2.0


def test_imgsave_variables_beat_the_generic_ones(tmp_path):
    env = {
        "DATABASE_URL": "postgresql://generic",
        "IMGSAVE_DATABASE_URL": "postgresql://specific",
        "OPENAI_API_KEY": "generic",
        "IMGSAVE_API_KEY": "specific",
    }
    s = load_settings(environ=env, cwd=tmp_path)
    assert (s.database_url, s.api_key) == ("postgresql://specific", "specific")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modle = 'x'", "unknown setting 'modle'"),
        ("[names]\ntabel = 'x'", "unknown setting [names] 'tabel'"),
        ("[database]\nlock_timeout = -1", "must be a positive number"),
        ("[names]\nprompt_keys = []", "non-empty list of strings"),
        ("model = ", "not valid TOML"),
    ],
)
def test_bad_config_files_are_usage_errors(tmp_path, text, message):
    write(tmp_path, text)
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(environ={}, cwd=tmp_path)


def test_named_config_file_must_exist(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_settings(config_path=tmp_path / "missing.toml", environ={})


def test_secrets_are_masked_and_redacted():
    url = "postgresql://app:s3cret-pw%21@db.example.com:6543/postgres"
    assert mask_url(url) == "postgresql://app:***@db.example.com:6543/postgres"
    assert mask_url("host=db password=s3cret-pw user=app") == "host=db password=*** user=app"
    s = load_settings(
        environ={"IMGSAVE_DATABASE_URL": url, "IMGSAVE_API_KEY": "sk-abcdefgh"},
        cwd=Path("/nonexistent"),
    )
    assert redact(f"failed {url} with sk-abcdefgh", s.secrets) == (
        "failed postgresql://app:***@db.example.com:6543/postgres with ***"
    )


def test_a_string_too_short_to_be_a_secret_is_not_masked_but_warned_about():
    from imgsave.core.redaction import weak_secret_warnings

    assert redact("project abc-project failed", ("abc",)) == "project abc-project failed"
    warnings = weak_secret_warnings("abc", "postgresql://u:pw@h/db")
    assert len(warnings) == 2
    assert "only 3 characters long" in warnings[0] and "database password" in warnings[1]
    assert weak_secret_warnings("sk-long-enough", "postgresql://u:long-enough@h/db") == []


@pytest.mark.parametrize(
    ("url", "allow_http", "problem"),
    [
        ("https://cdn.example.com/a.png?sig=1", False, None),
        ("http://cdn.example.com/a.png", True, None),
        ("http://cdn.example.com/a.png", False, "scheme 'http' is not allowed"),
        ("javascript:alert(1)", False, "scheme 'javascript' is not allowed"),
        ("data:image/png;base64,AAAA", True, "scheme 'data' is not allowed"),
        ("https://x.test/" + "a" * 2040, False, "at most 2048"),
        ("https://x.test/a b", False, "whitespace or control"),
        ("https://x.test/a\x00", False, "whitespace or control"),
        ("https://x.test/a\u0085", False, "whitespace or control"),
        ("https:///nohost", False, "no host"),
        ("https://user:pw@x.test/a", False, "credentials"),
        ("", False, "empty"),
        (42, False, "not a string"),
        ('https://host/a.png"><script>alert(1)</script>', False, "RFC 3986"),
        ("https://host/a.png'onerror=x", False, None),  # a sub-delim; fine in src="..."
        ("https://host/invoice\u202egnp.exe", False, "bidirectional"),
        ("https://host/caf\u00e9.png", False, "RFC 3986"),
        ("https://host/a\\b.png", False, "RFC 3986"),
        ("https://host/a%2", False, "two hex digits"),
        ("https://host/a%2F[b]?q=1&r=(2)#x", False, None),
    ],
)
def test_url_rule(url, allow_http, problem):
    found = url_problem(url, allow_http=allow_http)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_times_and_durations():
    from datetime import UTC, datetime, timedelta

    from imgsave.cli.parsers import parse_duration, parse_time

    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert parse_time("2h", now=now) == now - timedelta(hours=2)
    assert parse_time("7d", now=now) == now - timedelta(days=7)
    assert parse_time("2026-11-25T10:00:00Z") == datetime(2026, 11, 25, 10, tzinfo=UTC)
    assert parse_time("2026-11-25 10:00") == datetime(2026, 11, 25, 10, tzinfo=UTC)
    assert parse_time("1764064800") == datetime(2025, 11, 25, 10, tzinfo=UTC)
    assert parse_duration("45m", "--run-gap") == timedelta(minutes=45)
    with pytest.raises(UsageError, match="--run-gap '3 parsecs'"):
        parse_duration("3 parsecs", "--run-gap")


_PASSWORD = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=24
)


@settings(max_examples=300, deadline=None)
@given(_PASSWORD)
def test_a_password_is_found_and_masked_in_every_form_libpq_accepts(password):
    from urllib.parse import quote

    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    forms = [
        ("postgresql://app:", quote(password, safe=""), "@db.example.com:6543/postgres"),
        ("host=db user=app password='", quoted, "' dbname=postgres"),
    ]
    if not set(password) & set("@/?#'\\ \"%"):  # libpq takes these raw in a URL as well
        forms.append(("postgresql://app:", password, "@db.example.com/postgres"))
    for head, secret, tail in forms:
        if password in head + tail or secret in head + tail:
            continue  # a password that is also part of the text cannot be told apart from it
        assert mask_url(head + secret + tail) == head + "***" + tail


def test_passwords_libpq_reads_but_urlsplit_does_not_are_masked():
    assert mask_url("postgresql://u:Zq7#Wx9Lm2@host/db") == "postgresql://u:***@host/db"
    assert mask_url("host=h password='Zq7 Wx9Lm2' user=u") == "host=h password='***' user=u"
    assert mask_url("postgresql://u:p%40ss%2Fw0rd@host/db") == "postgresql://u:***@host/db"


_URLISH = st.lists(
    st.sampled_from([*"ab.-:/?#[]@!$&'()*+,;=%~_\"<> \\\u00e9\u202e", "2F", "x.test", "//"]),
    max_size=30,
).map(lambda parts: "https://x.test/" + "".join(parts))


@settings(max_examples=1000, deadline=None)
@given(_URLISH)
def test_the_fast_path_of_the_url_rule_agrees_with_the_full_rule(url):
    from imgsave.core import url_rule as urls

    if urls._PLAIN[False].fullmatch(url):
        # Whatever the fast path accepts, each of the full rule's checks accepts too.
        assert not urls._FORBIDDEN.search(url) and not urls._BIDI.search(url)
        assert not urls._UNESCAPED.search(url) and not urls._BAD_PERCENT.search(url)
        assert urllib.parse.urlsplit(url).hostname == "x.test"
    elif urls.url_problem(url) is None:
        # Accepted by the full path alone: still only RFC 3986 characters.
        assert not urls._UNESCAPED.search(url) and not urls._BAD_PERCENT.search(url)


def test_the_settings_file_is_the_first_found_and_every_setting_knows_its_source(tmp_path):

    user = tmp_path / "user.toml"
    user.write_text('model = "user"\n[provider]\ntimeout = 5\n')
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    found = load_sourced(environ={}, cwd=cwd, user_file=user)
    assert (found.config_file, found.settings.model) == (user, "user")
    assert found.sources["provider.timeout"] == f"file {user}"
    assert "provider.size" not in found.sources  # a default
    (cwd / "imgsave.toml").write_text('model = "cwd"\n')
    found = load_sourced(environ={}, cwd=cwd, user_file=user)
    assert (found.settings.model, found.settings.provider.timeout) == ("cwd", 600.0), "one file"
    named = tmp_path / "named.toml"
    named.write_text('model = "named"\n')
    env = {"IMGSAVE_CONFIG": str(named), "IMGSAVE_STORE": "file:///srv/img"}
    found = load_sourced({"store_url": None, "ping_url": "https://hc.example/x"}, environ=env,
                         cwd=cwd, user_file=user)  # fmt: skip
    assert found.settings.model == "named"
    assert found.sources["store.url"] == "env IMGSAVE_STORE"
    assert found.sources["monitor.ping_url"] == "flag --ping"
    assert found.settings.monitor.ping_url in found.settings.secrets


def test_load_settings_takes_the_kinds_it_knows():
    acme = KindFacts("acme", None, "ACME_KEY", needs_model=False, has_jobs=False, has_batch=False)
    kinds = {"openai": FACTS["openai"], "acme": acme}
    s = load_settings(environ={"IMGSAVE_PROVIDER": "acme", "ACME_KEY": "k-123456789"}, kinds=kinds,
                      user_file=Path("/nonexistent"), cwd=Path("/nonexistent"))  # fmt: skip
    assert (s.provider.kind, s.api_key) == ("acme", "k-123456789")
    with pytest.raises(UsageError, match="use one of openai, acme"):
        load_settings(environ={"IMGSAVE_PROVIDER": "gemini"}, kinds=kinds, cwd=Path("/nonexistent"))
