// Streaming an answer from /v1/chat/completions: server-sent events read as they come, the
// text and reasoning gathered with their timings (tokens/s, reasoning time), drawn at most
// once a frame (render() is chat.js's).
"use strict";

// Reads server-sent events; calls onEvent with each parsed `data:` payload.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        if (onEvent(JSON.parse(data)) === false) return;
      }
    }
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

// The answer as it streams: text, reasoning, timings, renders at most once a frame.
class Answer {
  constructor(div) {
    Object.assign(this, { div, content: "", reasoning: "", usage: null, finish: null,
                          reasoningChunks: 0, pending: false });
    this.start = performance.now();
    this.firstToken = this.firstContent = this.firstReasoning = null;
  }

  add(event) {
    if (event.usage) this.usage = event.usage;
    const now = performance.now();
    for (const choice of event.choices || []) {
      const delta = choice.delta || {};
      if (delta.reasoning_content) {
        this.reasoning += delta.reasoning_content;
        this.reasoningChunks += 1;
        this.firstReasoning = this.firstReasoning || now;
      }
      if (delta.content) {
        this.content += delta.content;
        this.firstContent = this.firstContent || now;
      }
      if (delta.reasoning_content || delta.content) this.firstToken = this.firstToken || now;
      if (choice.finish_reason) this.finish = choice.finish_reason;
    }
    if (!this.pending) {
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(true); });
    }
  }

  draw(live) { return render(this.div, this.reasoning, this.content, live); }

  stats() {
    const end = performance.now();
    const tokens = this.usage ? this.usage.completion_tokens : null;
    const seconds = this.firstToken ? (end - this.firstToken) / 1000 : 0;
    return { tokens, finish: this.finish,
             tokensPerSecond: tokens && seconds > 0 ? tokens / seconds : null,
             reasoningTokens: this.reasoningChunks,
             reasoningSeconds: this.firstReasoning
               ? ((this.firstContent || end) - this.firstReasoning) / 1000 : 0 };
  }
}

async function stream(answer, body, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body), signal });
  if (!response.ok) throw new Error(await errorText(response));
  await readEvents(response, (event) => {
    if (event.error) throw new Error(event.error.message);
    answer.add(event);
  });
}
