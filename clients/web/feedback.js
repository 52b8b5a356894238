// Feedback on answers, shown only where the server captures them: its session says so
// (`session.x_voxgate.feedback = {enabled, audio}`), and the page then tells the user what is
// recorded. Nothing of this appears on a server that does not capture answers.
//
// Thumbs: each finished answer gets thumbs up and down. A click sends `voxgate.feedback.create`
// (the answer's response id, rating +1 or -1); the thumb is marked once the server answers
// `voxgate.feedback.created`. An `error` answering the event is shown on the answer (and, by
// app.js, in the page's error line). A later click rates again (the server keeps the last).
//
// Compare: "Compare two answers" arms the next answer. The page's next response.create carries
// `response.x_voxgate.candidates = 2`: a typed message's, or for a spoken turn one the page
// sends itself when the server commits the turn (the server's own answer to turns is switched
// off meanwhile: turn_detection.create_response, restored once the pair is asked for).
// Candidate 0 is the turn's answer as usual (spoken, in the conversation). Candidate 1 comes
// after it, out of band (its response has no conversation): its events are taken here and
// never played as they come. Both are shown side by side; candidate 1's audio is kept from its
// deltas (at most MAX_CANDIDATE_AUDIO_S, and only for the latest pair) and played on demand.
// "Prefer this one" sends `voxgate.preference.create` once both `response.done` events have
// named the pair (their `x_voxgate.pair`).

const MAX_CANDIDATE_AUDIO_S = 120;
const MAX_PAIRS = 20; // compare views kept on the page (older ones are removed)
const MAX_PENDING = 64; // feedback events awaiting the server's answer
const PAIR_SIZE = 2;

const $ = (id) => document.getElementById(id);

export class Feedback {
  // stats: window.voxgateStats (this adds `feedback`); keep(list, value): a bounded push;
  // decode(base64 pcm16) -> Float32Array; bubbleOf(itemId) -> the answer's element;
  // sampleRate: the wire's.
  constructor({ stats, keep, decode, bubbleOf, sampleRate }) {
    this.keep = keep;
    this.decode = decode;
    this.bubbleOf = bubbleOf;
    this.sampleRate = sampleRate;
    this.conn = null; // the connection feedback is sent on
    this.enabled = false;
    this.pending = new Map(); // client event id -> what it asked for
    this.sent = 0;
    this.armed = false; // the next answer is a pair
    this.heldTurnDetection = null; // the turn_detection whose create_response the page turned off
    this.asked = null; // the pair asked for, until its candidate 1 has started
    this.claimed = new Map(); // candidate 1's response id -> its pair's view
    this.views = []; // compare views on the page, oldest first
    this.player = null; // an AudioContext for candidate audio, made on the first play
    this.playing = null;
    this.state = {
      enabled: false,
      audio: false,
      ratings: [], // {responseId, rating}, as the server confirmed them
      preferences: [], // {pairId, chosenResponseId}, as the server confirmed them
      pairs: [], // {pairId, responseIds, statuses, texts, audioSeconds}, once both are done
      candidatePlays: 0,
      errors: [], // codes of refused feedback events
    };
    stats.feedback = this.state;
    $("compare").addEventListener("click", () => (this.armed ? this.disarm() : this.arm()));
  }

  // --- the connection and its session

  attach(conn) {
    this.conn = conn;
  }

  detach() {
    this.conn = null;
    this.armed = false;
    this.heldTurnDetection = null;
    this.asked = null;
    this.showCompareButton();
  }

  configure(session) {
    const capture = session.x_voxgate?.feedback;
    this.enabled = capture?.enabled === true;
    this.state.enabled = this.enabled;
    this.state.audio = this.enabled && capture.audio === true;
    const notice = $("feedback-notice");
    notice.hidden = !this.enabled;
    notice.textContent = this.state.audio
      ? "This server records the assistant's answers (their text and audio), what was said " +
        "before them, and your ratings, to improve the assistant."
      : "This server records the assistant's answers (their text), what was said before " +
        "them, and your ratings, to improve the assistant.";
    if (!this.enabled) this.armed = false;
    this.showCompareButton();
  }

  send(event, pending) {
    if (!this.conn?.send(event)) {
      this.keep(this.state.errors, "not_connected");
      return false;
    }
    if (pending) {
      this.pending.set(event.event_id, pending);
      if (this.pending.size > MAX_PENDING) this.pending.delete(this.pending.keys().next().value);
    }
    return true;
  }

  nextEventId() {
    this.sent += 1;
    return `evt_page_feedback_${this.sent}`;
  }

  // --- server events: true when the event was this module's alone

  onEvent(event) {
    switch (event.type) {
      case "voxgate.feedback.created":
        this.rated(event.feedback);
        return true;
      case "voxgate.preference.created":
        this.preferred(event.pair);
        return true;
      case "error":
        this.refused(event.error);
        return false; // app.js shows it too
      case "response.created":
        return this.responseCreated(event.response);
      case "input_audio_buffer.committed":
        // A spoken turn the server leaves to the page (the pair was armed for it).
        if (this.armed && this.heldTurnDetection) this.requestAnswer();
        return false;
    }
    const view = this.claimed.get(event.response_id ?? event.response?.id);
    if (!view) {
      if (event.type === "response.done") this.answered(event);
      return false;
    }
    this.candidateEvent(view, event);
    return true;
  }

  // --- thumbs

  answered(done) {
    const response = done.response;
    const item = response.output?.find((i) => i.type === "message");
    const first = [this.asked, ...this.views].find(
      (view) => view?.candidates[0].responseId === response.id,
    );
    if (first) this.candidateDone(first, 0, done, item);
    if (!this.enabled || !item || response.status === "failed") return;
    const el = this.bubbleOf(item.id);
    if (!el || el.querySelector(".rating")) return;
    el.append(this.thumbs(response.id));
  }

  thumbs(responseId) {
    const group = document.createElement("div");
    group.className = "rating";
    group.dataset.responseId = responseId;
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", "rate this answer");
    for (const [rating, label, title] of [
      [1, "👍 Good", "a good answer"],
      [-1, "👎 Bad", "a bad answer"],
    ]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "thumb";
      button.dataset.rating = String(rating);
      button.textContent = label;
      button.title = title;
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", () => this.rate(responseId, rating));
      group.append(button);
    }
    return group;
  }

  rate(responseId, rating) {
    const group = document.querySelector(`.rating[data-response-id="${responseId}"]`);
    const event = {
      type: "voxgate.feedback.create",
      event_id: this.nextEventId(),
      response_id: responseId,
      rating,
    };
    if (this.send(event, { kind: "rating", responseId, rating })) {
      group.dataset.state = "sending";
      delete group.dataset.error;
    } else {
      group.dataset.error = "not connected";
    }
  }

  rated(feedback) {
    this.keep(this.state.ratings, { responseId: feedback.response_id, rating: feedback.rating });
    const group = document.querySelector(`.rating[data-response-id="${feedback.response_id}"]`);
    if (!group) return;
    group.dataset.state = "rated";
    for (const button of group.querySelectorAll(".thumb")) {
      const chosen = Number(button.dataset.rating) === feedback.rating;
      button.setAttribute("aria-pressed", String(chosen));
    }
  }

  refused(error) {
    const asked = this.pending.get(error.event_id);
    if (!asked) return;
    this.pending.delete(error.event_id);
    this.keep(this.state.errors, error.code);
    const text = `${error.code}: ${error.message}`;
    if (asked.kind === "rating") {
      const group = document.querySelector(`.rating[data-response-id="${asked.responseId}"]`);
      if (group) {
        group.dataset.state = "refused";
        group.dataset.error = text;
        group.title = text;
      }
    } else if (asked.kind === "preference") {
      asked.view.el.dataset.error = text;
    } else if (asked.kind === "pair" && this.asked === asked.view) {
      this.asked = null; // the pair was refused: the turn was not answered twice
      this.removeView(asked.view);
    }
  }

  // --- compare

  showCompareButton() {
    const button = $("compare");
    button.hidden = !this.enabled;
    button.disabled = !this.conn;
    button.setAttribute("aria-pressed", String(this.armed));
    button.textContent = this.armed ? "Next answer: two candidates" : "Compare two answers";
  }

  arm() {
    if (!this.enabled || !this.conn) return;
    this.armed = true;
    const td = this.conn.session?.audio?.input?.turn_detection;
    if (td && td.create_response !== false) {
      // The page asks for the next spoken turn's answer itself, as a pair.
      this.heldTurnDetection = td;
      this.conn.send(createResponseUpdate(td, false));
    }
    this.showCompareButton();
  }

  disarm() {
    this.armed = false;
    this.restoreTurnDetection();
    this.showCompareButton();
  }

  restoreTurnDetection() {
    if (this.heldTurnDetection) this.conn?.send(createResponseUpdate(this.heldTurnDetection, true));
    this.heldTurnDetection = null;
  }

  // Ask for the next answer (`response.create`): a pair when armed, which disarms; the server's
  // own answers to spoken turns are switched back on after the request is sent.
  requestAnswer() {
    if (!this.armed) {
      this.conn?.send({ type: "response.create" });
      return;
    }
    const view = { pairId: null, el: null, candidates: [{}, {}], audio: [], audioSamples: 0 };
    const event = {
      type: "response.create",
      event_id: this.nextEventId(),
      response: { x_voxgate: { candidates: PAIR_SIZE } },
    };
    this.armed = false;
    if (this.send(event, { kind: "pair", view })) this.asked = view;
    this.restoreTurnDetection();
    this.showCompareButton();
  }

  // Of a pair asked for, candidate 0 is the next response in the conversation, candidate 1 the
  // next out of band (the page asks for no other).
  responseCreated(response) {
    const view = this.asked;
    if (!view) return false;
    if (response.conversation_id !== null) {
      view.candidates[0].responseId ??= response.id;
      return false;
    }
    this.asked = null;
    this.claimed.set(response.id, view);
    view.candidates[1].responseId = response.id;
    this.showView(view);
    // Only the latest pair keeps its audio.
    for (const other of this.views) if (other !== view) this.releaseAudio(other);
    return true;
  }

  candidateEvent(view, event) {
    const candidate = view.candidates[1];
    switch (event.type) {
      case "response.output_audio_transcript.delta":
      case "response.output_text.delta":
        candidate.text = (candidate.text ?? "") + event.delta;
        this.showCandidate(view, 1, true);
        break;
      case "response.output_audio_transcript.done":
      case "response.output_text.done":
        candidate.text = (event.transcript ?? event.text ?? "").trim();
        this.showCandidate(view, 1, false);
        break;
      case "response.output_audio.delta": {
        if (view.audio === null) break; // released
        const samples = this.decode(event.delta);
        const room = MAX_CANDIDATE_AUDIO_S * this.sampleRate - view.audioSamples;
        if (room <= 0) break;
        const kept = samples.length > room ? samples.subarray(0, room) : samples;
        view.audio.push(kept);
        view.audioSamples += kept.length;
        break;
      }
      case "response.done":
        this.claimed.delete(event.response.id);
        this.candidateDone(view, 1, event);
        break;
    }
  }

  // A candidate's response.done: the pair's id is in its `x_voxgate.pair`.
  candidateDone(view, index, done, item) {
    const response = done.response;
    const candidate = view.candidates[index];
    candidate.status = response.status;
    candidate.responseId = response.id;
    view.pairId = done.x_voxgate?.pair?.id ?? view.pairId;
    if (index === 0) {
      const el = item && this.bubbleOf(item.id);
      candidate.text = el ? el.querySelector(".text").textContent : "";
    }
    this.showView(view);
    this.showCandidate(view, index, false);
    if (view.candidates.every((c) => c.status)) this.pairDone(view);
  }

  pairDone(view) {
    this.keep(this.state.pairs, {
      pairId: view.pairId,
      responseIds: view.candidates.map((c) => c.responseId),
      statuses: view.candidates.map((c) => c.status),
      texts: view.candidates.map((c) => c.text ?? ""),
      audioSeconds: view.audioSamples / this.sampleRate,
    });
    for (const button of view.el.querySelectorAll(".prefer")) button.disabled = !view.pairId;
    const play = view.el.querySelector(".play");
    play.disabled = !view.audio || view.audioSamples === 0;
  }

  showView(view) {
    if (view.el) return;
    const el = document.createElement("li");
    el.className = "turn compare";
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = "two answers: which is better?";
    const candidates = document.createElement("div");
    candidates.className = "candidates";
    candidates.append(...view.candidates.map((_, index) => this.candidateElement(view, index)));
    el.append(who, candidates);
    view.el = el;
    $("turns").append(el);
    el.scrollIntoView({ block: "end" });
    this.views.push(view);
    if (this.views.length > MAX_PAIRS) this.removeView(this.views[0]);
  }

  candidateElement(view, index) {
    const box = document.createElement("div");
    box.className = "candidate";
    box.dataset.candidate = String(index);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = index === 0 ? "Answer A (spoken above)" : "Answer B";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = "…";
    box.append(label, text);
    if (index === 1) {
      const play = document.createElement("button");
      play.type = "button";
      play.className = "play";
      play.textContent = "▶ Play";
      play.disabled = true;
      play.addEventListener("click", () => this.play(view));
      box.append(play);
    }
    const prefer = document.createElement("button");
    prefer.type = "button";
    prefer.className = "prefer";
    prefer.textContent = "Prefer this one";
    prefer.disabled = true;
    prefer.setAttribute("aria-pressed", "false");
    prefer.addEventListener("click", () => this.prefer(view, index));
    box.append(prefer);
    return box;
  }

  showCandidate(view, index, pending) {
    if (!view.el) return;
    const candidate = view.candidates[index];
    const box = view.el.querySelector(`.candidate[data-candidate="${index}"]`);
    box.dataset.responseId = candidate.responseId ?? "";
    if (candidate.status) box.dataset.status = candidate.status;
    box.classList.toggle("pending", pending);
    box.querySelector(".text").textContent = candidate.text || (pending ? "…" : "(nothing said)");
  }

  prefer(view, index) {
    const chosen = view.candidates[index].responseId;
    const event = {
      type: "voxgate.preference.create",
      event_id: this.nextEventId(),
      pair_id: view.pairId,
      chosen_response_id: chosen,
    };
    if (this.send(event, { kind: "preference", view })) delete view.el.dataset.error;
    else view.el.dataset.error = "not connected";
  }

  preferred(pair) {
    this.keep(this.state.preferences, {
      pairId: pair.id,
      chosenResponseId: pair.chosen_response_id,
    });
    const view = this.views.find((v) => v.pairId === pair.id);
    if (!view) return;
    view.el.dataset.chosen = pair.chosen_response_id;
    for (const box of view.el.querySelectorAll(".candidate")) {
      const chosen = box.dataset.responseId === pair.chosen_response_id;
      box.classList.toggle("preferred", chosen);
      box.querySelector(".prefer").setAttribute("aria-pressed", String(chosen));
    }
  }

  // --- candidate audio

  play(view) {
    if (!view.audio || view.audioSamples === 0) return;
    this.player ??= new AudioContext();
    this.playing?.stop();
    const buffer = this.player.createBuffer(1, view.audioSamples, this.sampleRate);
    let at = 0;
    for (const piece of view.audio) {
      buffer.copyToChannel(piece, 0, at);
      at += piece.length;
    }
    const source = this.player.createBufferSource();
    source.buffer = buffer;
    source.connect(this.player.destination);
    const button = view.el.querySelector(".play");
    button.dataset.playing = "true";
    source.onended = () => {
      delete button.dataset.playing;
      if (this.playing === source) this.playing = null;
    };
    this.player.resume();
    source.start();
    this.playing = source;
    this.state.candidatePlays += 1;
  }

  releaseAudio(view) {
    view.audio = null;
    view.audioSamples = 0;
    const play = view.el?.querySelector(".play");
    if (play) {
      play.disabled = true;
      play.title = "only the latest pair's audio is kept";
    }
  }

  removeView(view) {
    this.views = this.views.filter((v) => v !== view);
    for (const [id, claimed] of this.claimed) if (claimed === view) this.claimed.delete(id);
    view.el?.remove();
    view.audio = null;
  }
}

// A session.update that turns the server's own answer to a turn on or off, the rest of
// turn_detection as it is (semantic_vad's eagerness is sent again: leaving it out resets it).
function createResponseUpdate(td, on) {
  const turnDetection = { type: td.type, create_response: on };
  if (td.type === "semantic_vad") turnDetection.eagerness = td.eagerness;
  return {
    type: "session.update",
    session: { type: "realtime", audio: { input: { turn_detection: turnDetection } } },
  };
}
