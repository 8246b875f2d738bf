// Talking to Motif's API from the page: the API key, JSON calls, uploads with progress, pushed progress
// (Server-Sent Events read with fetch, so the key travels as a header) and URLs for <audio> elements.

const KEY_STORAGE = "motif.apiKey";
let askForKey = async () => false; // set by the page: shows the key dialog, resolves true when a key was saved

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

export function onKeyNeeded(handler) {
  askForKey = handler;
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// FastAPI's 422 detail is a list of {loc, msg}; Motif's own errors are a sentence.
export function describeDetail(detail, status) {
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return detail || `HTTP ${status}`;
}

async function errorOf(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    /* not JSON */
  }
  return new ApiError(response.status, describeDetail(detail, response.status));
}

// fetch with the key; on 401 the page asks for a key once and the request is repeated.
export async function request(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { ...(options.headers || {}), ...authHeaders() };
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401 && attempt === 0) {
      const error = await errorOf(response);
      if (await askForKey(error.message)) continue;
      throw error;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

export async function getJSON(path) {
  return (await request(path)).json();
}

export async function postJSON(path, body) {
  const response = await request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
  });
  return response.json();
}

// Uploads with XMLHttpRequest: fetch cannot report upload progress. onProgress gets 0..1.
export function uploadFile(file, onProgress, retried = false) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/upload");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, "the connection to the server failed"));
    xhr.onload = async () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* not JSON */
      }
      if (xhr.status === 401 && !retried && (await askForKey(describeDetail(body?.detail, 401)))) {
        uploadFile(file, onProgress, true).then(resolve, reject);
      } else if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
      } else {
        reject(new ApiError(xhr.status, describeDetail(body?.detail, xhr.status)));
      }
    };
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

// A URL an <audio> element or a download link can use: the path itself, or with a key in use, the path
// signed for a few minutes (media elements cannot send headers).
export async function mediaUrl(path) {
  if (!apiKey()) return path;
  return (await postJSON("/api/media-tokens", { path })).url;
}

function parseEvent(block) {
  const event = { event: "message", data: "", id: null };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") data.push(value);
    else if (field === "event") event.event = value;
    else if (field === "id") event.id = value;
  }
  event.data = data.join("\n");
  return data.length ? event : null;
}

// Calls onEvent(name, status) for each pushed event of a generation until it ends or signal aborts;
// reconnects with Last-Event-ID when the connection drops.
export async function followGeneration(generationId, onEvent, signal) {
  let lastId = null;
  for (let failures = 0; failures < 20 && !signal.aborted; ) {
    let ended = false;
    try {
      const headers = lastId ? { "Last-Event-ID": lastId } : {};
      const response = await request(`/api/generations/${generationId}/events`, { headers, signal });
      if (response.status === 204) return;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!event) continue;
          if (event.id) lastId = event.id;
          const status = JSON.parse(event.data);
          onEvent(event.event, status);
          if (["completed", "failed", "cancelled"].includes(event.event)) ended = true;
        }
      }
      if (ended) return;
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status !== 0 && error.status < 500) throw error;
    }
    failures++; // the connection dropped before the end: resume after a pause
    await new Promise((r) => setTimeout(r, 1000));
  }
}
