// Model output to HTML: Markdown (marked), code highlighted (highlight.js), maths typeset
// (KaTeX). Model output is untrusted: the HTML goes through DOMPurify before it reaches the
// page (no scripts, no event handlers, no images that could call out, no styles), and KaTeX
// draws the maths afterwards into placeholder elements, from the TeX alone.
"use strict";

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

// $$..$$ and \[..\] (display), \(..\) and $..$ (inline; no space inside the dollars and no
// digit after the closing one, so "$5 and $6" stays text).
const MATH = /\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\]|\\\(([\s\S]+?)\\\)|\$(?=\S)((?:\\\$|[^$\n])+?)(?<=\S)\$(?!\d)/g;
// Code is left alone: fenced blocks (closed or still streaming) and inline code spans.
const CODE = /(```[\s\S]*?(?:```|$)|`[^`\n]+`)/;

// Maths out of the text before Markdown sees it (Markdown would eat its _ and *).
function protectMath(text) {
  const maths = [];
  const parts = text.split(CODE).map((part, i) => i % 2 ? part : part.replace(
    MATH, (whole, d1, d2, i1, i2) => {
      maths.push({ tex: (d1 ?? d2 ?? i1 ?? i2).trim(),
                   display: d1 !== undefined || d2 !== undefined });
      return `<span class="math-slot" data-math="${maths.length - 1}"></span>`;
    }));
  return { text: parts.join(""), maths };
}

const PURIFY = {
  FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "iframe",
                "object", "embed", "video", "audio", "picture", "svg", "math", "link", "meta"],
  FORBID_ATTR: ["style", "srcset", "action", "formaction"],
};

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function highlighted(code, lang) {
  const known = lang && hljs.getLanguage(lang);
  const html = known ? hljs.highlight(code, { language: lang, ignoreIllegals: true }).value
                     : hljs.highlightAuto(code).value;
  return `<pre><code class="hljs${lang ? " language-" + escapeHtml(lang) : ""}">${html}</code></pre>`;
}

marked.use({ gfm: true, breaks: false, renderer: {
  code({ text, lang }) { return highlighted(text, (lang || "").split(/\s/)[0]); },
} });

function typeset(root, maths) {
  for (const slot of root.querySelectorAll("span.math-slot")) {
    const math = maths[Number(slot.dataset.math)];
    if (!math) { slot.remove(); continue; }
    katex.render(math.tex, slot, { displayMode: math.display, throwOnError: false,
                                   trust: false, maxSize: 20, maxExpand: 200, strict: "ignore" });
    slot.classList.add(math.display ? "math-display" : "math-inline");
  }
}

// Markdown into element: sanitized nodes (a fragment, never re-parsed as HTML), then maths,
// then links that open apart.
function renderMarkdown(element, text) {
  const { text: safeText, maths } = protectMath(text);
  const fragment = DOMPurify.sanitize(marked.parse(safeText),
                                      { ...PURIFY, RETURN_DOM_FRAGMENT: true });
  for (const end of ["firstChild", "lastChild"]) {  // no stray newlines around the blocks
    while (fragment[end] && fragment[end].nodeType === Node.TEXT_NODE &&
           !fragment[end].textContent.trim()) fragment[end].remove();
  }
  element.replaceChildren(fragment);
  typeset(element, maths);
  for (const a of element.querySelectorAll("a[href]")) {
    a.target = "_blank";
    a.rel = "noopener noreferrer";
  }
}
