// The page at /: pick or drop an image, run one operation on this server, compare and download.
//
// Plain JavaScript with no framework and no build step, so what is in the repository is what the
// browser runs. Every URL is relative, so the page also works behind a proxy that serves the API
// under a path prefix. Small images go through the synchronous routes (POST /denoise...: one
// request, the image comes back); big ones through the job API (POST /v1/jobs/{operation}, then
// polling GET /v1/jobs/{id}), which reports tiles done while they run: a 6 MP photo takes minutes
// on a CPU, and a spinner alone for that long looks like a hang.
'use strict';

// Above this many pixels (or, when the browser cannot read the size, bytes) the job API is used.
const JOB_MIN_PIXELS = 1_000_000;
const JOB_MIN_BYTES = 4 * 1024 * 1024;
const POLL_MS = 500;
const KEY_STORAGE = 'restore.apiKey';
const EXTENSIONS = { 'image/png': 'png', 'image/jpeg': 'jpg', 'image/webp': 'webp', 'image/tiff': 'tif' };

const $ = (id) => document.getElementById(id);
const form = $('form');
const fileInput = $('file');
const drop = $('drop');
const operation = $('operation');
const keyInput = $('key');
const runButton = $('run');
const cancelButton = $('cancel');
const statusLine = $('status');
const progress = $('progress');
const result = $('result');
const compare = $('compare');
const before = $('before');
const after = $('after');
const slider = $('slider');
const download = $('download');
const caption = $('caption');
const details = $('details');

const state = {
  file: null,         // the chosen File
  pixels: null,       // its width x height, when the browser can decode it
  beforeUrl: null,    // object URLs, revoked when replaced
  afterUrl: null,
  controller: null,   // AbortController of the run in progress
  jobId: null,        // the job in progress, to cancel it on the server
  jobsAvailable: null, // from /openapi.json: true, false, or null (unknown: try, fall back on 404)
};

// A refusal from the server: its problem+json title and detail, and Retry-After on 503.
class Problem extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function problemOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body.detail ? `${body.title}: ${body.detail}` : body.title || message;
  } catch {
    // not problem+json (a proxy's error page): the status line says enough
  }
  return new Problem(response.status, message, response.headers.get('Retry-After'));
}

function setStatus(text, fraction) {
  statusLine.textContent = text;
  progress.hidden = fraction === undefined;
  if (fraction === null) {
    progress.removeAttribute('value'); // indeterminate: the server does not say how far it is
  } else if (fraction !== undefined) {
    progress.value = fraction;
  }
}

function authHeaders() {
  const key = keyInput.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function queryFor(op) {
  const params = new URLSearchParams();
  if (op === 'denoise' && $('sigma').value) params.set('sigma', $('sigma').value);
  if (op === 'edges') {
    if ($('thin').checked) params.set('thin', 'true');
    if ($('threshold').value !== '') params.set('threshold', $('threshold').value);
    if ($('side').value !== 'fuse') params.set('side', $('side').value);
    if ($('depth').value !== '8') params.set('depth', $('depth').value);
  }
  if ($('format').value) params.set('format', $('format').value);
  const query = params.toString();
  return query ? `?${query}` : '';
}

function uploadOptions(signal) {
  const type = state.file.type || 'application/octet-stream';
  return { method: 'POST', body: state.file, headers: { ...authHeaders(), 'Content-Type': type }, signal };
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

// One request: the image goes up, the restored image comes back.
async function runDirect(op, signal) {
  setStatus('Uploading and restoring…', null);
  const response = await fetch(`${op}${queryFor(op)}`, uploadOptions(signal));
  if (!response.ok) throw await problemOf(response);
  return { blob: await response.blob(), headers: response.headers };
}

// GET /v1/jobs/{id} answers progress as {done, total, fraction} in tiles of the image.
function jobProgress(job) {
  if (job.status === 'queued') return ['Queued: waiting for the model…', null];
  const { done, total, fraction } = job.progress;
  return [`Restoring: ${done} of ${total} tiles (${Math.floor(fraction * 100)}%)`, fraction];
}

// Submit a job, poll it until it ends, fetch its result, then delete it from the server (the page
// holds the result now). Returns null when this server has no job API, so the caller falls back.
async function runJob(op, signal) {
  setStatus('Uploading…', null);
  const submitted = await fetch(`v1/jobs/${op}${queryFor(op)}`, uploadOptions(signal));
  if (submitted.status === 404 || submitted.status === 405) {
    state.jobsAvailable = false;
    return null;
  }
  if (!submitted.ok) throw await problemOf(submitted);
  let job = await submitted.json();
  state.jobId = job.id;
  const jobUrl = `v1/jobs/${encodeURIComponent(job.id)}`;
  while (job.status === 'queued' || job.status === 'running') {
    setStatus(...jobProgress(job));
    await sleep(POLL_MS, signal);
    const polled = await fetch(jobUrl, { headers: authHeaders(), signal });
    if (!polled.ok) throw await problemOf(polled);
    job = await polled.json();
  }
  if (job.status === 'failed') {
    const problem = job.error || { status: 500, title: 'Failed', detail: 'the job failed' };
    throw new Problem(problem.status, `${problem.title}: ${problem.detail}`);
  }
  if (job.status !== 'succeeded') throw new Problem(409, `The job ended as ${job.status}.`);
  setStatus('Downloading the result…', 1);
  const response = await fetch(`${jobUrl}/result`, { headers: authHeaders(), signal });
  if (!response.ok) throw await problemOf(response);
  const blob = await response.blob();
  state.jobId = null;
  fetch(jobUrl, { method: 'DELETE', headers: authHeaders() }).catch(() => {}); // best effort: it expires anyway
  return { blob, headers: response.headers };
}

function wantsJob() {
  if (state.jobsAvailable === false) return false;
  return state.pixels !== null ? state.pixels >= JOB_MIN_PIXELS : state.file.size >= JOB_MIN_BYTES;
}

function resultName(op, type) {
  const stem = state.file.name.replace(/\.[^.]*$/, '') || 'image';
  return `${stem}-${op}.${EXTENSIONS[type] || 'png'}`;
}

function addDetail(term, value) {
  if (!value) return;
  const dt = document.createElement('dt');
  const dd = document.createElement('dd');
  dt.textContent = term;
  dd.textContent = value;
  details.append(dt, dd);
}

// Server-Timing ("decode;dur=206.7, queue;dur=0.0, infer;dur=3100.2") in words: "decode 0.2 s, ...".
const STAGE_NAMES = { estimate: 'noise estimate', infer: 'inference' };

function timingsInWords(header) {
  if (!header) return '';
  return header.split(',').map((entry) => {
    const [name, ...params] = entry.trim().split(';');
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith('dur='));
    if (!name || !dur) return null;
    const seconds = Number(dur.slice(4)) / 1000;
    return Number.isFinite(seconds) ? `${STAGE_NAMES[name] || name} ${seconds.toFixed(1)} s` : null;
  }).filter(Boolean).join(', ');
}

function showResult(op, blob, headers) {
  if (state.afterUrl) URL.revokeObjectURL(state.afterUrl);
  state.afterUrl = URL.createObjectURL(blob);
  after.src = state.afterUrl;
  download.href = state.afterUrl;
  download.download = resultName(op, blob.type);
  caption.textContent = `${state.file.name}: ${operation.selectedOptions[0].textContent}. ` +
    'Left of the line: your image; right of it: the result.';
  details.replaceChildren();
  addDetail('Model', headers.get('X-Model'));
  addDetail('Estimated noise level', headers.get('X-Noise-Sigma'));
  addDetail('Time on the server', timingsInWords(headers.get('Server-Timing')));
  addDetail('Size', `${(blob.size / 1024).toFixed(1)} KiB, ${blob.type || 'unknown type'}`);
  result.hidden = false;
  setSplit(slider.value);
}

function setSplit(value) {
  compare.style.setProperty('--split', `${value}%`);
  slider.setAttribute('aria-valuetext', `${value}% input, ${100 - value}% result`);
}

function explain(error) {
  if (error.name === 'AbortError') return 'Cancelled.';
  if (!(error instanceof Problem)) return `Could not reach the server: ${error.message}`;
  if (error.status === 401) {
    keyInput.setAttribute('aria-invalid', 'true');
    keyInput.focus();
    return 'This server needs an API key: enter it in the API key field and try again.';
  }
  if (error.status === 503 && error.retryAfter) {
    return `${error.message} Try again in ${error.retryAfter} s.`;
  }
  return error.message;
}

function setBusy(busy) {
  runButton.disabled = busy;
  cancelButton.hidden = !busy;
  form.setAttribute('aria-busy', String(busy));
}

async function run(event) {
  event.preventDefault();
  if (!state.file) {
    setStatus('Choose an image first.');
    fileInput.focus();
    return;
  }
  const op = operation.value;
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  try {
    let done = wantsJob() ? await runJob(op, controller.signal) : null;
    if (done === null) done = await runDirect(op, controller.signal);
    showResult(op, done.blob, done.headers);
    setStatus('Done. Compare with the divider below, or download the result.');
  } catch (error) {
    setStatus(explain(error));
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

function cancel() {
  if (state.controller) state.controller.abort();
  if (state.jobId) {
    fetch(`v1/jobs/${encodeURIComponent(state.jobId)}`, { method: 'DELETE', headers: authHeaders() }).catch(() => {});
    state.jobId = null;
  }
}

async function choose(file) {
  if (!file) return;
  state.file = file;
  state.pixels = null;
  if (state.beforeUrl) URL.revokeObjectURL(state.beforeUrl);
  state.beforeUrl = URL.createObjectURL(file);
  before.src = state.beforeUrl;
  result.hidden = true;
  setStatus(`${file.name} (${(file.size / 1024).toFixed(1)} KiB) is ready: choose an operation and press Restore.`);
  try {
    await before.decode();
    state.pixels = before.naturalWidth * before.naturalHeight;
    compare.style.setProperty('--ratio', `${before.naturalWidth} / ${before.naturalHeight}`);
    compare.style.setProperty('--aspect', String(before.naturalWidth / before.naturalHeight));
  } catch {
    caption.textContent = 'Your browser cannot show this format; the server reads it and the download works.';
  }
}

// The weather model's measured gains, from its manifest entry (held-out photos, input vs output PSNR).
function weatherGains(metrics) {
  const heldout = metrics.heldout || {};
  const input = (metrics.by_method || {}).input || {};
  const gains = ['rain', 'haze', 'snow'].filter((w) => heldout[w] && input[w])
    .map((w) => `${w} ${heldout[w].psnr >= input[w].psnr ? '+' : ''}${(heldout[w].psnr - input[w].psnr).toFixed(2)} dB`);
  const clean = heldout.clean ? `; photos without weather come back at ${heldout.clean.psnr.toFixed(1)} dB` : '';
  return gains.length ? ` Measured on held-out photos: ${gains.join(', ')}${clean}.` : '';
}

function showOptions() {
  for (const fieldset of document.querySelectorAll('fieldset[data-operation]')) {
    fieldset.hidden = fieldset.dataset.operation !== operation.value;
  }
  for (const note of document.querySelectorAll('[data-operations]')) {
    note.hidden = !note.dataset.operations.split(' ').includes(operation.value);
  }
}

// What this server offers: the job API, whether keys are required, and the denoise levels loaded.
async function discover() {
  try {
    const schema = await (await fetch('openapi.json')).json();
    state.jobsAvailable = Object.keys(schema.paths).some((path) => path.startsWith('/v1/jobs/') && schema.paths[path].post);
    if (schema.paths['/denoise']?.post?.security) {
      $('key-hint').textContent = 'This server needs an API key. Kept in this tab until you close it.';
    }
  } catch {
    // no schema: try the job API and fall back on 404
  }
  try {
    const listing = await (await fetch('v1/models')).json();
    const tasks = new Set(listing.models.map((model) => model.task));
    for (const option of operation.options) {
      const task = option.value === 'denoise' || option.value === 'edges' ? option.value : 'weather';
      option.disabled = !tasks.has(task);
    }
    const weather = listing.models.find((m) => m.task === 'weather');
    if (weather) $('weather-gains').textContent = weatherGains(weather.metrics || {});
    const levels = [...new Set(listing.models.filter((m) => m.task === 'denoise' && m.sigma !== null).map((m) => m.sigma))];
    const sigma = $('sigma');
    for (const option of [...sigma.options]) {
      if (option.value !== '' && option.value !== 'blind' && !levels.includes(Number(option.value))) option.remove();
    }
    if (operation.selectedOptions[0]?.disabled) {
      const first = [...operation.options].find((option) => !option.disabled);
      if (first) operation.value = first.value;
      showOptions();
    }
  } catch {
    // no listing: every operation stays offered, and the server refuses what it lacks
  }
}

fileInput.addEventListener('change', () => choose(fileInput.files[0]));
operation.addEventListener('change', showOptions);
slider.addEventListener('input', () => setSplit(slider.value));
form.addEventListener('submit', run);
cancelButton.addEventListener('click', cancel);
keyInput.value = sessionStorage.getItem(KEY_STORAGE) || '';
keyInput.addEventListener('input', () => {
  keyInput.removeAttribute('aria-invalid');
  sessionStorage.setItem(KEY_STORAGE, keyInput.value);
});
after.addEventListener('error', () => {
  caption.textContent = 'Your browser cannot show this format; the download works.';
});
for (const name of ['dragenter', 'dragover']) {
  drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add('dragging');
  });
}
drop.addEventListener('dragleave', () => drop.classList.remove('dragging'));
drop.addEventListener('drop', (event) => {
  event.preventDefault();
  drop.classList.remove('dragging');
  if (event.dataTransfer.files.length) {
    fileInput.files = event.dataTransfer.files;
    choose(event.dataTransfer.files[0]);
  }
});
// A file dropped next to the box must not make the browser navigate away to it.
window.addEventListener('dragover', (event) => event.preventDefault());
window.addEventListener('drop', (event) => event.preventDefault());
showOptions();
setSplit(slider.value);
discover();
