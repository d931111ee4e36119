// Renders /v1/openapi.json: every operation, its security, request body and each status it answers with, and
// sends a request with the key typed above. No third-party code; the page's CSP allows scripts from here only.
"use strict";
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
};
const resolve = (doc, schema) => {
  if (schema && schema.$ref) return resolve(doc, schema.$ref.split("/").slice(1).reduce((o, k) => o[k], doc));
  return schema;
};
const example = (doc, schema) => {
  schema = resolve(doc, schema) || {};
  if (schema.default !== undefined) return schema.default;
  if (schema.type === "object" || schema.properties) {
    const out = {};
    for (const name of schema.required || []) out[name] = example(doc, schema.properties[name]);
    return out;
  }
  if (schema.anyOf) return example(doc, schema.anyOf[0]);
  return {string: "", integer: 0, number: 0, boolean: false, array: []}[schema.type] ?? null;
};

async function send(method, path, body, out) {
  const headers = {"X-Request-Id": "docs-" + Math.random().toString(16).slice(2)};
  const key = document.getElementById("key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  const init = {method, headers};
  if (body !== null) { headers["Content-Type"] = "application/json"; init.body = body; }
  out.textContent = "…";
  try {
    const response = await fetch(path, init);
    const type = response.headers.get("content-type") || "";
    const shown = ["x-request-id", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"]
      .filter((h) => response.headers.has(h)).map((h) => `${h}: ${response.headers.get(h)}`).join("\n");
    const text = type.startsWith("audio/") ? `(${(await response.blob()).size} bytes of ${type})` : await response.text();
    out.textContent = `${response.status} ${response.statusText}\n${shown}\n\n${text}`;
  } catch (error) {
    out.textContent = String(error); out.className = "error";
  }
}

function operation(doc, path, method, op) {
  const secured = (op.security || []).length > 0;
  const section = el("section", {class: "op"},
    el("h2", {}, el("span", {class: "method"}, method.toUpperCase()), path),
    el("p", {}, op.summary || "", secured ? el("span", {class: "secured"}, "  · needs an API key") : ""));
  const rows = el("tbody");
  for (const [status, response] of Object.entries(op.responses || {})) {
    const headers = Object.keys(response.headers || {}).join(", ");
    rows.append(el("tr", {}, el("td", {}, status), el("td", {}, response.description || ""), el("td", {}, headers)));
  }
  section.append(el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, "meaning"),
    el("th", {}, "headers"))), rows));
  const json = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  let editor = null;
  if (json) {
    section.append(el("pre", {}, JSON.stringify(resolve(doc, json.schema), null, 1)));
    editor = el("textarea", {"aria-label": "request body"});
    editor.value = JSON.stringify(example(doc, json.schema), null, 1);
    section.append(editor);
  }
  if (!path.includes("{") && (method === "get" || json)) {
    const out = el("pre");
    const button = el("button", {}, "Send");
    button.addEventListener("click", () => send(method.toUpperCase(), path, editor ? editor.value : null, out));
    section.append(button, out);
  }
  return section;
}

(async () => {
  const doc = await (await fetch("/v1/openapi.json")).json();
  document.getElementById("description").textContent = doc.info.description || "";
  document.getElementById("version").textContent = doc.openapi;
  const list = document.getElementById("operations");
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) list.append(operation(doc, path, method, op));
  }
})();
