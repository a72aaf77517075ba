"""Settings fail at start-up, naming the variable, when values cannot work together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dsocr.settings import LimitSettings, Settings


def test_ngram_window_shorter_than_the_ngram_is_refused() -> None:
    with pytest.raises(ValidationError, match="DSOCR_ENGINE__NGRAM_WINDOW"):
        Settings(engine={"ngram_size": 40, "ngram_window": 20})


def test_ngram_of_one_token_is_refused() -> None:
    # An (n-1)-token prefix of length 0 would ban nothing: the rule needs n >= 2.
    with pytest.raises(ValidationError, match="ngram_size"):
        Settings(engine={"ngram_size": 1})


def test_engine_settings_come_from_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSOCR_ENGINE__KIND", "fake")
    monkeypatch.setenv("DSOCR_ENGINE__NGRAM_SIZE", "20")
    monkeypatch.setenv("DSOCR_ENGINE__NGRAM_WINDOW", "50")
    settings = Settings()
    assert (settings.engine.kind, settings.engine.ngram_size, settings.engine.ngram_window) == (
        "fake",
        20,
        50,
    )


def test_a_page_limit_over_the_image_limit_is_refused_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSOCR_LIMITS__MAX_IMAGE_PIXELS", "30000000")
    monkeypatch.setenv("DSOCR_LIMITS__MAX_PAGE_PIXELS", "35000000")
    with pytest.raises(ValidationError) as info:
        Settings()
    message = str(info.value)
    assert "DSOCR_LIMITS__MAX_PAGE_PIXELS (35,000,000)" in message
    assert "DSOCR_LIMITS__MAX_IMAGE_PIXELS (30,000,000)" in message


def test_an_unset_page_limit_follows_a_lower_image_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSOCR_LIMITS__MAX_IMAGE_PIXELS", "20000000")
    limits = Settings().limits
    assert (limits.max_image_pixels, limits.max_page_pixels) == (20_000_000, 20_000_000)


def test_page_limit_defaults_and_explicit_values_within_the_image_limit_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (Settings().limits.max_image_pixels, Settings().limits.max_page_pixels) == (60_000_000, 40_000_000)
    monkeypatch.setenv("DSOCR_LIMITS__MAX_PAGE_PIXELS", "60000000")
    assert Settings().limits.max_page_pixels == 60_000_000
    assert LimitSettings(max_image_pixels=10, max_page_pixels=10).max_page_pixels == 10


# ---- engine settings grouped by engine -------------------------------------------------------------


def test_each_engines_settings_come_from_its_group_of_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSOCR_ENGINE__VLLM__MAX_NUM_SEQS", "64")
    monkeypatch.setenv("DSOCR_ENGINE__VLLM__ARGS", '{"enforce_eager": true}')
    monkeypatch.setenv("DSOCR_ENGINE__CPU__THREADS", "3")
    monkeypatch.setenv("DSOCR_ENGINE__FAKE__DELAY_S", "0.5")
    engine = Settings().engine
    assert (engine.vllm.max_num_seqs, engine.vllm.args) == (64, {"enforce_eager": True})
    assert (engine.cpu.threads, engine.fake.delay_s) == (3, 0.5)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("DSOCR_ENGINE__GPU_MEMORY_UTILIZATION", "DSOCR_ENGINE__VLLM__GPU_MEMORY_UTILIZATION"),
        ("DSOCR_ENGINE__MAX_NUM_SEQS", "DSOCR_ENGINE__VLLM__MAX_NUM_SEQS"),
        ("DSOCR_ENGINE__MAX_NUM_BATCHED_TOKENS", "DSOCR_ENGINE__VLLM__MAX_NUM_BATCHED_TOKENS"),
        ("DSOCR_ENGINE__ENCODER_CACHE_STEPS", "DSOCR_ENGINE__VLLM__ENCODER_CACHE_STEPS"),
        ("DSOCR_ENGINE__ENGINE_CORE_THREADS", "DSOCR_ENGINE__VLLM__ENGINE_CORE_THREADS"),
        ("DSOCR_ENGINE__KV_CACHE_DTYPE", "DSOCR_ENGINE__VLLM__KV_CACHE_DTYPE"),
        ("DSOCR_ENGINE__PREPROCESS_WORKERS", "DSOCR_ENGINE__VLLM__PREPROCESS_WORKERS"),
        ("DSOCR_ENGINE__DEVICE_VIEWS", "DSOCR_ENGINE__VLLM__DEVICE_VIEWS"),
        ("DSOCR_ENGINE__LOAD_FORMAT", "DSOCR_ENGINE__VLLM__LOAD_FORMAT"),
        ("DSOCR_ENGINE__SELF_TEST", "DSOCR_ENGINE__VLLM__SELF_TEST"),
        ("DSOCR_ENGINE__NGRAM_DEVICE_HISTORY", "DSOCR_ENGINE__VLLM__NGRAM_DEVICE_HISTORY"),
        ("DSOCR_ENGINE__DATA_PARALLEL_SIZE", "DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE"),
        ("DSOCR_ENGINE__VLLM_ARGS", "DSOCR_ENGINE__VLLM__ARGS"),
        ("DSOCR_ENGINE__CPU_THREADS", "DSOCR_ENGINE__CPU__THREADS"),
        ("DSOCR_ENGINE__FAKE_DELAY_S", "DSOCR_ENGINE__FAKE__DELAY_S"),
    ],
)
def test_a_flat_engine_variable_that_moved_is_refused_naming_its_new_name(
    old: str, new: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Left in a deployment's environment, the old name must not be dropped quietly.
    monkeypatch.setenv(old, "1")
    with pytest.raises(ValidationError, match=f"{old} is now {new}"):
        Settings()


def test_a_moved_name_is_refused_from_python_too() -> None:
    moved = "DSOCR_ENGINE__FAKE_DELAY_S is now DSOCR_ENGINE__FAKE__DELAY_S"
    with pytest.raises(ValidationError, match=moved):
        Settings(engine={"kind": "fake", "fake_delay_s": 0.5})


@pytest.mark.parametrize(
    "variable",
    [
        "DSOCR_ENGINE__VLLM__MAX_NUM_SEQ",
        "DSOCR_ENGINE__NGRAM",
        "DSOCR_LIMITS__MAX_PAGES",
        # The vision encoder's compile is no setting any more, at either of its old places.
        "DSOCR_ENGINE__VLLM__COMPILE_ENCODER",
        "DSOCR_ENGINE__COMPILE_ENCODER",
    ],
)
def test_a_name_that_is_no_setting_is_refused(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, "4")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted") as info:
        Settings()
    assert info.value.errors()[0]["loc"] == tuple(variable.removeprefix("DSOCR_").lower().split("__"))


# ---- conflicting values stop start-up instead of one quietly winning --------------------------------


@pytest.mark.parametrize(
    ("argument", "variable"),
    [
        ("max_num_seqs", "DSOCR_ENGINE__VLLM__MAX_NUM_SEQS"),
        ("gpu_memory_utilization", "DSOCR_ENGINE__VLLM__GPU_MEMORY_UTILIZATION"),
        ("data_parallel_size", "DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE"),
        ("max_model_len", "DSOCR_ENGINE__MAX_MODEL_LEN"),
        ("served_model_name", "DSOCR_ENGINE__SERVED_MODEL_NAME"),
    ],
)
def test_vllm_args_may_not_set_what_has_its_own_setting(argument: str, variable: str) -> None:
    with pytest.raises(ValidationError, match=f"names {argument}, .* set {variable} instead"):
        Settings(engine={"vllm": {"args": {argument: 2}}})
    assert Settings(engine={"vllm": {"args": {"enforce_eager": True}}}).engine.vllm.args == {
        "enforce_eager": True
    }


@pytest.mark.parametrize("compilation", [{"cudagraph_mm_encoder": True}, '{"cudagraph_mm_encoder": true}'])
def test_device_views_asked_for_with_encoder_cuda_graphs_is_refused(compilation: object) -> None:
    args = {"compilation_config": compilation}
    with pytest.raises(ValidationError, match="DSOCR_ENGINE__VLLM__DEVICE_VIEWS=true cannot work"):
        Settings(engine={"vllm": {"device_views": True, "args": args}})
    # Unset, device views are simply off with the graphs (the documented default).
    assert Settings(engine={"vllm": {"args": args}}).engine.vllm.device_views is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("ngram_device_history", True), ("engine_core_threads", 2)],
)
def test_an_own_worker_extension_with_what_needs_dsocrs_is_refused(field: str, value: object) -> None:
    args = {"worker_extension_cls": "mine.Extension"}
    with pytest.raises(ValidationError, match=f"DSOCR_ENGINE__VLLM__{field.upper()} cannot work"):
        Settings(engine={"vllm": {field: value, "args": args}})
    # Left at their defaults they are documented to be off with an extension of one's own.
    assert Settings(engine={"vllm": {"args": args}}).engine.vllm.args == args


def test_a_retry_policy_that_could_not_run_is_refused() -> None:
    with pytest.raises(ValidationError, match="retry_temperatures"):
        Settings(engine={"retry_temperatures": []})
    with pytest.raises(ValidationError, match="retry_ngram_window"):
        Settings(engine={"retry_ngram_window": 10})
