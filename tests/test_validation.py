"""Unit tests (no Ray) for config parsing and request validation."""

import pytest
from pydantic import ValidationError

from serve_app.api.routes import validate_texts
from serve_app.config import AppConfig, LimitSettings, parse_app_args
from serve_app.api.errors import InvalidInput, TooLarge
from serve_app.api.schemas import AnalyzeRequest

LIMITS = LimitSettings(max_texts_per_request=3, max_text_chars=20)


def test_single_and_list_texts():
    assert validate_texts(AnalyzeRequest(text="good"), LIMITS, 512) == ["good"]
    assert validate_texts(AnalyzeRequest(text=["a", "b"]), LIMITS, 512) == ["a", "b"]


@pytest.mark.parametrize("body", [{}, {"text": None}, {"text": 5}, {"text": ["ok", 3]}, {"text": {"a": 1}}, {"txt": "x"}])
def test_schema_rejects_bad_shapes(body):
    with pytest.raises(ValidationError):
        AnalyzeRequest.model_validate(body)


@pytest.mark.parametrize(
    "text,error",
    [("", InvalidInput), ("   \n", InvalidInput), ([], InvalidInput), (["ok", " "], InvalidInput),
     (["a"] * 4, TooLarge), ("x" * 21, TooLarge), (["ok", "y" * 21], TooLarge)],
)
def test_limits(text, error):
    with pytest.raises(error):
        validate_texts(AnalyzeRequest(text=text), LIMITS, 512)


def test_limit_messages_name_the_problem():
    with pytest.raises(TooLarge, match=r"text\[1\]' has 21 characters; the limit is 20"):
        validate_texts(AnalyzeRequest(text=["ok", "y" * 21]), LIMITS, 512)


def test_request_token_bound_counts_each_text_up_to_the_window():
    """Each text counts min(characters, window): long texts cost a window, short ones their length."""
    limits = LimitSettings(max_texts_per_request=10, max_text_chars=100, max_request_tokens=40)
    assert validate_texts(AnalyzeRequest(text=["x" * 100] * 4), limits, 10) == ["x" * 100] * 4  # 4 x 10 = 40
    with pytest.raises(TooLarge, match="up to 50 tokens .* limit per request is 40"):
        validate_texts(AnalyzeRequest(text=["x" * 100] * 5), limits, 10)
    with pytest.raises(TooLarge):
        validate_texts(AnalyzeRequest(text=["y" * 41]), limits, 512)
    assert validate_texts(AnalyzeRequest(text=["y" * 20, "z" * 20]), limits, 512)


def test_app_config_rejects_unknown_keys():
    with pytest.raises(ValidationError, match="bakend"):
        parse_app_args({"bakend": "cpu"})
    with pytest.raises(ValidationError):
        parse_app_args({"limits": {"max_text_char": 5}})
    with pytest.raises(ValidationError):
        parse_app_args({"backend": "tpu"})


def test_dtype_is_a_cpu_backend_choice():
    assert parse_app_args({}).dtype == "float32"  # exact fp32 unless a config opts in (serve_config.yaml: auto)
    assert parse_app_args({"dtype": "bfloat16"}).dtype == "bfloat16"
    with pytest.raises(ValidationError, match="cpu backend only"):
        parse_app_args({"backend": "jit", "dtype": "bfloat16"})
    with pytest.raises(ValidationError, match="alternatives"):
        parse_app_args({"dtype": "bfloat16", "quantize": "int8"})
    with pytest.raises(ValidationError):
        parse_app_args({"dtype": "float16"})


def test_app_config_defaults_match_issue():
    config = parse_app_args({})
    assert config.model == "default" and config.backend == "cpu"
    assert config.limits.max_texts_per_request == 256 and config.limits.max_text_chars == 10_000


def test_quantize_only_on_cpu():
    with pytest.raises(ValidationError):
        AppConfig(backend="jit", quantize="int8")
