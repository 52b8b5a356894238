"""token2wav on a tiny random checkpoint: layout, lengths, streaming == whole utterance.

Tolerances, and why:
- Streamed audio equals `synthesize()` bit for bit, whatever the bursts: tokens are cut into
  the same 25(+3)-token chunks either way, and every chunk runs the same arithmetic.
- Against the independent one-pass oracle (`flow.whole(full_context=False)`: block attention
  masks instead of caches, then HiFT on the whole mel) the mel agrees to 1e-5 and the audio
  to 1e-4 absolute (peaks are ~0.1). These are float32 rounding differences: the oracle
  reduces over masked full-length rows and runs convs on other lengths. A cache bug (a wrong
  relative position, a lost conv frame, noise from the wrong position, too little HiFT
  context) shows up as errors of 1e-2 and more (see `test_hift_stream_needs_its_context`).
- The reference's *offline* path (full attention, `full_context=True`) is a different
  computation from streaming (the reference streams chunk-causally too), so it is not compared
  sample by sample; with random weights the two are only loosely correlated.
- Output length is exact: 960 samples (40 ms at 24 kHz) per token, in every mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from voxgate.model.stepaudio2.token2wav import StreamClosed, Token2Wav, Voice
from voxgate.model.stepaudio2.token2wav.config import (
    FlowConfig,
    dump_flow_config,
    parse_flow_config,
)
from voxgate.model.stepaudio2.token2wav.flow import CausalMaskedDiffWithXvec
from voxgate.model.stepaudio2.token2wav.hift import HiFTConfig, HiFTGenerator
from voxgate.model.stepaudio2.token2wav.streaming import HiftStream
from voxgate.model.stepaudio2.token2wav.tiny import TINY_FLOW, write_tiny_token2wav
from voxgate.model.stepaudio2.token2wav.voice import kaldi_fbank, prompt_mel, whisper_log_mel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLES_PER_TOKEN = 960
VOCAB = 6561


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_token2wav(tmp_path_factory.mktemp("tiny_token2wav"), seed=0)


@pytest.fixture(scope="module")
def t2w(model_dir: Path) -> Token2Wav:
    return Token2Wav.load(model_dir)


def tokens(n: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, VOCAB, n).tolist()


def push_in_bursts(
    t2w: Token2Wav, ids: list[int], bursts: list[int], voice: Voice | None = None
) -> list[np.ndarray]:
    stream, pieces, i = t2w.stream(voice or t2w.voice("default")), [], 0
    for size in bursts:
        pieces.append(stream.push(ids[i : i + size]))
        i += size
    pieces.append(stream.push(ids[i:]))
    pieces.append(stream.finish())
    return pieces


# --- layout: flow.yaml, key inventory, weight-norm styles -----------------------------------

PUBLISHED_STYLE_YAML = """\
# the published token2wav/flow.yaml layout (HyperPyYAML)
spk_dim: 192
flow: !new:cosyvoice2.flow.flow.CausalMaskedDiffWithXvec
    input_size: 512
    output_size: 80
    spk_embed_dim: !ref <spk_dim>
    output_type: 'mel'
    vocab_size: 6561
    encoder: !new:cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2
        input_size: 512
        output_size: 512
        input_layer: 'linear'
        pre_lookahead_len: 3
        num_blocks: 6
        num_up_blocks: 4
        up_stride: 2
        up_scale_factor: 2
        attention_heads: 8
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        key_bias: true
        linear_units: 2048
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: true
    decoder: !new:cosyvoice2.flow.flow_matching.CausalConditionalCFM
        inference_cfg_rate: 0.7
        estimator: !new:cosyvoice2.flow.decoder_dit.DiT
            in_channels: 320
            out_channels: 80
            mlp_ratio: 4.0
            depth: 16
            num_heads: 8
            head_dim: 64
            hidden_size: 512
"""


def test_flow_yaml_in_the_published_style_gives_the_published_hyperparameters() -> None:
    assert parse_flow_config(PUBLISHED_STYLE_YAML) == FlowConfig()
    assert parse_flow_config(dump_flow_config(TINY_FLOW)) == TINY_FLOW
    assert parse_flow_config(dump_flow_config(FlowConfig())) == FlowConfig()


def test_flow_yaml_with_an_architecture_we_do_not_build_is_refused() -> None:
    with pytest.raises(ValueError, match="selfattention_layer_type"):
        parse_flow_config(PUBLISHED_STYLE_YAML.replace("'rel_selfattn'", "'selfattn'"))
    with pytest.raises(ValueError, match="CausalConditionalCFM"):
        parse_flow_config(PUBLISHED_STYLE_YAML.replace("flow_matching.Causal", "flow_matching.X"))
    with pytest.raises(ValueError, match="unsupported HyperPyYAML tag"):
        parse_flow_config(PUBLISHED_STYLE_YAML.replace("!ref <spk_dim>", "!apply:int [192]"))


def published_flow_inventory() -> dict[str, tuple[int, ...]]:
    """flow.pt of Step-Audio-2-mini (research notes, section 5.3): 605 tensors."""
    d, ff, heads = 512, 2048, 8
    keys: dict[str, tuple[int, ...]] = {
        "input_embedding.weight": (6561, d),
        "spk_embed_affine_layer.weight": (80, 192),
        "spk_embed_affine_layer.bias": (80,),
        "encoder_proj.weight": (80, d),
        "encoder_proj.bias": (80,),
        "encoder.pre_lookahead_layer.conv1.weight": (d, d, 4),
        "encoder.pre_lookahead_layer.conv1.bias": (d,),
        "encoder.pre_lookahead_layer.conv2.weight": (d, d, 3),
        "encoder.pre_lookahead_layer.conv2.bias": (d,),
        "encoder.up_layer.conv.weight": (d, d, 5),
        "encoder.up_layer.conv.bias": (d,),
        "encoder.after_norm.weight": (d,),
        "encoder.after_norm.bias": (d,),
    }
    for embed in ("embed", "up_embed"):
        keys |= {f"encoder.{embed}.out.0.weight": (d, d), f"encoder.{embed}.out.0.bias": (d,)}
        keys |= {f"encoder.{embed}.out.1.weight": (d,), f"encoder.{embed}.out.1.bias": (d,)}
    for stack, count in (("encoders", 6), ("up_encoders", 4)):
        for i in range(count):
            p = f"encoder.{stack}.{i}."
            for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
                keys |= {f"{p}self_attn.{name}.weight": (d, d), f"{p}self_attn.{name}.bias": (d,)}
            keys[f"{p}self_attn.linear_pos.weight"] = (d, d)
            keys[f"{p}self_attn.pos_bias_u"] = (heads, 64)
            keys[f"{p}self_attn.pos_bias_v"] = (heads, 64)
            keys |= {f"{p}feed_forward.w_1.weight": (ff, d), f"{p}feed_forward.w_1.bias": (ff,)}
            keys |= {f"{p}feed_forward.w_2.weight": (d, ff), f"{p}feed_forward.w_2.bias": (d,)}
            for norm in ("norm_mha", "norm_ff"):
                keys |= {f"{p}{norm}.weight": (d,), f"{p}{norm}.bias": (d,)}
    e = "decoder.estimator."
    keys |= {
        f"{e}t_embedder.mlp.0.weight": (d, 256),
        f"{e}t_embedder.mlp.0.bias": (d,),
        f"{e}t_embedder.mlp.2.weight": (d, d),
        f"{e}t_embedder.mlp.2.bias": (d,),
        f"{e}in_proj.weight": (d, 320),
        f"{e}in_proj.bias": (d,),
        f"{e}final_layer.adaLN_modulation.1.weight": (2 * d, d),
        f"{e}final_layer.adaLN_modulation.1.bias": (2 * d,),
        f"{e}final_layer.linear.weight": (80, d),
        f"{e}final_layer.linear.bias": (80,),
    }
    for i in range(16):
        p = f"{e}blocks.{i}."
        for name in ("to_q", "to_k", "to_v", "proj"):
            keys |= {f"{p}attn.{name}.weight": (d, d), f"{p}attn.{name}.bias": (d,)}
        for name in ("q_norm", "k_norm"):
            keys |= {f"{p}attn.{name}.weight": (64,), f"{p}attn.{name}.bias": (64,)}
        keys |= {f"{p}mlp.fc1.weight": (ff, d), f"{p}mlp.fc1.bias": (ff,)}
        keys |= {f"{p}mlp.fc2.weight": (d, ff), f"{p}mlp.fc2.bias": (d,)}
        for j, shape in ((1, (d, d, 3)), (3, (d,)), (6, (d, d, 3))):
            keys |= {f"{p}conv.block.{j}.weight": shape, f"{p}conv.block.{j}.bias": (d,)}
        keys |= {
            f"{p}adaLN_modulation.1.weight": (9 * d, d),
            f"{p}adaLN_modulation.1.bias": (9 * d,),
        }
    return keys


def published_hift_inventory() -> dict[str, tuple[int, ...]]:
    """hift.pt (research notes, section 5.4), weight norm as `parametrizations.weight.*`."""
    keys: dict[str, tuple[int, ...]] = {
        "m_source.l_linear.weight": (1, 9),
        "m_source.l_linear.bias": (1,),
        "f0_predictor.classifier.weight": (1, 512),
        "f0_predictor.classifier.bias": (1,),
    }

    def wn(prefix: str, weight: tuple[int, ...], out: int) -> None:
        keys[f"{prefix}.parametrizations.weight.original0"] = (weight[0], 1, 1)
        keys[f"{prefix}.parametrizations.weight.original1"] = weight
        keys[f"{prefix}.bias"] = (out,)

    def resblock(prefix: str, ch: int, kernel: int) -> None:
        for j in range(3):
            wn(f"{prefix}.convs1.{j}", (ch, ch, kernel), ch)
            wn(f"{prefix}.convs2.{j}", (ch, ch, kernel), ch)
            keys[f"{prefix}.activations1.{j}.alpha"] = (ch,)
            keys[f"{prefix}.activations2.{j}.alpha"] = (ch,)

    for i in range(5):
        wn(f"f0_predictor.condnet.{2 * i}", (512, 80 if i == 0 else 512, 3), 512)
    wn("conv_pre", (512, 80, 7), 512)
    for i, (kernel, down_kernel, src_kernel) in enumerate(((16, 30, 7), (11, 6, 7), (7, 1, 11))):
        ch_in, ch = 512 >> i, 512 >> (i + 1)
        wn(f"ups.{i}", (ch_in, ch, kernel), ch)  # ConvTranspose1d: (in, out, k), norm over in
        keys[f"source_downs.{i}.weight"] = (ch, 18, down_kernel)
        keys[f"source_downs.{i}.bias"] = (ch,)
        resblock(f"source_resblocks.{i}", ch, src_kernel)
        for j, res_kernel in enumerate((3, 7, 11)):
            resblock(f"resblocks.{3 * i + j}", ch, res_kernel)
    wn("conv_post", (18, 64, 7), 18)
    return keys


def test_full_size_modules_have_the_published_weight_names_and_shapes() -> None:
    with torch.device("meta"):
        flow = CausalMaskedDiffWithXvec(FlowConfig())
        hift = HiFTGenerator(HiFTConfig())
    flow_keys = {k: tuple(v.shape) for k, v in flow.state_dict().items()}
    hift_keys = {k: tuple(v.shape) for k, v in hift.state_dict().items()}
    assert flow_keys == published_flow_inventory()
    assert len(flow_keys) == 605
    assert hift_keys == published_hift_inventory()
    assert len(hift_keys) == 328


def test_hift_loads_both_weight_norm_key_styles(model_dir: Path, t2w: Token2Wav) -> None:
    folder = model_dir / "token2wav"
    state = torch.load(folder / "hift.pt", weights_only=True)
    old_style = {}
    for key, value in state.items():  # torch.nn.utils.weight_norm names, `generator.` prefix
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        old_style[f"generator.{key}"] = value
    assert any(k.endswith(".weight_g") for k in old_style)
    other = model_dir.parent / "old_style_hift"
    (other / "token2wav").mkdir(parents=True)
    for name in ("flow.yaml", "flow.pt"):
        (other / "token2wav" / name).write_bytes((folder / name).read_bytes())
    torch.save(old_style, other / "token2wav" / "hift.pt")
    mel = torch.randn(1, 80, 30, generator=torch.Generator().manual_seed(0)) - 5
    with torch.inference_mode():
        expected = t2w.hift(mel)
        assert torch.equal(Token2Wav.load(other).hift(mel), expected)


# --- lengths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 27, 28, 29, 60])
def test_audio_length_is_960_samples_per_token(t2w: Token2Wav, n: int) -> None:
    voice = t2w.voice("default")
    audio = t2w.synthesize(tokens(n), voice)
    assert audio.dtype == np.float32 and audio.shape == (n * SAMPLES_PER_TOKEN,)
    assert np.isfinite(audio).all() and 0 < np.abs(audio).max() < 0.99  # audible, not clipped
    if n in (3, 60):
        full = t2w.synthesize(tokens(n), voice, full_context=True)
        assert full.shape == (n * SAMPLES_PER_TOKEN,)


def test_no_tokens_no_audio(t2w: Token2Wav) -> None:
    voice = t2w.voice("default")
    assert t2w.synthesize([], voice).shape == (0,)
    assert t2w.synthesize([], voice, full_context=True).shape == (0,)
    assert t2w.stream(voice).finish().shape == (0,)


# --- streaming == whole utterance -------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "bursts"),
    [
        (20, [1, 5, 14]),  # fewer than 25 + 3: one chunk, at finish
        (53, [28, 1, 2, 22]),  # two chunks; the second push completes the first's lookahead
        (131, [7, 40, 1, 1, 33, 3, 30]),  # five chunks; the DiT cache window (100) cuts in
    ],
)
def test_streamed_audio_equals_the_whole_utterance(
    t2w: Token2Wav, n: int, bursts: list[int]
) -> None:
    ids = tokens(n, seed=n)
    whole = t2w.synthesize(ids, t2w.voice("default"))
    pieces = push_in_bursts(t2w, ids, bursts)
    assert np.array_equal(np.concatenate(pieces), whole)
    # audio leaves as chunks complete, not all at the end
    assert (sum(len(p) for p in pieces[:-1]) > 0) == (n >= 28)
    assert all(len(p) % 480 == 0 for p in pieces)


@pytest.mark.parametrize(("n", "window"), [(53, 100), (131, 100), (131, None)])
def test_streaming_matches_a_one_pass_chunk_causal_oracle(
    model_dir: Path, t2w: Token2Wav, n: int, window: int | None
) -> None:
    """The caches (conformer KV + convs, DiT KV per ODE step + convs, HiFT context and phase)
    against one pass over the whole utterance with block attention masks."""
    t2w = Token2Wav(t2w.flow, t2w.hift, model_dir / "voices", dit_window=window)
    voice, ids = t2w.voice("default"), tokens(n, seed=7)
    stream = t2w.stream(voice)
    streamed = np.concatenate([stream.push(ids), stream.finish()])
    flow = t2w.flow
    prompt = [
        torch.from_numpy(x)
        for x in (voice.prompt_tokens, voice.prompt_mel, voice.speaker_embedding)
    ]
    with torch.inference_mode():
        mel = flow.whole(*prompt, torch.tensor(ids), full_context=False, window=window)
        state, mels, i = flow.setup(*prompt), [], 0
        while i < n:  # the stream's chunks, by hand, to compare mel too
            last = n - i < 28
            size = n - i if last else 25
            chunk_mel, state = flow.chunk(state, torch.tensor(ids[i : i + size + 3]), last, window)
            mels.append(chunk_mel)
            i += size
        oracle = t2w.hift(mel.T[None])[0].numpy()
    assert mel.shape == (2 * n, 80)
    np.testing.assert_allclose(torch.cat(mels).numpy(), mel.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(streamed, oracle, rtol=0, atol=1e-4)


def test_hift_stream_equals_whole_hift_for_any_cut(t2w: Token2Wav) -> None:
    mel = torch.randn(1, 80, 157, generator=torch.Generator().manual_seed(3)) - 5
    with torch.inference_mode():
        whole = t2w.hift(mel)[0]
        for cuts in ([157], [50, 50, 57], [1] * 30 + [127], [7, 93, 13, 44]):
            hift, out, start = HiftStream(t2w.hift), [], 0
            for k, size in enumerate(cuts):
                out.append(hift.push(mel[:, :, start : start + size], final=k == len(cuts) - 1))
                start += size
            np.testing.assert_allclose(torch.cat(out), whole, rtol=0, atol=1e-4)


def test_hift_stream_needs_its_context(t2w: Token2Wav) -> None:
    """The oracle tests would catch a too-small context: a few frames less is visibly wrong."""
    mel = torch.randn(1, 80, 150, generator=torch.Generator().manual_seed(4)) - 5
    with torch.inference_mode():
        whole = t2w.hift(mel)[0]
        hift = HiftStream(t2w.hift)
        hift.context -= 8
        out = [hift.push(mel[:, :, i : i + 50], final=i == 100) for i in (0, 50, 100)]
    assert (torch.cat(out) - whole).abs().max() > 1e-3


def test_output_is_deterministic(t2w: Token2Wav) -> None:
    voice, ids = t2w.voice("default"), tokens(30)
    np.testing.assert_array_equal(t2w.synthesize(ids, voice), t2w.synthesize(ids, voice))
    full = [t2w.synthesize(ids, voice, full_context=True) for _ in range(2)]
    np.testing.assert_array_equal(*full)


# --- API edges --------------------------------------------------------------------------------


def test_voices_and_unknown_voice(t2w: Token2Wav) -> None:
    assert t2w.voices() == ["default"]
    assert t2w.sample_rate == 24000
    with pytest.raises(KeyError):
        t2w.voice("nobody")


def test_bad_tokens_and_closed_streams_are_errors(t2w: Token2Wav) -> None:
    voice = t2w.voice("default")
    with pytest.raises(ValueError):
        t2w.synthesize([0, VOCAB], voice)
    stream = t2w.stream(voice)
    stream.push(tokens(5))
    stream.finish()
    with pytest.raises(StreamClosed):
        stream.push([1])
    with pytest.raises(StreamClosed):
        stream.finish()


def test_voice_round_trips_through_npz_and_is_validated(tmp_path: Path, t2w: Token2Wav) -> None:
    voice = t2w.voice("default")
    voice.save(tmp_path / "copy.npz")
    copy = Voice.load(tmp_path / "copy.npz")
    assert copy.name == "copy"
    np.testing.assert_array_equal(copy.prompt_mel, voice.prompt_mel)
    np.testing.assert_array_equal(copy.prompt_tokens, voice.prompt_tokens)
    with pytest.raises(ValueError, match="prompt mel"):
        Voice("bad", voice.prompt_tokens, voice.prompt_mel[:-1], voice.speaker_embedding)


def test_front_end_shapes() -> None:
    audio = np.random.default_rng(0).standard_normal(24000 * 2).astype(np.float32) * 0.1
    assert prompt_mel(audio).shape == (100, 80)  # 50 frames per second
    audio16 = audio[:32000]
    assert whisper_log_mel(audio16).shape == (128, 200)  # 100 frames per second
    assert kaldi_fbank(audio16).shape == (198, 80)  # 25 ms frames every 10 ms, edges snipped


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_checkpoint_voice_from_wav_and_streaming() -> None:
    """Real Step-Audio-2-mini: $VOXGATE_STEPAUDIO2_MODEL holds token2wav/ (weights and the two
    ONNX front ends); $VOXGATE_STEPAUDIO2_PROMPT_WAV is a voice prompt (the reference repo's
    assets/default_female.wav). Thresholds here are sanity bounds, not measured ones."""
    import soundfile as sf

    root = Path(os.environ.get("VOXGATE_STEPAUDIO2_MODEL", "/nonexistent"))
    wav = Path(os.environ.get("VOXGATE_STEPAUDIO2_PROMPT_WAV", "/nonexistent"))
    if not (root / "token2wav" / "campplus.onnx").is_file() or not wav.is_file():
        pytest.fail("set VOXGATE_STEPAUDIO2_MODEL and VOXGATE_STEPAUDIO2_PROMPT_WAV")
    audio, rate = sf.read(wav, dtype="float32")
    audio = audio if audio.ndim == 1 else audio.mean(axis=1)
    voice = Voice.from_wav("prompt", audio, rate, root / "token2wav")
    assert abs(len(voice.prompt_tokens) - 25 * len(audio) / rate) <= 2  # 25 tokens per second
    t2w = Token2Wav.load(root, device="cuda")
    # Re-synthesising the prompt's own tokens must give back something like the prompt's mel.
    ids = voice.prompt_tokens.tolist()
    with torch.inference_mode():
        prompt = t2w._prompt_tensors(voice)
        mel = t2w.flow.whole(*prompt, prompt[0], full_context=True).float().cpu().numpy()
    assert np.corrcoef(mel.ravel(), voice.prompt_mel.ravel())[0, 1] > 0.6
    whole = t2w.synthesize(ids[:60], voice)
    streamed = np.concatenate(push_in_bursts(t2w, ids[:60], [10, 20, 5], voice))
    assert whole.shape == (60 * SAMPLES_PER_TOKEN,)
    # Bit for bit on the CPU (test_streamed_audio_equals_the_whole_utterance); on CUDA the
    # kernels chosen by shape round differently: 6.8e-05 at most, measured on an H200 with the
    # full-size model (bench/vocoder_rtf.py's |stream-whole|). 1e-3 is -60 dBFS, inaudible.
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-3)
    assert 0.01 < np.abs(whole).max() < 0.99


def test_the_prompt_mel_fits_its_tokens_either_way() -> None:
    from voxgate.model.stepaudio2.token2wav.voice import fit_prompt_mel

    mel = np.arange(2 * 9 * 3, dtype=np.float32).reshape(2 * 9 + 0, 3)[:17]  # 17 frames
    # truncate: 8 tokens' worth (16 frames), nothing invented
    assert fit_prompt_mel(mel, 9, "truncate").shape == (16, 3)
    # reference (token2wav.py's F.pad(..., mode="replicate")): all 9 tokens, last frame repeated
    padded = fit_prompt_mel(mel, 9, "reference")
    assert padded.shape == (18, 3)
    assert (padded[-1] == mel[-1]).all() and (padded[:17] == mel).all()
    # and a mel longer than the tokens is cut to two frames per token
    assert fit_prompt_mel(mel, 5, "reference").shape == (10, 3)
