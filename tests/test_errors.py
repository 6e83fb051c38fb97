"""The error tree and the one classifier: each platform's table, a row per documented status or code.

Each table is read as a specification: a reply with this HTTP status and this platform code becomes this
error, whose one-line message says this. ``detail`` stands for what the platform said.
"""

from __future__ import annotations

import re

import pytest

import ingest.errors as errors
from ingest.errors import (
    AnyCase,
    AuthError,
    CapacityError,
    ConfigError,
    ErrorRules,
    IngestError,
    PermanentError,
    PermissionDenied,
    RateLimitedError,
    RemoteError,
    Rule,
    TransientError,
    VersionConflict,
    classify,
    connection_failed,
)
from ingest.platforms.keyue.api import KEYUE_ERRORS
from ingest.platforms.moi.client import MOI_ERRORS
from ingest.platforms.viking.api import VIKING_ERRORS
from ingest.platforms.viking.staging import BUCKET_CHECK_ERRORS, STAGING_ERRORS

Row = tuple[int, str | int | None, type[IngestError], str]


def classified(rules: ErrorRules, status: int, code: str | int | None, **context: str) -> IngestError:
    error = classify(rules, what="adding a.txt", status=status, code=code, detail="said", retry_after=7, **context)
    assert "\n" not in str(error)
    return error


def check(rules: ErrorRules, row: Row, **context: str) -> None:
    status, code, kind, words = row
    error = classified(rules, status, code, **context)
    assert type(error) is kind
    assert words in str(error)


# ----- MOI ---------------------------------------------------------------------------------------------------

MOI: list[Row] = [
    (401, "ErrUnauthorized", AuthError, "adding a.txt: MOI rejected the API key (ErrUnauthorized); check MOI_KEY"),
    (401, "ErrUnauthenticated", AuthError, "MOI rejected the API key (ErrUnauthenticated)"),
    (401, "unauthenticated", AuthError, "MOI rejected the API key (unauthenticated)"),
    (200, "Unauthorized", AuthError, "MOI rejected the API key (Unauthorized)"),
    (401, None, AuthError, "MOI rejected the API key (401); check MOI_KEY or --api-key"),
    (429, "ErrDynamicServiceConcurrencyLimit", RateLimitedError, "adding a.txt: rate limited by MOI (said)"),
    (200, "ErrDynamicServiceRateLimit", RateLimitedError, "rate limited by MOI (said)"),
    (429, None, RateLimitedError, "rate limited by MOI (said)"),
    (500, "ErrServer", TransientError, "adding a.txt: MOI server error (said)"),
    (200, "ErrServer", TransientError, "MOI server error (said)"),
    (200, "errserver", TransientError, "MOI server error (said)"),
    (500, "ErrInternal", TransientError, "MOI server error (said)"),
    (502, "ErrServiceUnavailable", TransientError, "MOI server error (said)"),
    (503, None, TransientError, "MOI server error (said)"),
    (200, None, TransientError, "adding a.txt: MOI answered without an envelope (said)"),
    (400, "ErrParamInvalid", PermanentError, "adding a.txt: MOI refused (said)"),
    (400, "ErrWorkspaceRequired", PermanentError, "MOI refused (said)"),
    (403, "ErrForbidden", PermissionDenied, "MOI refused: the API key has no permission for this (said)"),
    (404, "ErrNotFound", PermanentError, "MOI refused (said)"),
    (404, None, PermanentError, "MOI refused (said)"),
    (409, "ErrAlreadyExists", PermanentError, "MOI refused (said)"),
    (409, "ErrDuplicateName", PermanentError, "MOI refused (said)"),
]


# ----- VikingDB ----------------------------------------------------------------------------------------------

VIKING: list[Row] = [
    (401, 1000001, AuthError, "adding a.txt: VikingDB rejected the request signature (said); check VOLC_ACCESSKEY"),
    (401, None, AuthError, "VikingDB rejected the request signature (said)"),
    (403, 1000002, PermissionDenied, "adding a.txt: the access key (VOLC_ACCESSKEY or --access-key) has no permission"),
    (403, None, PermissionDenied, "has no permission on knowledge base kb1 (said)"),
    (429, 1000029, RateLimitedError, "adding a.txt: rate limited by VikingDB (said)"),
    (400, 1000029, RateLimitedError, "rate limited by VikingDB (said)"),
    (429, None, RateLimitedError, "rate limited by VikingDB (said)"),
    (400, 1001010, CapacityError, "adding a.txt: knowledge base kb1 is full (said); delete documents"),
    (400, 1000005, ConfigError, "knowledge base kb1 does not exist at http://viking (said); create it"),
    (500, 1000028, TransientError, "adding a.txt: VikingDB server error (said)"),
    (400, 1000028, TransientError, "VikingDB server error (said)"),
    (502, None, TransientError, "VikingDB server error (said)"),
    (200, None, TransientError, "adding a.txt: VikingDB answered without an envelope (said)"),
    (400, 1000003, PermanentError, "adding a.txt: VikingDB refused it (said)"),
    (400, 1001001, PermanentError, "VikingDB refused it (said)"),
    (404, None, PermanentError, "VikingDB refused it (said)"),
    (201, None, PermanentError, "VikingDB refused it (said)"),
]


def test_a_missing_knowledge_base_is_a_setting_not_an_operation() -> None:
    """1000005 names the knowledge base and the flags to check, not the file that happened to meet it."""
    error = classified(VIKING_ERRORS, 400, 1000005, kb="kb1", endpoint="http://viking")
    assert str(error).startswith("knowledge base kb1 does not exist")


# ----- Keyue -------------------------------------------------------------------------------------------------

KEYUE: list[Row] = [
    (401, 4002012, AuthError, "adding a.txt: Keyue rejected the credentials (said); check KEYUE_TOKEN"),
    (403, None, AuthError, "Keyue rejected the credentials (said)"),
    (429, 429, RateLimitedError, "adding a.txt: rate limited by Keyue (said)"),
    (200, 429, RateLimitedError, "rate limited by Keyue (said)"),
    (429, None, RateLimitedError, "rate limited by Keyue (said)"),
    (502, None, TransientError, "adding a.txt: Keyue server error (said)"),
    (200, 500, TransientError, "Keyue server error (said)"),
    (200, 503, TransientError, "Keyue server error (said)"),
    (200, None, TransientError, "adding a.txt: Keyue answered without an envelope (said)"),
    (200, 4000526, VersionConflict, "adding a.txt: Keyue refused (said)"),
    (200, 4002012, PermanentError, "adding a.txt: Keyue refused (said)"),
    (200, 4000178, PermanentError, "Keyue refused (said)"),
    (200, 4007283, PermanentError, "Keyue refused (said)"),
    (404, None, PermanentError, "Keyue refused (said)"),
]


# ----- the staging store (S3 error codes) --------------------------------------------------------------------

STAGING: list[Row] = [
    (403, "AccessDenied", AuthError, "adding a.txt: the staging store http://s3 refused the credentials (said)"),
    (403, "InvalidAccessKeyId", AuthError, "check the staging access key"),
    (403, "SignatureDoesNotMatch", AuthError, "refused the credentials (said)"),
    (403, "AllAccessDisabled", AuthError, "refused the credentials (said)"),
    (400, "InvalidToken", AuthError, "refused the credentials (said)"),
    (403, "403", AuthError, "refused the credentials (said)"),
    (404, "NoSuchBucket", ConfigError, "staging bucket b1 does not exist at http://s3; create it or fix"),
    (503, "SlowDown", RateLimitedError, "adding a.txt: the staging store http://s3 is throttling (said)"),
    (400, "Throttling", RateLimitedError, "is throttling (said)"),
    (400, "ThrottlingException", RateLimitedError, "is throttling (said)"),
    (400, "RequestLimitExceeded", RateLimitedError, "is throttling (said)"),
    (400, "TooManyRequests", RateLimitedError, "is throttling (said)"),
    (429, "429", RateLimitedError, "is throttling (said)"),
    (503, "503", RateLimitedError, "is throttling (said)"),
    (500, "InternalError", TransientError, "adding a.txt: the staging store http://s3 failed (said)"),
    (400, "RequestTimeout", TransientError, "failed (said)"),
    (400, "BadDigest", TransientError, "failed (said)"),
    (404, "NoSuchUpload", TransientError, "failed (said)"),
    (502, "502", TransientError, "failed (said)"),
    (400, "InvalidArgument", PermanentError, "adding a.txt: the staging store http://s3 refused it (said)"),
    (404, "404", PermanentError, "refused it (said)"),
    (200, "", PermanentError, "refused it (said)"),
]


def test_the_bucket_check_reads_a_bare_404_as_a_missing_bucket() -> None:
    """``head_bucket`` has no body to say NoSuchBucket: any 404 there means the bucket is missing. Elsewhere
    a 404 is about the object or the upload; every other row is the same in both tables."""
    check(BUCKET_CHECK_ERRORS, (404, "404", ConfigError, "staging bucket b1 does not exist"), endpoint="x", bucket="b1")
    for row in STAGING:
        if row[0] != 404:
            check(BUCKET_CHECK_ERRORS, row, endpoint="http://s3", bucket="b1")


# ----- each table, row by row -------------------------------------------------------------------------------

TABLES: list[tuple[ErrorRules, list[Row], dict[str, str]]] = [
    (MOI_ERRORS, MOI, {}),
    (VIKING_ERRORS, VIKING, {"kb": "kb1", "endpoint": "http://viking"}),
    (KEYUE_ERRORS, KEYUE, {}),
    (STAGING_ERRORS, STAGING, {"endpoint": "http://s3", "bucket": "b1"}),
]


@pytest.mark.parametrize(
    ("rules", "row", "context"),
    [
        pytest.param(rules, row, context, id=f"{rules.platform}-{row[0]}-{row[1]}")
        for rules, rows, context in TABLES
        for row in rows
    ],
)
def test_each_documented_status_and_code(rules: ErrorRules, row: Row, context: dict[str, str]) -> None:
    check(rules, row, **context)


# ----- the classifier itself ---------------------------------------------------------------------------------

RULES = ErrorRules(
    "P",
    rows=(
        Rule(AuthError, "{what}: P says no ({code_or_status})", status={401}, code={"auth"}),
        Rule(RateLimitedError, "{what}: P is busy ({detail})", status={429}, code=AnyCase("Busy")),
        Rule(ConfigError, "setting {setting} is wrong ({code})", code={"conf"}),
    ),
    otherwise=Rule(PermanentError, "{what}: P refused ({detail}, HTTP {status})"),
)


def test_the_first_row_whose_status_or_code_matches_wins() -> None:
    assert type(classify(RULES, what="op", status=401, code="busy", detail="d")) is AuthError
    assert type(classify(RULES, what="op", status=400, code="busy", detail="d")) is RateLimitedError
    assert type(classify(RULES, what="op", status=429, code="auth", detail="d")) is AuthError
    assert type(classify(RULES, what="op", status=400, code="other", detail="d")) is PermanentError


def test_codes_in_any_case() -> None:
    assert "BUSY" in AnyCase("Busy")
    assert "busy" in AnyCase("Busy")
    assert 1 not in AnyCase("1")
    assert None not in AnyCase("Busy")


def test_a_success_status_without_a_code_is_not_the_platforms_envelope() -> None:
    error = classify(RULES, what="op", status=204, code=None, detail="<html>", retry_after=3)
    assert type(error) is TransientError
    assert str(error) == "op: P answered without an envelope (<html>)"
    assert (error.status, error.code) == (204, None)
    with_code = classify(RULES, what="op", status=200, code="other", detail="d")
    assert type(with_code) is PermanentError


def test_remote_errors_carry_status_code_and_retry_after() -> None:
    limited = classify(RULES, what="op", status=429, code=None, detail="slow down", retry_after=3)
    assert isinstance(limited, RateLimitedError)
    assert (limited.status, limited.code, limited.retry_after) == (429, None, 3)
    assert limited.detail == str(limited) == "op: P is busy (slow down)"
    refused = classify(RULES, what="op", status=400, code=1234, detail="bad")
    assert isinstance(refused, PermanentError)
    assert (refused.status, refused.code) == (400, "1234")


def test_a_permanent_errors_detail_leaves_out_the_operation() -> None:
    """The failed file's record is the file's row: the operation would only repeat its name."""
    refused = classify(RULES, what="upload of a.txt", status=400, code="x", detail="bad name")
    assert isinstance(refused, RemoteError)
    assert str(refused) == "upload of a.txt: P refused (bad name, HTTP 400)"
    assert refused.detail == "P refused (bad name, HTTP 400)"


def test_config_errors_take_the_callers_context() -> None:
    error = classify(RULES, what="op", status=400, code="conf", detail="d", setting="--kb")
    assert type(error) is ConfigError
    assert str(error) == "setting --kb is wrong (conf)"
    assert str(classify(RULES, what="op", status=401, code=None, detail="d")) == "op: P says no (401)"


def test_connection_failures() -> None:
    error = connection_failed("upload of a.txt", "http://moi", "timed out")
    assert str(error) == "upload of a.txt: connection to http://moi failed (timed out)"
    assert error.detail == "connection to http://moi failed (timed out)"


# ----- the tree ----------------------------------------------------------------------------------------------


def test_the_drawn_tree_is_the_tree_that_exists() -> None:
    """Every class in the docstring's drawing exists under the parent drawn, and every error class is drawn."""
    doc = errors.__doc__ or ""
    drawn: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        found = re.match(r"^(\s*(?:[│ ]*[├└]── )?)([A-Z]\w+)\b", line)
        if found is None or (found.group(1).strip() == "" and found.group(2) != "IngestError"):
            continue
        depth, name = len(found.group(1)), found.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        drawn[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    defined = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, IngestError) and cls.__module__ == errors.__name__
    }
    assert set(drawn) == set(defined)
    for name, parent in drawn.items():
        bases = defined[name].__bases__
        assert bases == ((defined[parent],) if parent else (Exception,)), name


def test_retry_policy_is_the_errors_type() -> None:
    """Nothing says ``retryable``: a ``TransientError`` is retried, anything else is not."""
    assert not hasattr(IngestError("x"), "retryable")
    assert issubclass(RateLimitedError, TransientError)
    assert not issubclass(PermissionDenied, RemoteError)
    assert issubclass(PermissionDenied, AuthError)
    assert issubclass(VersionConflict, PermanentError)
    assert issubclass(CapacityError, PermanentError)
