// What every playground page shares: element helpers, the API key, and calls to the documented
// HTTP API whose errors carry the server's code and message. No framework and no CDN: the pages
// must work on an offline machine.
"use strict";

window.maas = (() => {
  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null) continue;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function authHeaders() {
    const key = $("api-key").value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  // An error answer in any of the API's shapes (v1 object, v2 string, or someone else's page).
  function errorFrom(status, statusText, text) {
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
    const error = body && body.error;
    if (error && typeof error === "object") return new ApiError(status, error.code, error.message);
    if (typeof error === "string") return new ApiError(status, "error", error);
    return new ApiError(status, "http_error", text.slice(0, 300) || statusText);
  }

  // An answer's JSON body; an ApiError for an error status, or for a body that is not JSON.
  function answer(status, statusText, text) {
    if (status < 200 || status > 299) throw errorFrom(status, statusText, text);
    if (status === 204) return null;
    try {
      return JSON.parse(text);
    } catch {
      throw new ApiError(status, "bad_response", "the server did not answer JSON");
    }
  }

  // Every call goes through here: errors become ApiError with the server's code and message.
  async function api(path, init = {}) {
    let response;
    try {
      response = await fetch(path, { ...init, headers: { Accept: "application/json", ...authHeaders(), ...init.headers } });
    } catch (exc) {
      throw new ApiError(0, "network_error", `could not reach the server (${exc.message})`);
    }
    return answer(response.status, response.statusText, await response.text());
  }

  function showError(exc) {
    const status = exc instanceof ApiError && exc.status ? `${exc.status} ` : "";
    const code = exc instanceof ApiError ? exc.code : "error";
    $("error-code").textContent = `${status}${code}`;
    $("error-message").textContent = exc.message;
    $("error").hidden = false;
  }

  return { $, el, ApiError, errorFrom, answer, api, authHeaders, showError };
})();
