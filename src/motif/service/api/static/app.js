// The page: upload, library, generate with live progress and audio, result, similar tracks and search.
// Plain DOM code over api.js; every element it needs is in index.html.
import {
  ApiError, apiKey, followGeneration, getJSON, mediaUrl, onKeyNeeded, postJSON, request, setApiKey, uploadFile,
} from "./api.js";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 8;
const PRESETS = { similar: [0.7, 3.5], creative: [1.2, 2.0], safe: [0.5, 5.0] }; // temperature, guidance
const state = { offset: 0, total: 0, job: null, jobAbort: null, resultId: null };

// ------------------------------------------------------------------ formatting

const fmt = {
  seconds: (s) => (s == null ? "–" : s >= 60 ? `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, "0")}` : `${s.toFixed(1)} s`),
  tempo: (a) => (a.tempo_bpm == null ? "–" : `${Math.round(a.tempo_bpm)} BPM`),
  key: (a) => (a.key ? `${a.key} ${a.mode || ""}`.trim() : "–"),
  loudness: (a) => (a.loudness_lufs == null ? "–" : `${a.loudness_lufs.toFixed(1)} LUFS`),
  when: (iso) => new Date(iso).toLocaleString(),
};

function say(id, text) {
  $(id).textContent = text || "";
}

// ------------------------------------------------------------------ waveforms

async function drawWaveform(canvas, peaksPath, label) {
  canvas.setAttribute("aria-label", `Waveform of ${label}`);
  const width = Math.max(100, Math.round(canvas.clientWidth || 300));
  const height = Math.round(canvas.clientHeight || 48);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  try {
    const { peaks } = await getJSON(`${peaksPath}?n=${Math.min(2000, Math.max(10, Math.round(width / 2)))}`);
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.fillStyle = getComputedStyle(canvas).color;
    const step = width / peaks.length;
    const scale = Math.max(0.05, ...peaks.map(([lo, hi]) => Math.max(-lo, hi)));
    peaks.forEach(([lo, hi], i) => {
      const top = height / 2 - (hi / scale) * (height / 2);
      const bottom = height / 2 - (lo / scale) * (height / 2);
      ctx.fillRect(i * step, top, Math.max(1, step - 0.5), Math.max(1, bottom - top));
    });
    canvas.dataset.drawn = "true";
  } catch (error) {
    canvas.setAttribute("aria-label", `Waveform of ${label} unavailable: ${error.message}`);
  }
}

// Media elements cannot send the API key: their URL is signed when one is in use.
async function setSource(audio, path) {
  audio.src = await mediaUrl(path);
}

// ------------------------------------------------------------------ API key

function askForKey(reason) {
  const dialog = $("key-dialog");
  say("key-reason", reason || "This server requires an API key.");
  $("key-input").value = apiKey();
  $("key-button").hidden = false;
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "save" && $("key-input").value.trim()) {
        setApiKey($("key-input").value.trim());
        resolve(true);
      } else {
        resolve(false);
      }
    }, { once: true });
  });
}

// ------------------------------------------------------------------ upload

async function upload(file) {
  const bar = $("upload-progress");
  say("upload-error", "");
  say("upload-status", `Uploading ${file.name}…`);
  bar.hidden = false;
  bar.value = 0;
  try {
    const audio = await uploadFile(file, (fraction) => {
      bar.value = Math.round(fraction * 100);
      if (fraction >= 1) say("upload-status", `Analysing ${file.name}…`);
    });
    say("upload-status", `Uploaded ${audio.filename}: ${fmt.seconds(audio.duration)}, ${fmt.key(audio.analysis)}, ${fmt.tempo(audio.analysis)}.`);
    state.offset = 0;
    await loadLibrary(audio.audio_id);
    return audio;
  } catch (error) {
    say("upload-status", "");
    say("upload-error", `Refused: ${error.message}`);
    return null;
  } finally {
    bar.hidden = true;
  }
}

function wireUpload() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    const [file] = e.target.files;
    if (file) upload(file).finally(() => (e.target.value = ""));
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const [file] = e.dataTransfer.files;
    if (file) upload(file);
  });
}

// ------------------------------------------------------------------ library

function trackItem(audio) {
  const item = $("track-template").content.firstElementChild.cloneNode(true);
  const a = audio.analysis;
  item.dataset.audioId = audio.audio_id;
  item.querySelector(".name").textContent = audio.filename;
  item.querySelector(".when").textContent = fmt.when(audio.created_at);
  item.querySelector(".duration").textContent = fmt.seconds(audio.duration);
  item.querySelector(".tempo").textContent = fmt.tempo(a);
  item.querySelector(".key").textContent = fmt.key(a);
  item.querySelector(".loudness").textContent = fmt.loudness(a);
  const player = item.querySelector("audio");
  player.setAttribute("aria-label", `Play ${audio.filename}`);
  setSource(player, `/api/audio/${audio.audio_id}/file`).catch(() => {});
  item.querySelector(".use").setAttribute("aria-label", `Generate from ${audio.filename}`);
  item.querySelector(".use").addEventListener("click", () => {
    $("source").value = audio.audio_id;
    $("generate-h").focus();
  });
  item.querySelector(".similar").setAttribute("aria-label", `Tracks similar to ${audio.filename}`);
  item.querySelector(".similar").addEventListener("click", () => showSimilar(audio));
  return item;
}

async function loadLibrary(selectId) {
  const page = await getJSON(`/api/audio?limit=${PAGE_SIZE}&offset=${state.offset}`);
  state.total = page.total;
  const list = $("library");
  list.replaceChildren(...page.items.map(trackItem));
  $("library-empty").hidden = page.total > 0;
  const pages = Math.max(1, Math.ceil(page.total / PAGE_SIZE));
  say("library-page", `Page ${Math.floor(state.offset / PAGE_SIZE) + 1} of ${pages} (${page.total} uploads)`);
  $("prev-page").disabled = state.offset === 0;
  $("next-page").disabled = state.offset + PAGE_SIZE >= page.total;
  for (const item of list.children) {
    const audio = page.items.find((x) => x.audio_id === item.dataset.audioId);
    drawWaveform(item.querySelector("canvas"), `/api/audio/${audio.audio_id}/peaks`, audio.filename);
  }
  const source = $("source");
  const keep = selectId || source.value;
  source.replaceChildren(...page.items.map((x) => new Option(x.filename, x.audio_id)));
  if (keep && !page.items.some((x) => x.audio_id === keep)) {
    const known = await getJSON(`/api/audio/${keep}`).catch(() => null);
    if (known) source.prepend(new Option(known.filename, known.audio_id));
  }
  if (keep) source.value = keep;
}

// ------------------------------------------------------------------ generate

function applyPreset(name) {
  const preset = PRESETS[name];
  if (!preset) return;
  $("temperature").value = preset[0];
  $("cfg_coef").value = preset[1];
}

function readForm() {
  const number = (id) => Number($(id).value);
  const body = {
    duration: number("duration"), temperature: number("temperature"), top_k: number("top_k"),
    top_p: number("top_p"), cfg_coef: number("cfg_coef"), format: $("format").value,
  };
  if ($("mode").value) body.mode = $("mode").value;
  if ($("prompt").value.trim()) body.prompt = $("prompt").value.trim();
  if ($("seed").value !== "") body.seed = number("seed");
  return body;
}

function showJob(status) {
  const bar = $("job-progress");
  bar.value = status.progress;
  if (status.status === "queued") {
    say("job-status", `Queued: position ${status.queue_position ?? "?"} in the queue.`);
  } else if (status.status === "processing") {
    say("job-status", `Generating: ${Math.round(status.progress)}%`);
  } else if (status.status === "completed") {
    say("job-status", "Done.");
  } else if (status.status === "failed") {
    say("job-status", `Failed: ${status.error}`);
  } else if (status.status === "cancelled") {
    say("job-status", "Cancelled.");
  }
}

async function generate(event) {
  event.preventDefault();
  say("generate-error", "");
  const source = $("source").value;
  if (!source) {
    say("generate-error", "Upload a track first: it is what the music will be like.");
    return;
  }
  if (state.jobAbort) state.jobAbort.abort();
  let status;
  try {
    status = await postJSON(`/api/generate/${source}`, readForm());
  } catch (error) {
    say("generate-error", error.message);
    return;
  }
  startJob(status);
}

function startJob(status) {
  const abort = new AbortController();
  state.job = status.generation_id;
  state.jobAbort = abort;
  $("job").hidden = false;
  $("cancel-button").hidden = false;
  $("result-card").hidden = false;
  $("final").hidden = true;
  $("live").hidden = false;
  showJob(status);
  const live = $("live-audio");
  setSource(live, `/api/generations/${status.generation_id}/stream`)
    .then(() => live.play())
    .catch(() => {}); // autoplay may be refused: the controls are there
  followGeneration(status.generation_id, (name, update) => {
    if (state.job !== update.generation_id) return;
    showJob(update);
    if (name === "completed") showResult(update);
    if (["completed", "failed", "cancelled"].includes(name)) endJob(name !== "completed");
  }, abort.signal).catch((error) => say("job-status", `Lost track of the generation: ${error.message}`));
}

function endJob(stopLive) {
  $("cancel-button").hidden = true;
  if (stopLive) {
    $("live-audio").pause();
    $("live").hidden = true;
  }
}

async function cancel() {
  if (!state.job) return;
  try {
    showJob(await postJSON(`/api/generations/${state.job}/cancel`));
  } catch (error) {
    say("generate-error", error.message);
  }
}

// ------------------------------------------------------------------ result

async function showResult(status) {
  state.resultId = status.generation_id;
  $("final").hidden = false;
  say("result-similarity", status.similarity == null ? "–" : status.similarity.toFixed(3));
  say("result-seed", String(status.seed ?? "–"));
  const described = Boolean(status.description);
  $("result-description-term").hidden = !described;
  $("result-description").hidden = !described;
  say("result-description", status.description || "");
  const final = $("result-audio");
  const live = $("live-audio");
  await setSource(final, `/api/download/${status.generation_id}`);
  $("download").href = await mediaUrl(`/api/download/${status.generation_id}`);
  drawWaveform($("result-wave"), `/api/generations/${status.generation_id}/peaks`, "the result");
  live.addEventListener("ended", () => ($("live").hidden = true), { once: true });
}

// With a key, the link's signed URL expires after a while: sign it again at each click.
async function freshDownload(event) {
  const link = event.currentTarget;
  if (!apiKey() || link.dataset.fresh || !state.resultId) {
    delete link.dataset.fresh;
    return;
  }
  event.preventDefault();
  link.href = await mediaUrl(`/api/download/${state.resultId}`);
  link.dataset.fresh = "true";
  link.click();
}

async function moreLikeThis() {
  if (!state.resultId) return;
  const button = $("more-like-this");
  button.disabled = true;
  try {
    const blob = await (await request(`/api/download/${state.resultId}`)).blob();
    const ext = (blob.type.split("/")[1] || "wav").replace("mpeg", "mp3");
    const audio = await upload(new File([blob], `motif-${state.resultId.slice(0, 8)}.${ext}`, { type: blob.type }));
    if (audio) {
      $("source").value = audio.audio_id;
      $("generate-h").focus();
    }
  } catch (error) {
    say("generate-error", error.message);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ similar tracks and search

function resultItem(match) {
  const item = document.createElement("li");
  const title = document.createElement("span");
  title.textContent = `${match.filename} (${fmt.seconds(match.duration)}), score ${match.score.toFixed(3)}`;
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Play";
  button.setAttribute("aria-label", `Play ${match.filename}`);
  button.addEventListener("click", async () => {
    const player = document.createElement("audio");
    player.controls = true;
    player.setAttribute("aria-label", match.filename);
    button.replaceWith(player);
    await setSource(player, `/api/audio/${match.audio_id}/file`);
    player.play().catch(() => {});
    player.focus();
  });
  item.append(title, " ", button);
  return item;
}

async function showMatches(heading, path) {
  say("search-error", "");
  say("results-h", `${heading}: searching…`);
  $("results").replaceChildren();
  try {
    const response = await request(path);
    if (response.status === 202) {
      say("results-h", `${heading}: its embedding is still being computed; try again in a moment.`);
      return;
    }
    const { results } = await response.json();
    say("results-h", `${heading}: ${results.length} found`);
    $("results").replaceChildren(...results.map(resultItem));
  } catch (error) {
    say("results-h", heading);
    say("search-error", error.message);
  }
}

function showSimilar(audio) {
  $("search-h").scrollIntoView({ block: "start" });
  return showMatches(`Similar to ${audio.filename}`, `/api/search/similar/${audio.audio_id}?k=10`);
}

function search(event) {
  event.preventDefault();
  const text = $("search-text").value.trim();
  if (text) showMatches(`Matching “${text}”`, `/api/search?q=${encodeURIComponent(text)}&k=10`);
}

// ------------------------------------------------------------------ start

function wire() {
  onKeyNeeded(askForKey);
  wireUpload();
  $("key-button").hidden = !apiKey();
  $("key-button").addEventListener("click", () => askForKey("Change or forget the API key."));
  $("key-forget").addEventListener("click", () => {
    setApiKey("");
    $("key-dialog").close("cancel");
    $("key-button").hidden = true;
  });
  $("prev-page").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    loadLibrary();
  });
  $("next-page").addEventListener("click", () => {
    state.offset += PAGE_SIZE;
    loadLibrary();
  });
  for (const radio of document.querySelectorAll("input[name=preset]")) {
    radio.addEventListener("change", () => applyPreset(radio.value));
  }
  for (const id of ["temperature", "cfg_coef"]) {
    $(id).addEventListener("input", () => (document.querySelector("input[name=preset][value=custom]").checked = true));
  }
  $("generate-form").addEventListener("submit", generate);
  $("cancel-button").addEventListener("click", cancel);
  $("more-like-this").addEventListener("click", moreLikeThis);
  $("download").addEventListener("click", freshDownload);
  $("search-form").addEventListener("submit", search);
  loadLibrary().catch((error) => {
    if (!(error instanceof ApiError && error.status === 401)) say("upload-error", `Could not load the library: ${error.message}`);
  });
}

wire();
