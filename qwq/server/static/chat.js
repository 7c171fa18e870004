// The chat page: streams answers from /v1/chat/completions, folds the reasoning part apart
// from the answer, stops a generation on request. No libraries, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const chat = { history: [], controller: null, model: null };

// Reasoning and answer: <think>...</think> (QwQ-32B, R1 distills), or for QwQ-32B-Preview,
// which writes no tags, everything before its "**Final Answer**" section.
function splitReasoning(text) {
  const open = text.indexOf("<think>");
  if (open >= 0) {
    const rest = text.slice(open + "<think>".length);
    const close = rest.indexOf("</think>");
    if (close < 0) return { reasoning: rest, answer: text.slice(0, open), thinking: true };
    return { reasoning: rest.slice(0, close),
             answer: (text.slice(0, open) + rest.slice(close + "</think>".length)).trimStart(),
             thinking: false };
  }
  const final = text.indexOf("**Final Answer**");
  if (final > 0) return { reasoning: text.slice(0, final).trim(), answer: text.slice(final),
                          thinking: false };
  return { reasoning: "", answer: text, thinking: false };
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  div.appendChild(label);
  if (role === "assistant") {
    const details = document.createElement("details");
    details.className = "reasoning";
    details.hidden = true;
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning";
    const body = document.createElement("div");
    body.className = "reasoning-text";
    details.append(summary, body);
    div.appendChild(details);
  }
  const answer = document.createElement("div");
  answer.className = "answer";
  answer.textContent = text;
  div.appendChild(answer);
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function render(div, reasoningText, content) {
  // A server that splits reasoning (reasoning_content) has split it by its one rule: its
  // content is all answer. Only a model the server does not split is folded here.
  const parts = reasoningText ? { reasoning: "", answer: content, thinking: !content }
                              : splitReasoning(content);
  const reasoning = (reasoningText + parts.reasoning).trim();
  const details = div.querySelector(".reasoning");
  details.hidden = !reasoning;
  details.open = parts.thinking;  // open while the model thinks, folded once it answers
  div.querySelector(".reasoning-text").textContent = reasoning;
  div.querySelector(".answer").textContent = parts.answer;
}

function setBusy(busy, status) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("status").textContent = status;
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  const body = { messages: messages.concat(chat.history), stream: true,
                 stream_options: { include_usage: true } };
  if (chat.model) body.model = chat.model;
  const temperature = parseFloat($("temperature").value);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

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

async function send(text) {
  chat.history.push({ role: "user", content: text });
  addMessage("user", text);
  const div = addMessage("assistant", "");
  div.dataset.state = "streaming";
  const controller = new AbortController();
  chat.controller = controller;
  setBusy(true, "generating…");
  let content = "", reasoning = "", state = "done", usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody()), signal: controller.signal });
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response, (event) => {
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      for (const choice of event.choices || []) {
        const delta = choice.delta || {};
        content += delta.content || "";
        reasoning += delta.reasoning_content || "";
      }
      render(div, reasoning, content);
    });
  } catch (e) {
    state = controller.signal.aborted ? "stopped" : "error";
    if (state === "error") {
      const err = document.createElement("div");
      err.className = "error";
      err.textContent = "error: " + e.message;
      div.appendChild(err);
    }
  }
  render(div, reasoning, content);
  div.dataset.state = state;
  chat.history.push({ role: "assistant", content: content });
  chat.controller = null;
  const tokens = usage ? ` (${usage.completion_tokens} tokens)` : "";
  setBusy(false, state + tokens);
}

function stop() {
  if (chat.controller) chat.controller.abort();
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models");
    if (!response.ok) return;
    const body = await response.json();
    chat.model = body.data[0].id;
    $("model").textContent = chat.model;
  } catch (e) { /* the page still works without the model name */ }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || chat.controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", stop);
$("reset").addEventListener("click", () => {
  stop();
  chat.history = [];
  $("messages").textContent = "";
  setBusy(false, "ready");
});
loadModel();
