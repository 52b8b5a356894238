// voxgate browser client: the audio thread. Two AudioWorklet processors and their resampler.
//
// `voxgate-capture` takes the microphone at the AudioContext's rate, resamples it to the wire
// rate (24 kHz) and posts 20 ms frames of pcm16 with their level (RMS, dBFS) to the page.
//
// `voxgate-playback` is the jitter buffer: the page posts the answer's 24 kHz samples as they
// arrive; they are resampled to the context's rate into a ring buffer, and playback of a
// stream starts once PREBUFFER_MS of it are buffered (or its end has arrived), so uneven
// arrival does not become gaps. An underrun (the buffer ran dry before the stream's end) goes
// back to buffering. `pause` holds it silent (a possible interruption), `resume` goes on,
// `flush` empties it at once (barge-in) and says how much of the stream playing was heard
// (for `conversation.item.truncate`). The ring holds at most MAX_BUFFER_S of audio; what
// does not fit is dropped and counted (answers arrive faster than they play, but they are
// short: the bound is a guard, not a setting).

const WIRE_RATE = 24000;
const FRAME_MS = 20;
const PREBUFFER_MS = 80;
const MAX_BUFFER_S = 60;
const STATS_EVERY_S = 0.1;

// A streaming windowed-sinc resampler for any pair of rates. The kernel is a Blackman-windowed
// low-pass at 92% of the lower Nyquist frequency (so 48 kHz -> 24 kHz does not fold the upper
// band into speech), tabulated once; 16 zero crossings each side.
class Resampler {
  constructor(inRate, outRate, zeroCrossings = 16) {
    this.passthrough = inRate === outRate;
    this.step = inRate / outRate; // input samples per output sample
    const cutoff = 0.92 * Math.min(1, outRate / inRate); // fraction of the input Nyquist
    this.width = Math.ceil(zeroCrossings / cutoff); // kernel half-width, in input samples
    this.resolution = 512; // table points per input sample
    this.table = new Float32Array(this.width * this.resolution + 2);
    for (let i = 0; i < this.table.length; i++) {
      const d = i / this.resolution;
      if (d >= this.width) break;
      const x = cutoff * d;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const u = d / this.width;
      const window = 0.42 + 0.5 * Math.cos(Math.PI * u) + 0.08 * Math.cos(2 * Math.PI * u);
      this.table[i] = cutoff * sinc * window;
    }
    this.buffer = new Float32Array(4096);
    this.reset();
  }

  reset() {
    this.buffer.fill(0);
    this.length = this.width; // `width` samples of silence before the start
    this.t = this.width; // the next output's position, in input samples
  }

  _kernel(d) {
    const x = Math.abs(d) * this.resolution;
    const i = x | 0;
    if (i >= this.table.length - 1) return 0;
    return this.table[i] + (x - i) * (this.table[i + 1] - this.table[i]);
  }

  process(input) {
    if (this.passthrough) return Float32Array.from(input);
    if (this.length + input.length > this.buffer.length) {
      const grown = new Float32Array(2 * (this.length + input.length));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
    const count = Math.max(0, Math.ceil((this.length - this.width - this.t) / this.step));
    const out = new Float32Array(count);
    let n = 0;
    while (n < count && Math.floor(this.t) + this.width < this.length) {
      const c = Math.floor(this.t);
      let acc = 0;
      for (let k = c - this.width + 1; k <= c + this.width; k++) {
        acc += this.buffer[k] * this._kernel(this.t - k);
      }
      out[n++] = acc;
      this.t += this.step;
    }
    const drop = Math.floor(this.t) - this.width + 1;
    if (drop > 0) {
      this.buffer.copyWithin(0, drop, this.length);
      this.length -= drop;
      this.t -= drop;
    }
    return n === count ? out : out.subarray(0, n);
  }

  // The tail still waiting for look-ahead: the end of a stream.
  flush() {
    return this.process(new Float32Array(this.width + 1));
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, WIRE_RATE);
    this.frame = new Float32Array((WIRE_RATE * FRAME_MS) / 1000);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    let mono = channels[0];
    if (channels.length > 1) {
      mono = new Float32Array(mono.length);
      for (const channel of channels) {
        for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
      }
    }
    const samples = this.resampler.process(mono);
    let offset = 0;
    while (offset < samples.length) {
      const take = Math.min(this.frame.length - this.filled, samples.length - offset);
      this.frame.set(samples.subarray(offset, offset + take), this.filled);
      this.filled += take;
      offset += take;
      if (this.filled === this.frame.length) {
        this._post();
        this.filled = 0;
      }
    }
    return true;
  }

  _post() {
    const pcm = new Int16Array(this.frame.length);
    let energy = 0;
    for (let i = 0; i < this.frame.length; i++) {
      const s = Math.max(-1, Math.min(1, this.frame[i]));
      energy += s * s;
      pcm[i] = Math.round(s * 32767);
    }
    const rms = Math.sqrt(energy / this.frame.length);
    const rmsDb = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
    this.port.postMessage({ type: "frame", pcm: pcm.buffer, rmsDb }, [pcm.buffer]);
  }
}

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ring = new Float32Array(MAX_BUFFER_S * sampleRate);
    this.read = 0; // index of the next sample to play
    this.available = 0; // samples buffered
    this.segments = []; // [{stream, left}]: whose samples the ring holds, in order
    this.heard = { stream: null, samples: 0 }; // the stream playing now, and how much of it played
    this.prebuffer = Math.round((PREBUFFER_MS / 1000) * sampleRate);
    this.resampler = new Resampler(WIRE_RATE, sampleRate);
    this.stream = null; // id of the stream (response) being buffered
    this.ended = false; // its last samples have arrived
    // idle -> buffering -> playing -> (buffering on an underrun) -> idle; paused: held, silent
    this.state = "idle";
    this.startPending = false;
    this.played = 0;
    this.dropped = 0;
    this.underruns = 0;
    this.sinceStats = 0;
    this.port.onmessage = (event) => this._message(event.data);
  }

  _message(message) {
    switch (message.type) {
      case "audio":
        if (message.stream !== this.stream) {
          this.stream = message.stream;
          this.ended = false;
          this.resampler.reset();
          if (this.state === "idle") this.state = "buffering";
          this.startPending = true;
        }
        this._write(this.resampler.process(new Float32Array(message.samples)));
        break;
      case "end":
        if (message.stream === this.stream && !this.ended) {
          this._write(this.resampler.flush());
          this.ended = true;
        }
        break;
      case "pause": // the user may be interrupting: hold the rest until it is decided
        if (this.state !== "idle") this.state = "paused";
        break;
      case "resume":
        if (this.state === "paused") this.state = "buffering";
        break;
      case "flush": {
        const flushed = this.available / sampleRate;
        const heard = this.heard;
        this.available = 0;
        this.segments = [];
        this.heard = { stream: null, samples: 0 };
        this.state = "idle";
        this.stream = null;
        this.ended = false;
        this.resampler.reset();
        this.port.postMessage({
          type: "flushed",
          seconds: flushed,
          stream: heard.stream,
          heardSeconds: heard.samples / sampleRate,
        });
        break;
      }
    }
  }

  _write(samples) {
    const room = this.ring.length - this.available;
    const n = Math.min(room, samples.length);
    this.dropped += samples.length - n;
    if (n === 0) return;
    const write = (this.read + this.available) % this.ring.length;
    const first = Math.min(n, this.ring.length - write);
    this.ring.set(samples.subarray(0, first), write);
    this.ring.set(samples.subarray(first, n), 0);
    this.available += n;
    const last = this.segments[this.segments.length - 1];
    if (last && last.stream === this.stream) last.left += n;
    else this.segments.push({ stream: this.stream, left: n });
  }

  _play(out) {
    let n = 0;
    while (n < out.length && this.available > 0) {
      const segment = this.segments[0];
      if (this.heard.stream !== segment.stream) this.heard = { stream: segment.stream, samples: 0 };
      const take = Math.min(out.length - n, segment.left);
      for (let i = 0; i < take; i++) {
        out[n + i] = this.ring[this.read];
        this.read = (this.read + 1) % this.ring.length;
      }
      n += take;
      segment.left -= take;
      this.available -= take;
      this.heard.samples += take;
      if (segment.left === 0) this.segments.shift();
    }
    this.played += n;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    const ready = this.available >= this.prebuffer || (this.ended && this.available > 0);
    if (this.state === "buffering" && ready) {
      this.state = "playing";
      if (this.startPending) {
        this.startPending = false;
        this.port.postMessage({ type: "started", stream: this.stream, at: currentTime });
      }
    }
    if (this.state === "playing") {
      this._play(out);
      if (this.available === 0) {
        if (this.ended) {
          this.state = "idle";
          this.port.postMessage({ type: "drained", stream: this.stream });
        } else {
          this.state = "buffering";
          this.underruns += 1;
        }
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceStats += out.length;
    if (this.sinceStats >= STATS_EVERY_S * sampleRate) {
      this.sinceStats = 0;
      this.port.postMessage({
        type: "stats",
        state: this.state,
        bufferedSeconds: this.available / sampleRate,
        playedSeconds: this.played / sampleRate,
        droppedSeconds: this.dropped / sampleRate,
        underruns: this.underruns,
      });
    }
    return true;
  }
}

registerProcessor("voxgate-capture", CaptureProcessor);
registerProcessor("voxgate-playback", PlaybackProcessor);
