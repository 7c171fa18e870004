// The chat page: streams answers from /v1/chat/completions and renders them as they come
// (render.js), the reasoning folded apart from the answer with its token count and time;
// stop, regenerate, edit-and-resend, copy; conversations kept in this browser (store.js).
"use strict";

const $ = (id) => document.getElementById(id);
const chat = { data: store.load(), conv: null, controller: null, model: null };

// -- the conversation -------------------------------------------------------------------------
function current() {
  if (!chat.conv) {
    chat.conv = chat.data.conversations.find((c) => c.id === chat.data.current);
    if (!chat.conv) {
      chat.conv = newConversation();
      chat.data.conversations.unshift(chat.conv);
      chat.data.current = chat.conv.id;
    }
  }
  return chat.conv;
}

function saveAll() {
  const conv = current();
  conv.title = titleOf(conv);
  store.save(chat.data);
  listConversations();
}

// What the API gets: roles and the answers' content (earlier reasoning stays out).
function history() {
  return current().messages.map((m) => ({ role: m.role, content: m.content }));
}

// -- messages on the page -----------------------------------------------------------------------
function button(label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
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
    summary.innerHTML = 'Reasoning <span class="reasoning-meta"></span>';
    const body = document.createElement("div");
    body.className = "reasoning-text markdown";
    details.append(summary, body);
    div.appendChild(details);
  }
  const answer = document.createElement("div");
  answer.className = role === "assistant" ? "answer markdown" : "answer";
  answer.textContent = text;
  div.appendChild(answer);
  const tools = document.createElement("div");
  tools.className = "tools";
  const stats = document.createElement("span");
  stats.className = "stats muted";
  tools.appendChild(stats);
  tools.appendChild(button("Copy", "copy", () => copy(div)));
  if (role === "assistant") tools.appendChild(button("Regenerate", "regenerate",
                                                     () => regenerate(div)));
  else tools.appendChild(button("Edit", "edit", () => edit(div)));
  div.appendChild(tools);
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

// Reasoning from the server's split (reasoningText): a server that splits reasoning has split
// it by its one rule, so its content is all answer. Only a model the server does not split is
// folded here, from tags in the content.
function render(div, reasoningText, content, live = false) {
  const parts = reasoningText ? { reasoning: "", answer: content, thinking: !content }
                              : splitReasoning(content);
  const reasoning = (reasoningText + parts.reasoning).trim();
  const details = div.querySelector(".reasoning");
  details.hidden = !reasoning;
  const thinking = parts.thinking || (live && !!reasoning && !parts.answer.trim());
  if (div.dataset.thinking !== String(thinking)) {  // open while thinking, folded after;
    details.open = thinking;                        // in between, the reader decides
    div.dataset.thinking = String(thinking);
  }
  renderMarkdown(div.querySelector(".reasoning-text"), reasoning);
  renderMarkdown(div.querySelector(".answer"), parts.answer);
  return parts;
}

function showStats(div, stats) {
  if (!stats) return;
  const meta = div.querySelector(".reasoning-meta");
  if (meta && stats.reasoningTokens) {
    meta.textContent = `· ${stats.reasoningTokens} tokens · ${stats.reasoningSeconds.toFixed(1)} s`;
  }
  const parts = [];
  if (stats.tokens) parts.push(`${stats.tokens} tokens`);
  if (stats.tokensPerSecond) parts.push(`${stats.tokensPerSecond.toFixed(1)} tok/s`);
  if (stats.finish) parts.push(`finish: ${stats.finish}`);
  div.querySelector(".stats").textContent = parts.join(" · ");
}

function showConversation() {
  $("messages").textContent = "";
  current().messages.forEach((m) => {
    const div = addMessage(m.role, m.role === "user" ? m.content : "");
    if (m.role === "assistant") {
      render(div, m.reasoning || "", m.content);
      div.dataset.state = m.state || "done";
      showStats(div, m.stats);
    }
  });
}

function indexOf(div) {
  return Array.from($("messages").children).indexOf(div);
}

// -- asking the server --------------------------------------------------------------------------
function setBusy(busy, status) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("status").textContent = status;
}

function numberField(id, parse) {
  const value = parse($(id).value);
  return Number.isNaN(value) ? null : value;
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  const body = { messages: messages.concat(history()), stream: true,
                 stream_options: { include_usage: true } };
  if (chat.model) body.model = chat.model;
  const temperature = numberField("temperature", parseFloat);
  if (temperature !== null) body.temperature = temperature;
  const maxTokens = numberField("max-tokens", (v) => parseInt(v, 10));
  if (maxTokens > 0) body.max_tokens = maxTokens;
  const budget = numberField("thinking-budget", (v) => parseInt(v, 10));
  if (budget > 0) body.max_thinking_tokens = budget;
  if ($("loop-control").value) body.loop_control = $("loop-control").value;
  if ($("language").value) body.language = $("language").value;
  return body;
}

// Answers the conversation as it stands into a new assistant message.
async function generate() {
  const div = addMessage("assistant", "");
  div.dataset.state = "streaming";
  const controller = new AbortController();
  chat.controller = controller;
  setBusy(true, "generating…");
  const answer = new Answer(div);
  let state = "done";
  try {
    await stream(answer, requestBody(), controller.signal);
  } catch (e) {
    state = controller.signal.aborted ? "stopped" : "error";
    if (state === "error") {
      const err = document.createElement("div");
      err.className = "error";
      err.textContent = "error: " + e.message;
      div.appendChild(err);
    }
  }
  answer.draw(false);
  div.dataset.state = state;
  const stats = answer.stats();
  showStats(div, stats);
  current().messages.push({ role: "assistant", content: answer.content,
                            reasoning: answer.reasoning, state, stats });
  saveAll();
  chat.controller = null;
  setBusy(false, state + (stats.tokens ? ` (${stats.tokens} tokens)` : ""));
}

function send(text) {
  current().messages.push({ role: "user", content: text });
  addMessage("user", text);
  saveAll();
  return generate();
}

function stop() {
  if (chat.controller) chat.controller.abort();
}

// -- regenerate, edit, copy ---------------------------------------------------------------------
function truncate(index) {
  current().messages.length = index;
  const nodes = $("messages").children;
  while (nodes.length > index) nodes[nodes.length - 1].remove();
}

function regenerate(div) {
  if (chat.controller) return;
  truncate(indexOf(div));
  saveAll();
  generate();
}

function edit(div) {
  if (chat.controller || div.querySelector(".editor")) return;
  const index = indexOf(div);
  const editor = document.createElement("div");
  editor.className = "editor";
  const box = document.createElement("textarea");
  box.value = current().messages[index].content;
  box.rows = 3;
  const resend = button("Save & send", "resend", () => {
    const text = box.value.trim();
    if (!text) return;
    truncate(index);
    send(text);
  });
  editor.append(box, resend, button("Cancel", "cancel", () => editor.remove()));
  div.appendChild(editor);
  box.focus();
}

async function copy(div) {
  const m = current().messages[indexOf(div)];
  const b = div.querySelector("button.copy");
  try {
    await navigator.clipboard.writeText(m.content);
    b.textContent = "Copied";
  } catch (e) {
    b.textContent = "Copy failed";
  }
  setTimeout(() => { b.textContent = "Copy"; }, 1500);
}

// -- conversations and settings -----------------------------------------------------------------
function listConversations() {
  const list = $("conversations");
  list.textContent = "";
  for (const conv of chat.data.conversations) {
    const item = document.createElement("li");
    item.className = conv.id === chat.data.current ? "current" : "";
    const open = button(conv.title || "New chat", "open", () => switchTo(conv.id));
    item.append(open, button("×", "delete", () => remove(conv.id)));
    list.appendChild(item);
  }
}

function switchTo(id) {
  stop();
  chat.data.current = id;
  chat.conv = null;
  store.save(chat.data);
  listConversations();
  showConversation();
  setBusy(false, "ready");
}

function remove(id) {
  chat.data.conversations = chat.data.conversations.filter((c) => c.id !== id);
  if (chat.data.current === id) chat.data.current = null;
  chat.conv = null;
  saveAll();
  showConversation();
}

function startNew() {
  stop();
  const conv = newConversation();
  chat.data.conversations.unshift(conv);
  chat.data.current = conv.id;
  chat.conv = conv;
  saveAll();
  showConversation();
  setBusy(false, "ready");
}

const SETTINGS = ["system", "temperature", "max-tokens", "thinking-budget", "loop-control",
                  "language"];

function loadSettings() {
  const saved = store.settings();
  for (const id of SETTINGS) {
    if (saved[id] !== undefined) $(id).value = saved[id];
    $(id).addEventListener("change", () => {
      store.saveSettings(Object.fromEntries(SETTINGS.map((k) => [k, $(k).value])));
    });
  }
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
$("reset").addEventListener("click", startNew);
loadSettings();
showConversation();
listConversations();
loadModel();
