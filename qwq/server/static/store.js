// Conversations and settings, kept in the browser's localStorage: nothing is stored on the
// server. A store that cannot be read starts empty; one that cannot be written (full,
// disabled) leaves the chat working for this page's lifetime.
"use strict";

const STORE_KEY = "qwq.conversations.v1";
const SETTINGS_KEY = "qwq.settings.v1";

function readJson(key) {
  try {
    return JSON.parse(localStorage.getItem(key));
  } catch (e) {
    return null;
  }
}

function writeJson(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (e) { /* full or disabled: keep going without saving */ }
}

const store = {
  load() {
    const data = readJson(STORE_KEY);
    if (data && Array.isArray(data.conversations)) return data;
    return { conversations: [], current: null };
  },
  save(data) { writeJson(STORE_KEY, data); },
  settings() { return readJson(SETTINGS_KEY) || {}; },
  saveSettings(settings) { writeJson(SETTINGS_KEY, settings); },
};

function newConversation() {
  return { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 8),
           title: "New chat", messages: [] };
}

function titleOf(conversation) {
  const first = conversation.messages.find((m) => m.role === "user");
  return first ? first.content.slice(0, 48) : "New chat";
}
