// The gateway playground: vanilla JS, no dependencies, no build step.
// The key stays in sessionStorage; all server data goes into the page as text (never HTML).
// Protocol: docs/websocket.md (/ws/v1/chat).
"use strict";

(function () {
  const KEY_STORAGE = "gateway.playground.apiKey";
  const root = document.getElementById("playground");
  if (!root) return;
  const WS_PATH = root.dataset.wsPath;
  const MODELS_PATH = root.dataset.modelsPath;
  const $ = (id) => document.getElementById(id);

  const el = {
    keyForm: $("key-form"), key: $("api-key"), forget: $("key-forget"), keyStatus: $("key-status"),
    modeSingle: $("mode-single"), modeCompare: $("mode-compare"),
    modelA: $("model-a"), modelB: $("model-b"),
    strategy: $("gw-strategy"), task: $("gw-task"), preference: $("gw-preference"),
    maxTokens: $("max-tokens"), temperature: $("temperature"), system: $("system-prompt"),
    promptForm: $("prompt-form"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
    newChat: $("new-chat"), chatStatus: $("chat-status"),
  };

  let requestCounter = 0;

  function storedKey() {
    try { return sessionStorage.getItem(KEY_STORAGE) || ""; } catch (e) { return ""; }
  }
  function storeKey(value) {
    try {
      if (value) sessionStorage.setItem(KEY_STORAGE, value);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (e) { /* storage disabled: the key lives in this page only */ }
  }
  function say(target, text, isError) {
    target.textContent = text;
    target.classList.toggle("error", Boolean(isError));
  }
  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + WS_PATH;
  }
  function errorText(error) {
    if (!error) return "Unknown error";
    const code = error.code ? " (" + error.code + ")" : "";
    return (error.message || "Error") + code;
  }

  // -- one pane: one websocket, one conversation -----------------------------------------
  class Pane {
    constructor(node) {
      this.node = node;
      this.transcript = node.querySelector(".transcript");
      this.errorNode = node.querySelector(".pane-error");
      this.title = node.querySelector(".pane-title");
      this.facts = {};
      node.querySelectorAll("[data-fact]").forEach((dd) => { this.facts[dd.dataset.fact] = dd; });
      this.ws = null;
      this.ready = null;       // a promise of an authenticated socket
      this.history = [];       // the conversation sent with every request
      this.current = null;     // the request in flight
    }

    connect(key) {
      if (this.ws && this.ws.readyState <= WebSocket.OPEN && this.wsKey === key) return this.ready;
      this.close();
      this.wsKey = key;
      const ws = new WebSocket(wsUrl());
      this.ws = ws;
      this.ready = new Promise((resolve, reject) => {
        ws.addEventListener("open", () => ws.send(JSON.stringify({ type: "auth", api_key: key })));
        ws.addEventListener("message", (event) => {
          let msg;
          try { msg = JSON.parse(event.data); } catch (e) { return; }
          if (msg.type === "auth_ok") { resolve(ws); return; }
          if (msg.type === "error" && msg.id === null) { reject(new Error(errorText(msg.error))); return; }
          this.onMessage(msg);
        });
        ws.addEventListener("close", (event) => {
          reject(new Error("The connection closed (code " + event.code + ")"));
          if (this.ws === ws) { this.ws = null; this.ready = null; }
          if (this.current) this.fail("The connection closed before the answer ended (code " + event.code + ")");
        });
        ws.addEventListener("error", () => reject(new Error("Could not connect to " + WS_PATH)));
      });
      return this.ready;
    }

    close() {
      if (this.ws) { const ws = this.ws; this.ws = null; this.ready = null; ws.close(1000); }
    }

    reset() {
      this.history = [];
      this.transcript.replaceChildren();
      this.showError("");
      Object.values(this.facts).forEach((dd) => { dd.textContent = "–"; });
    }

    showError(text) {
      this.errorNode.textContent = text;
      this.errorNode.hidden = !text;
    }

    addTurn(role, text) {
      const item = document.createElement("div");
      item.className = "turn turn-" + role;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = role === "user" ? "You" : "Model";
      const body = document.createElement("div");
      body.className = "text";
      body.textContent = text;
      item.append(who, body);
      this.transcript.append(item);
      return body;
    }

    async send(key, model, prompt, options) {
      this.showError("");
      Object.values(this.facts).forEach((dd) => { dd.textContent = "–"; });
      this.facts.model.textContent = model;
      this.title.textContent = model;
      const messages = [];
      if (options.system) messages.push({ role: "system", content: options.system });
      const userTurn = { role: "user", content: prompt };
      messages.push(...this.history, userTurn);
      this.addTurn("user", prompt);
      const answer = this.addTurn("assistant", "");
      this.transcript.setAttribute("aria-busy", "true");
      requestCounter += 1;
      const id = "r" + requestCounter + "-" + this.node.id;
      this.current = { id, answer, text: "", userTurn, started: performance.now(), firstToken: null };
      const body = { type: "request", id, model, messages };
      if (options.maxTokens) body.max_tokens = options.maxTokens;
      if (options.temperature !== null) body.temperature = options.temperature;
      if (options.gateway) body.gateway = options.gateway;
      try {
        const ws = await this.connect(key);
        ws.send(JSON.stringify(body));
      } catch (e) {
        this.fail(e.message);
      }
      return new Promise((resolve) => { if (this.current) this.current.resolve = resolve; else resolve(); });
    }

    cancel() {
      if (this.current && this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ type: "cancel", id: this.current.id }));
      }
    }

    onMessage(msg) {
      const cur = this.current;
      if (!cur || msg.id !== cur.id) return;
      if (msg.type === "delta") {
        if (cur.firstToken === null) {
          cur.firstToken = performance.now();
          this.facts.ttft.textContent = Math.round(cur.firstToken - cur.started) + " ms";
        }
        if (msg.content) { cur.text += msg.content; cur.answer.textContent = cur.text; }
      } else if (msg.type === "done") {
        this.finish(msg);
      } else if (msg.type === "error") {
        this.fail(errorText(msg.error));
      }
    }

    finish(msg) {
      const cur = this.current;
      const elapsed = Math.round(performance.now() - cur.started);
      const usage = msg.usage || {};
      const set = (name, value) => {
        this.facts[name].textContent = value === undefined || value === null || value === "" ? "–" : String(value);
      };
      set("model", msg.model);
      set("provider", msg.provider);
      set("attempts", Array.isArray(msg.attempts) ? msg.attempts.length : msg.attempts);
      set("fallbacks", Array.isArray(msg.fallbacks) ? (msg.fallbacks.join(", ") || "none") : msg.fallbacks);
      set("finish_reason", msg.finish_reason);
      set("prompt_tokens", usage.prompt_tokens);
      set("completion_tokens", usage.completion_tokens);
      set("total_tokens", usage.total_tokens);
      set("cost_usd", msg.cost_usd);
      set("latency", elapsed + " ms");
      set("request_id", msg.request_id);
      if (cur.firstToken === null) set("ttft", "–");
      if (msg.finish_reason === "cancelled") {
        const note = document.createElement("span");
        note.className = "cancelled";
        note.textContent = " [stopped]";
        cur.answer.append(note);
      }
      // The conversation goes on with what the model really said (even a stopped answer).
      this.history.push(cur.userTurn, { role: "assistant", content: cur.text });
      this.end();
    }

    fail(text) {
      const cur = this.current;
      if (!cur) return;
      this.showError(text);
      cur.answer.textContent = cur.text;
      this.end();
    }

    end() {
      const cur = this.current;
      this.current = null;
      this.transcript.setAttribute("aria-busy", "false");
      if (cur && cur.resolve) cur.resolve();
    }
  }

  const panes = [new Pane($("pane-a")), new Pane($("pane-b"))];

  // -- key and models --------------------------------------------------------------------
  async function loadModels(key) {
    say(el.keyStatus, "Checking the key…");
    let response;
    try {
      response = await fetch(MODELS_PATH, {
        headers: { Authorization: "Bearer " + key },
        cache: "no-store",
        credentials: "omit",
      });
    } catch (e) {
      say(el.keyStatus, "The gateway did not answer: " + e.message, true);
      return;
    }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      say(el.keyStatus, "Key refused: " + errorText(data && data.error), true);
      return;
    }
    const names = (data && Array.isArray(data.data) ? data.data : []).map((m) => m.id);
    for (const [select, preferred] of [[el.modelA, 0], [el.modelB, 1]]) {
      const previous = select.value;
      select.replaceChildren(...names.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        return option;
      }));
      if (names.includes(previous)) select.value = previous;
      else if (names.length) select.value = names[Math.min(preferred, names.length - 1)];
    }
    say(el.keyStatus, names.length
      ? "Key accepted: " + names.length + " model(s) or route(s) available."
      : "Key accepted, but it may use no model.", names.length === 0);
  }

  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = el.key.value.trim();
    if (!key) { say(el.keyStatus, "Paste a key first.", true); el.key.focus(); return; }
    storeKey(key);
    panes.forEach((p) => p.close());
    loadModels(key);
  });
  el.forget.addEventListener("click", () => {
    storeKey("");
    el.key.value = "";
    panes.forEach((p) => p.close());
    say(el.keyStatus, "Key forgotten.");
  });

  // -- mode ------------------------------------------------------------------------------
  function compareMode() { return el.modeCompare.checked; }
  function applyMode() {
    document.querySelectorAll(".compare-only").forEach((node) => { node.hidden = !compareMode(); });
    document.body.classList.toggle("comparing", compareMode());
  }
  el.modeSingle.addEventListener("change", applyMode);
  el.modeCompare.addEventListener("change", applyMode);

  // -- chat ------------------------------------------------------------------------------
  function requestOptions() {
    const gateway = {};
    if (el.strategy.value.trim()) gateway.strategy = el.strategy.value.trim();
    if (el.task.value.trim()) gateway.task = el.task.value.trim();
    if (el.preference.value) gateway.preference = el.preference.value;
    const maxTokens = parseInt(el.maxTokens.value, 10);
    const temperature = parseFloat(el.temperature.value);
    return {
      gateway: Object.keys(gateway).length ? gateway : null,
      maxTokens: Number.isFinite(maxTokens) && maxTokens > 0 ? maxTokens : null,
      temperature: Number.isFinite(temperature) ? temperature : null,
      system: el.system.value.trim(),
    };
  }

  function busy(on) {
    el.send.disabled = on;
    el.stop.disabled = !on;
    el.newChat.disabled = on;
  }

  async function send() {
    const key = el.key.value.trim() || storedKey();
    const prompt = el.prompt.value.trim();
    if (!key) { say(el.chatStatus, "Paste an API key first.", true); el.key.focus(); return; }
    if (!prompt) { say(el.chatStatus, "Write a message first.", true); el.prompt.focus(); return; }
    const targets = [[panes[0], el.modelA.value]];
    if (compareMode()) targets.push([panes[1], el.modelB.value]);
    if (targets.some(([, model]) => !model)) {
      say(el.chatStatus, "Choose a model (use the key first to load the list).", true);
      return;
    }
    const options = requestOptions();
    busy(true);
    say(el.chatStatus, "Streaming…");
    el.prompt.value = "";
    await Promise.all(targets.map(([pane, model]) => pane.send(key, model, prompt, options)));
    busy(false);
    say(el.chatStatus, "Done.");
    el.prompt.focus();
  }

  function stop() {
    panes.forEach((p) => p.cancel());
    say(el.chatStatus, "Stopping…");
  }

  el.promptForm.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  el.stop.addEventListener("click", stop);
  el.newChat.addEventListener("click", () => { panes.forEach((p) => p.reset()); say(el.chatStatus, "New chat."); });
  el.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!el.send.disabled) send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !el.stop.disabled) stop();
  });

  // -- start -----------------------------------------------------------------------------
  applyMode();
  const saved = storedKey();
  if (saved) { el.key.value = saved; loadModels(saved); }
})();
