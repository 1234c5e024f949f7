// The page of `mseg serve`: upload an image, show the overlay, the legend, each pixel's class, the downloads.
// Plain JavaScript against the service's own API; nothing is loaded from elsewhere.
"use strict";

const OUTPUTS = "gray,color,overlay,confidence";
const FILE_NAMES = { gray: "labels.png", color: "color.png", overlay: "overlay.jpg", confidence: "confidence.png" };
const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("mseg-api-key") || "", last: null, labels: null, confidence: null,
                answer: null };

function headers() {
  return state.key ? { "X-API-Key": state.key } : {};
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

async function api(path, options) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...((options || {}).headers || {}) } });
  if (response.status === 401) {
    $("key-row").hidden = false;
    throw new Error("this server needs an API key: enter it above");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

async function describeModel() {
  try {
    const { models } = await api("/v1/models");
    const model = models[0];
    $("model").textContent = `${model.name}: ${model.taxonomy}, preset ${model.preset}, ${model.device}` +
      (model.ready ? "" : " (loading)");
    const select = $("taxonomy");
    select.replaceChildren(...model.output_taxonomies.map((name) => new Option(name, name)));
    const { examples } = await api("/v1/examples");
    $("examples").replaceChildren("Examples: ");
    for (const example of examples) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = example.name;
      button.dataset.example = example.name;
      button.addEventListener("click", () => segmentExample(example));
      $("examples").append(button, " ");
    }
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function segmentExample(example) {
  const response = await fetch(example.url, { headers: headers() });
  if (!response.ok) {
    setStatus(`could not fetch the example ${example.name} (HTTP ${response.status})`, true);
    return;
  }
  await segment(await response.blob(), `${example.name}.png`);
}

async function segment(blob, name) {
  state.last = { blob, name };
  setStatus(`Segmenting ${name}…`);
  const form = new FormData();
  form.append("image", blob, name);
  const query = new URLSearchParams({ outputs: OUTPUTS, taxonomy: $("taxonomy").value });
  try {
    const started = performance.now();
    const answer = await api(`/v1/segment?${query}`, { method: "POST", body: form });
    await show(answer, name);
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    setStatus(`${name}: ${answer.width}×${answer.height}, ${answer.classes.length} classes of ${answer.taxonomy} ` +
              `present (${seconds} s).`);
  } catch (error) {
    setStatus(`${name}: ${error.message}`, true);
  }
}

function dataUrl(output) {
  return `data:${output.media_type};base64,${output.base64}`;
}

async function pixels(url, canvas) {
  const image = new Image();
  image.src = url;
  await image.decode();
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  return context.getImageData(0, 0, canvas.width, canvas.height).data;
}

async function show(answer, name) {
  state.answer = answer;
  state.labels = await pixels(dataUrl(answer.outputs.gray), $("labels-canvas"));
  state.confidence = await pixels(dataUrl(answer.outputs.confidence), $("confidence-canvas"));
  const overlay = $("overlay");
  overlay.src = dataUrl(answer.outputs.overlay);
  await overlay.decode();
  $("legend").replaceChildren(...answer.classes.map((c) => {
    const item = document.createElement("li");
    item.dataset.classId = c.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = c.color;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = c.name;
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = c.share < 0.001 ? "<0.1%" : `${(100 * c.share).toFixed(1)}%`;
    item.append(swatch, label, share);
    return item;
  }));
  const stem = name.replace(/\.[^.]*$/, "");
  $("downloads").replaceChildren(...Object.entries(answer.outputs).map(([kind, output]) => {
    const link = document.createElement("a");
    link.href = dataUrl(output);
    link.download = `${stem}_${FILE_NAMES[kind]}`;
    link.textContent = link.download;
    const item = document.createElement("li");
    item.append(link);
    return item;
  }));
  $("result").hidden = false;
  overlay.dataset.ready = "true";
}

function hover(event) {
  const overlay = $("overlay");
  if (!state.answer || !state.labels) return;
  const box = overlay.getBoundingClientRect();
  const x = Math.min(state.answer.width - 1, Math.floor((event.clientX - box.left) * state.answer.width / box.width));
  const y = Math.min(state.answer.height - 1,
                     Math.floor((event.clientY - box.top) * state.answer.height / box.height));
  if (x < 0 || y < 0) return;
  const index = 4 * (y * state.answer.width + x);
  const id = state.labels[index];
  const name = state.answer.class_names[id] ?? (id === 255 ? "unlabeled" : `class ${id}`);
  const confidence = state.confidence ? (100 * state.confidence[index] / 255).toFixed(0) : "?";
  $("hover").textContent = `(${x}, ${y}): ${name}, confidence ${confidence}%`;
}

function pickFile(file) {
  if (file) segment(file, file.name);
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => pickFile(event.target.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    pickFile(event.dataTransfer.files[0]);
  });
  $("overlay").addEventListener("mousemove", hover);
  $("taxonomy").addEventListener("change", () => { if (state.last) segment(state.last.blob, state.last.name); });
  $("key-save").addEventListener("click", () => {
    state.key = $("api-key").value;
    sessionStorage.setItem("mseg-api-key", state.key);
    $("key-row").hidden = true;
    describeModel();
  });
}

wire();
describeModel();
