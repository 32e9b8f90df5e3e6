// The translation page: GET /languages fills the pickers, POST /translation translates (the native API, with its
// documented fields: fromLang "auto" answers detectedLanguage, format "html", alternatives 0-5). Loaded with
// `defer` from this origin only (the page's Content-Security-Policy forbids inline script).
"use strict";

(() => {
  const KEY_STORAGE = "m2m100-api-key";
  const MAX_ALTERNATIVES = 5;

  const byId = (id) => document.getElementById(id);
  const form = byId("translate-form");
  const sourceText = byId("source-text");
  const sourceLang = byId("source-lang");
  const targetLang = byId("target-lang");
  const swapButton = byId("swap");
  const alternativesInput = byId("alternatives");
  const errorBox = byId("error");
  const result = document.querySelector(".result");
  const detected = byId("detected");
  const output = byId("output");
  const alternativesBox = byId("alternatives-box");
  const alternativesList = byId("alternatives-list");
  const apiKey = byId("api-key");

  const names = new Map(); // code -> English name, from /languages
  let languagesLoaded = false;
  let lastDetected = ""; // the language detected for the last text translated with "Detect language"
  let inFlight = null; // the AbortController of the translation being waited for

  // --- the API key: kept in sessionStorage (this tab, until it closes), sent as Authorization: Bearer

  function storedKey() {
    try {
      return window.sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (error) {
      return ""; // storage disabled: the key lives in the field only
    }
  }

  function storeKey(value) {
    try {
      if (value) window.sessionStorage.setItem(KEY_STORAGE, value);
      else window.sessionStorage.removeItem(KEY_STORAGE);
    } catch (error) {
      // storage disabled: nothing to remember
    }
  }

  function requestHeaders(withBody) {
    const headers = { Accept: "application/json" };
    if (withBody) headers["Content-Type"] = "application/json";
    const key = apiKey.value.trim();
    if (key) headers.Authorization = "Bearer " + key;
    return headers;
  }

  // --- talking to the service; errors come as {"error": {"code", "message"}}

  class ServiceError extends Error {}

  async function call(method, path, body, signal) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: requestHeaders(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        signal,
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ServiceError("Could not reach the translation service. Check the connection and try again.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (!response.ok) throw new ServiceError(describeError(response, data));
    if (data === null) throw new ServiceError(`The service answered ${response.status} without JSON.`);
    return data;
  }

  function describeError(response, data) {
    const error = data && typeof data.error === "object" && data.error !== null ? data.error : null;
    const message = error && error.message ? String(error.message) : response.statusText || "request failed";
    const code = error && error.code ? " " + String(error.code) : "";
    let text = `${message} (${response.status}${code})`;
    const retryAfter = response.headers.get("Retry-After");
    if (retryAfter) text += ` Retry in ${retryAfter} s.`;
    if (response.status === 401) text += " Enter an API key under Access.";
    return text;
  }

  function showError(text) {
    errorBox.textContent = text;
  }

  function clearError() {
    errorBox.textContent = "";
  }

  // --- the language pickers

  function fillPicker(select, languages, keep) {
    const previous = select.value;
    for (const option of Array.from(select.options)) {
      if (option.value !== keep) option.remove();
    }
    for (const language of languages) {
      select.add(new Option(language.name, language.code));
    }
    if (previous && Array.from(select.options).some((option) => option.value === previous)) {
      select.value = previous;
    }
  }

  function preferredTarget(codes) {
    for (const tag of navigator.languages || [navigator.language || ""]) {
      const code = String(tag).toLowerCase().split("-")[0];
      if (codes.has(code)) return code;
    }
    return codes.has("en") ? "en" : "";
  }

  async function loadLanguages() {
    const data = await call("GET", "/languages");
    const details = Array.isArray(data.details) ? data.details : [];
    names.clear();
    for (const language of details) names.set(language.code, language.name || language.code);
    const byName = (a, b) => a.name.localeCompare(b.name, "en");
    const sources = details.filter((language) => language.source !== false).sort(byName);
    const targets = details.filter((language) => language.target !== false).sort(byName);
    const hadTarget = targetLang.value;
    fillPicker(sourceLang, sources, "auto");
    fillPicker(targetLang, targets, null);
    if (!hadTarget) {
      const preferred = preferredTarget(new Set(targets.map((language) => language.code)));
      if (preferred) targetLang.value = preferred;
    }
    languagesLoaded = true;
    updateLanguageAttributes();
  }

  async function ensureLanguages() {
    if (languagesLoaded) return true;
    try {
      await loadLanguages();
      clearError();
      return true;
    } catch (error) {
      showError("The language list could not be loaded: " + error.message);
      return false;
    }
  }

  function nameOf(code) {
    return names.get(code) || code;
  }

  // The text's own language on the textarea, the target's on the output (screen readers pick their voice by it).
  function updateLanguageAttributes() {
    const from = sourceLang.value === "auto" ? lastDetected : sourceLang.value;
    if (from) sourceText.lang = from;
    else sourceText.removeAttribute("lang");
  }

  function showDetected(detection) {
    if (!detection) {
      detected.textContent = "";
      return;
    }
    lastDetected = detection.language;
    const name = nameOf(detection.language);
    if (!detection.confidence) {
      detected.textContent = `No confident guess: translated as ${name}.`;
    } else {
      detected.textContent = `Detected language: ${name} (${Math.round(detection.confidence * 100)}% sure).`;
    }
  }

  // --- translating

  function readAlternatives() {
    const raw = alternativesInput.value.trim();
    const count = raw === "" ? 0 : Number(raw);
    if (!Number.isInteger(count) || count < 0 || count > MAX_ALTERNATIVES) return null;
    return count;
  }

  function setBusy(busy) {
    result.setAttribute("aria-busy", busy ? "true" : "false");
    form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function showResult(item, target, html) {
    output.textContent = item.text;
    output.lang = target;
    alternativesList.replaceChildren();
    const alternatives = Array.isArray(item.alternatives) ? item.alternatives : null;
    if (alternatives === null) {
      alternativesBox.hidden = true;
      return;
    }
    alternativesList.lang = target;
    for (const alternative of alternatives) {
      const entry = document.createElement("li");
      entry.textContent = alternative;
      alternativesList.append(entry);
    }
    if (alternatives.length === 0) {
      const entry = document.createElement("li");
      entry.textContent = html ? "None: alternatives are not computed for HTML." : "None.";
      entry.lang = "en";
      alternativesList.append(entry);
    }
    alternativesBox.hidden = false;
  }

  function clearResult() {
    output.textContent = "";
    output.removeAttribute("lang");
    alternativesList.replaceChildren();
    alternativesBox.hidden = true;
    detected.textContent = "";
  }

  function isHtml() {
    return byId("format-html").checked;
  }

  async function translate() {
    if (!sourceText.value.trim()) {
      showError("Type some text to translate.");
      sourceText.focus();
      return;
    }
    const alternatives = readAlternatives();
    if (alternatives === null) {
      showError(`Alternatives must be a whole number from 0 to ${MAX_ALTERNATIVES}.`);
      alternativesInput.focus();
      return;
    }
    if (inFlight) inFlight.abort(); // the newest request wins
    const controller = new AbortController();
    inFlight = controller;
    setBusy(true);
    try {
      if (!(await ensureLanguages())) return;
      const from = sourceLang.value;
      const to = targetLang.value;
      if (!to) {
        showError("Pick a language to translate into.");
        targetLang.focus();
        return;
      }
      const payload = {
        fromLang: from,
        toLang: to,
        format: isHtml() ? "html" : "text",
        records: [{ id: "1", text: sourceText.value }],
      };
      if (alternatives > 0) payload.alternatives = alternatives;
      const data = await call("POST", "/translation", { payload }, controller.signal);
      const item = data.result && data.result[0];
      if (!item) throw new ServiceError("The service answered without a result.");
      clearError();
      showDetected(from === "auto" ? item.detectedLanguage : null);
      updateLanguageAttributes();
      showResult(item, to, payload.format === "html");
    } catch (error) {
      if (error.name === "AbortError") return;
      clearResult(); // no translation of another text left beside the error
      showError(error instanceof ServiceError ? error.message : "Unexpected error: " + error.message);
    } finally {
      if (inFlight === controller) {
        inFlight = null;
        setBusy(false);
      }
    }
  }

  function swapLanguages() {
    const from = sourceLang.value === "auto" ? lastDetected : sourceLang.value;
    if (!from) {
      showError("Pick the source language (or translate once to detect it) before swapping.");
      sourceLang.focus();
      return;
    }
    const to = targetLang.value;
    clearError();
    sourceLang.value = to;
    targetLang.value = from;
    if (output.textContent) sourceText.value = output.textContent;
    clearResult();
    updateLanguageAttributes();
  }

  // --- wiring

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    translate();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      translate();
    }
  });
  swapButton.addEventListener("click", swapLanguages);
  sourceLang.addEventListener("change", () => {
    if (sourceLang.value !== "auto") showDetected(null);
    updateLanguageAttributes();
  });
  // A new key is used from the next request on; Enter in the field (its own form) or leaving it applies it.
  function applyKey() {
    storeKey(apiKey.value.trim());
    if (!languagesLoaded) ensureLanguages();
  }
  apiKey.addEventListener("change", applyKey);
  byId("access-form").addEventListener("submit", (event) => {
    event.preventDefault();
    applyKey();
  });

  apiKey.value = storedKey();
  setBusy(false);
  ensureLanguages();
})();
