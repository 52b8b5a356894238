"""The engine host: the one vLLM `AsyncLLM` of this process.

Every backbone generates through `EngineHost.stream()`, which streams `RequestOutputKind.DELTA`
outputs and aborts the engine request as soon as its consumer goes away (cancellation is the
only stop signal). Requests carry a priority: with `scheduling_policy="priority"` vLLM serves
lower numbers first, so live realtime turns (priority 0) go ahead of REST work.

vLLM's own exceptions stop here: a dead engine becomes `EngineUnavailable`, a request the
engine refuses `RequestRejected`, any other engine failure a `BackboneError`. The layers above
map those to the protocol's error shapes and never see a vLLM type.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, Field

from voxgate.model.engine_logs import CAST_ENV
from voxgate.model.engine_waiting import SPIN_ENV
from voxgate.model.types import BackboneError, EngineUnavailable, RequestRejected

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

REQUESTS_ABORTED = Counter(
    "voxgate_engine_requests_aborted",
    "Engine requests abandoned before they finished (barge-in, cancel, client gone); "
    "vLLM aborts each one, so no more tokens are spent on it.",
)


class EngineConfig(BaseModel):
    """vLLM engine settings (nested under `VOXGATE_ENGINE__*`)."""

    kv_cache_gib: float = Field(1.0, gt=0)
    """KV-cache size in GiB. vLLM-CPU's default memory check fails on small machines."""
    max_num_seqs: int = Field(8, ge=1)
    """Requests the engine runs at once; more wait (in priority order)."""
    max_model_len: int | None = Field(None, ge=256)
    """Longest prompt + answer in tokens. None: the backbone's context budget (cascade
    `context_tokens`, stepaudio2 `context_tokens`), which must fit inside it when set."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = None
    """None: the backbone's choice. The cascade runs bfloat16 on a CPU with AVX512-BF16 and
    float32 elsewhere (`smollm2.engine_dtype`: bf16 prefill is ~4x slower on AVX2-only CPUs);
    Step-Audio-2 runs "auto", the checkpoint's own dtype (bfloat16 for the published 8B
    weights, which do not fit in RAM as float32)."""
    enforce_eager: bool = True
    """Skip torch.compile: it starts faster and gains nothing for small models on CPU."""
    reader_spin_s: float | None = Field(None, ge=0, le=10)
    """Seconds vLLM's processes busy-wait for each other's next message before they sleep
    (model/engine_waiting.py). None: vLLM's own (1 s), right where each process has a core of
    its own (a GPU host); the cascade sets 0, as a spinning EngineCore takes the second of two
    CPU cores from Whisper and Piper."""
    cpu_threads_bind: str | None = None
    """VLLM_CPU_OMP_THREADS_BIND for the worker (e.g. "0-1"); None leaves vLLM's choice."""
    log_stats: bool = True
    """Keep vLLM's own Prometheus metrics (`vllm:*`) on."""
    scheduling_policy: Literal["priority", "fcfs"] = "priority"
    """"priority" serves live turns before REST work; "fcfs" exists to measure the difference."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs one engine splits each layer over (vLLM's tensor parallelism), for a model too big
    for one GPU; all on this node. The engine stays one per server process."""
    pipeline_parallel_size: int = Field(1, ge=1)
    """GPUs one engine splits the layers over in stages (vLLM's pipeline parallelism)."""

    def for_backbone(
        self, name: str, context_tokens: int, dtype: str, reader_spin_s: float | None = None
    ) -> EngineConfig:
        """These settings with the backbone's defaults filled in; a `max_model_len` set below
        the backbone's context budget is refused (every turn would fail at the engine)."""
        if self.max_model_len is not None and self.max_model_len < context_tokens:
            raise ValueError(
                f"engine.max_model_len ({self.max_model_len}) is below {name}.context_tokens "
                f"({context_tokens}): raise it or lower the context budget"
            )
        return self.model_copy(
            update={
                "max_model_len": self.max_model_len or context_tokens,
                "dtype": self.dtype or dtype,
                "reader_spin_s": (
                    self.reader_spin_s if self.reader_spin_s is not None else reader_spin_s
                ),
            }
        )


def _intended_cast(model_dir: Path, dtype: str | None) -> str | None:
    """`<checkpoint dtype>-><engine dtype>` when the engine runs the weights in another dtype
    than the checkpoint's (model/engine_logs.py quiets vLLM's per-tensor warnings for it)."""
    try:
        stored = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    saved = stored.get("dtype") or stored.get("torch_dtype")
    if not isinstance(saved, str) or dtype in (None, "auto", saved):
        return None
    return f"{saved}->{dtype}"


async def _built_off_the_loop(build: Callable[[Any], AsyncLLM], args: Any) -> AsyncLLM:
    """`build(args)` in a thread: building an `AsyncLLM` takes the engine's whole start (tens
    of seconds), during which the server's loop must keep answering (`/health`, `/ready`).
    vLLM starts its output handler lazily when it is built with no running loop. Cancelled
    meanwhile (a shutdown while starting), it waits for the build and shuts the engine down,
    so no EngineCore process outlives the start."""
    building = asyncio.ensure_future(asyncio.to_thread(build, args))
    try:
        return await asyncio.shield(building)
    except asyncio.CancelledError:
        try:
            (await building).shutdown()
        except Exception:  # the build itself failed: nothing to shut down, the cancel goes on
            log.warning("the engine's start failed while the server was stopping", exc_info=True)
        raise


class EngineHost:
    """Owns one `AsyncLLM`; build it with `EngineHost.start()`."""

    def __init__(self, engine: AsyncLLM, model_dir: Path) -> None:
        self._engine = engine
        self.model_dir = model_dir
        self._dead = False

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        model_dir: Path,
        config: EngineConfig,
        served_model_name: str = "voxgate",
        **engine_args: Any,
    ) -> AsyncIterator[EngineHost]:
        """Start the engine; `engine_args` are backbone-specific `AsyncEngineArgs` fields
        (e.g. `limit_mm_per_prompt`, `speculative_config`)."""
        if config.reader_spin_s is not None:
            # Read by the vLLM plugin in each process the engine starts (they inherit it).
            os.environ[SPIN_ENV] = str(config.reader_spin_s)
        else:
            os.environ.pop(SPIN_ENV, None)
        cast = _intended_cast(model_dir, config.dtype)
        if cast is not None:
            os.environ[CAST_ENV] = cast
        else:
            os.environ.pop(CAST_ENV, None)
        if config.cpu_threads_bind is not None:
            # Read by the engine's worker process, which inherits this environment.
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = config.cpu_threads_bind
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm import AsyncEngineArgs
        from vllm.config import StructuredOutputsConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        # Structured outputs (function calls) write compact JSON: a grammar that allows any
        # whitespace lets a weak model ramble in whitespace until its token budget runs out.
        engine_args.setdefault(
            "structured_outputs_config",
            StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
        )

        if config.max_model_len is None or config.dtype is None:
            raise ValueError("EngineConfig.for_backbone() fills max_model_len and dtype first")
        args = AsyncEngineArgs(
            model=str(model_dir),
            # vLLM labels its metrics with this name; the default is the model's local path.
            served_model_name=served_model_name,
            dtype=config.dtype,
            enforce_eager=config.enforce_eager,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            kv_cache_memory_bytes=int(config.kv_cache_gib * (1 << 30)),
            scheduling_policy=config.scheduling_policy,
            disable_log_stats=not config.log_stats,
            tensor_parallel_size=config.tensor_parallel_size,
            pipeline_parallel_size=config.pipeline_parallel_size,
            **engine_args,
        )
        if "speculative_config" in engine_args:
            expose_spec_decode_metrics()
        log.info("starting vLLM engine for %s", model_dir)
        engine = await _built_off_the_loop(AsyncLLM.from_engine_args, args)
        try:
            yield cls(engine, model_dir)
        finally:
            log.info("shutting down vLLM engine")
            engine.shutdown()
            del engine  # else AsyncLLM.__del__ runs again at interpreter exit and fails

    @property
    def is_healthy(self) -> bool:
        """False once the engine has died (its EngineCore process gone); it never recovers."""
        return not (self._dead or self._engine.errored)

    async def stream(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        priority: int = 0,
        multi_modal_data: dict[str, Any] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream delta outputs of one request; closing or cancelling the iterator aborts it."""
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.renderers.inputs.preprocess import parse_model_prompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        if not self.is_healthy:
            raise EngineUnavailable("the speech engine has stopped; this server is restarting")
        params.output_kind = RequestOutputKind.DELTA
        prompt: dict[str, Any] = {"prompt_token_ids": prompt_token_ids}
        if multi_modal_data:
            prompt["multi_modal_data"] = multi_modal_data
        finished = False
        try:
            # The renderer runs the multimodal processor (e.g. log-mel) off the event loop.
            parsed = parse_model_prompt(self._engine.model_config, prompt)
            (engine_input,) = await self._engine.renderer.render_cmpl_async([parsed])
            request = self._engine.generate(
                engine_input, params, request_id=request_id, priority=priority
            )
            # vLLM aborts the request when its generator is cancelled or closed; aclosing
            # makes closing this wrapper close vLLM's generator at once, not at garbage
            # collection.
            async with aclosing(request):
                async for output in request:
                    finished = output.finished
                    yield output
        except EngineDeadError as e:
            self._dead = True
            raise EngineUnavailable(
                "the speech engine has stopped; this server is restarting"
            ) from e
        except (VLLMClientError, GracefulHTTPError, ValueError) as e:
            raise RequestRejected(f"the engine refused the request: {e}") from e
        except EngineGenerateError as e:
            log.error("engine request %s failed", request_id, exc_info=e.__cause__ or e)
            raise BackboneError("the engine failed this request") from e
        finally:
            if not finished:
                REQUESTS_ABORTED.inc()


class SpecDecodeCollector:
    """`voxgate_spec_decode_*`: acceptance rate and tokens per step, from vLLM's own counters.

    Cumulative since the engine started (dashboards take rates of vLLM's counters instead).
    Reports nothing until the engine has drafted at all: no invented numbers.
    """

    _COUNTERS = (
        "vllm:spec_decode_num_drafts",
        "vllm:spec_decode_num_draft_tokens",
        "vllm:spec_decode_num_accepted_tokens",
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def _total(self, name: str) -> float:
        # Read the counter's own collector: asking the registry from inside its collect()
        # would recurse into this collector.
        collector = self._registry._names_to_collectors.get(name)
        if collector is None:
            return 0.0
        return sum(
            s.value for m in collector.collect() for s in m.samples if s.name.endswith("_total")
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        drafts, drafted, accepted = (self._total(n) for n in self._COUNTERS)
        if drafts == 0 or drafted == 0:
            return
        yield GaugeMetricFamily(
            "voxgate_spec_decode_acceptance_rate",
            "Share of drafted tokens the model accepted (speculative decoding, since start).",
            value=accepted / drafted,
        )
        yield GaugeMetricFamily(
            "voxgate_spec_decode_tokens_per_step",
            "Tokens produced per verification step: 1 + accepted drafts per draft (since start).",
            value=1 + accepted / drafts,
        )


_SPEC_COLLECTOR: SpecDecodeCollector | None = None


def expose_spec_decode_metrics() -> None:
    """Register the speculative-decoding gauges once per process."""
    global _SPEC_COLLECTOR
    if _SPEC_COLLECTOR is None:
        _SPEC_COLLECTOR = SpecDecodeCollector(REGISTRY)
        REGISTRY.register(_SPEC_COLLECTOR)
