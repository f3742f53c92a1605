// The page: a photo or the webcam through the model, the style/mix/strength/colour controls, the
// backend and frames-per-second readouts, and `window.instyle`, the hook the tests and the benchmark use.
import { Model, normalize } from './stylize.js';

const $ = id => document.getElementById(id);
const params = new URLSearchParams(location.search);  // ?backend=wasm|webgpu&threads=N
const ui = {
  status: $('status'), photo: $('photo'), webcam: $('webcam'), save: $('save'), style: $('style'), mix: $('mix'),
  strength: $('strength'), strengthValue: $('strength-value'), preserve: $('preserve-color'), maxSide: $('max-side'),
  fps: $('fps'), source: $('source'), result: $('result'), video: $('video'),
};
const srcCtx = ui.source.getContext('2d', { willReadFrequently: true });
const outCtx = ui.result.getContext('2d');
let model = null;
let webcamModel = null;    // what stylizes the webcam: the run's fast twin (page.json) or the model itself
let webcamName = null;     // the twin's run name, when there is one
let photo = null;          // the uploaded ImageBitmap, re-stylized when a control changes
let camera = null;         // the MediaStream while the webcam runs
let photosDone = 0;        // photo renders finished (tests wait on it)
let photoQueue = Promise.resolve();
let photoDirty = false;
const frameTimes = [];     // completion times of webcam frames, the last 2 s (the fps readout)
let frames = 0;            // webcam frames stylized since the page loaded
let lastFrame = 0;         // when the latest of them was done (performance.now())

/** The controls as the model takes them: raw slider weights (normalized by the model), strength, colours. */
function controls() {
  const weights = [...ui.mix.querySelectorAll('input')].map(s => Number(s.value));
  return { weights: weights.length ? weights : [1], strength: Number(ui.strength.value),
           preserveColor: ui.preserve.checked };
}

/** Draw `source` (an image or the video) into the input canvas, the longer side capped by "max side". */
function drawSource(source, w, h) {
  const cap = Number(ui.maxSide.value);
  const scale = cap > 0 && Math.max(w, h) > cap ? cap / Math.max(w, h) : 1;
  const sw = Math.max(1, Math.round(w * scale)), sh = Math.max(1, Math.round(h * scale));
  if (ui.source.width !== sw || ui.source.height !== sh) [ui.source.width, ui.source.height] = [sw, sh];
  srcCtx.imageSmoothingQuality = 'high';
  srcCtx.clearRect(0, 0, sw, sh);  // a transparent photo must not show the previous frame through
  srcCtx.drawImage(source, 0, 0, sw, sh);
  return srcCtx.getImageData(0, 0, sw, sh);
}

function show(imageData) {
  if (ui.result.width !== imageData.width || ui.result.height !== imageData.height) {
    [ui.result.width, ui.result.height] = [imageData.width, imageData.height];
  }
  outCtx.putImageData(imageData, 0, 0);
}

/** Stylize the uploaded photo with the current controls, after what is queued; changes made while a
 * render waits are picked up by it, so a slider drag costs at most one render behind. */
function renderPhoto() {
  if (photoDirty) return photoQueue;
  photoDirty = true;
  photoQueue = photoQueue.then(async () => {
    photoDirty = false;
    if (!photo || camera) return;
    const start = performance.now();
    const out = await model.stylize(drawSource(photo, photo.width, photo.height), controls());
    show(out);
    photosDone += 1;
    ui.fps.textContent = `photo ${out.width}×${out.height}: ${(performance.now() - start).toFixed(0)} ms`;
    ui.save.hidden = false;
  }).catch(fail);
  return photoQueue;
}

function loadPhoto(file) {
  photoQueue = photoQueue.then(async () => {
    // Pixels as stored: no colour-space conversion, so they are the bytes the CLI decodes.
    photo = await createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    if (camera) stopWebcam();
  }).catch(fail);
  photoDirty = false;  // a render queued before the load would see the old photo: queue one after it
  return renderPhoto();
}

async function startWebcam() {
  camera = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 360 } } });
  ui.video.srcObject = camera;
  await ui.video.play();
  ui.webcam.textContent = 'Stop webcam';
  frameTimes.length = 0;
  // As fast as the model goes, each time on the newest camera frame; setTimeout lets the page breathe.
  while (camera) {
    if (ui.video.readyState >= 2 && ui.video.videoWidth > 0) {
      const out = await webcamModel.stylize(drawSource(ui.video, ui.video.videoWidth, ui.video.videoHeight), controls());
      if (!camera) break;
      show(out);
      frames += 1;
      const now = performance.now();
      frameTimes.push(now);
      lastFrame = now;
      while (frameTimes.length > 2 && now - frameTimes[0] > 2000) frameTimes.shift();
      ui.fps.textContent = `${fps().toFixed(1)} fps · ${out.width}×${out.height}${webcamName ? ` · ${webcamName}` : ''}`;
    }
    await new Promise(resolve => setTimeout(resolve, 0));
  }
}

function stopWebcam() {
  camera?.getTracks().forEach(t => t.stop());
  camera = null;
  ui.video.srcObject = null;
  ui.webcam.textContent = 'Start webcam';
  renderPhoto();  // back to the uploaded photo, if there is one
}

/** Webcam frames per second over the last 2 s (0 until two frames are done). */
function fps() {
  const n = frameTimes.length;
  return n < 2 ? 0 : (1000 * (n - 1)) / (frameTimes[n - 1] - frameTimes[0]);
}

/** The style picker and a slider per style (a multi-style model), the strength slider (if the model has it). */
function buildControls(styles, hasStrength) {
  if (styles.length > 1) {
    ui.style.innerHTML = styles.map((s, i) => `<option value="${i}">${s}</option>`).join('')
      + '<option value="mix">mix</option>';
    ui.mix.innerHTML = styles.map((s, i) => `<label>${s} <input type="range" min="0" max="100" step="1" `
      + `value="${i === 0 ? 100 : 0}" data-style="${i}"><output>${i === 0 ? 100 : 0} %</output></label>`).join('');
    $('style-row').hidden = ui.mix.hidden = false;
  }
  $('strength-row').hidden = !hasStrength;
  const sliders = () => [...ui.mix.querySelectorAll('input')];
  const labelMix = () => {
    const shares = normalize(sliders().map(s => Number(s.value)), styles.length);
    sliders().forEach((s, i) => { s.nextElementSibling.textContent = `${Math.round(100 * shares[i])} %`; });
  };
  ui.style.addEventListener('change', () => {
    if (ui.style.value !== 'mix') sliders().forEach((s, i) => { s.value = i === Number(ui.style.value) ? 100 : 0; });
    labelMix();
    renderPhoto();
  });
  ui.mix.addEventListener('input', () => {
    const on = sliders().filter(s => Number(s.value) > 0);
    ui.style.value = on.length === 1 ? on[0].dataset.style : 'mix';
    labelMix();
    renderPhoto();
  });
  ui.strength.addEventListener('input', () => {
    ui.strengthValue.textContent = Number(ui.strength.value).toFixed(2);
    renderPhoto();
  });
  ui.preserve.addEventListener('change', renderPhoto);
  ui.maxSide.addEventListener('change', renderPhoto);
}

function fail(e) {
  console.error(e);
  ui.status.textContent = `error: ${e.message || e}`;
  ui.status.classList.add('error');
}

/** RGB bytes of an ImageData, base64 (compact across the test driver's JSON bridge). */
function rgbBase64(imageData) {
  const { data, width, height } = imageData;
  const rgb = new Uint8Array(width * height * 3);
  for (let p = 0, q = 0; q < data.length; p += 3, q += 4) rgb.set(data.subarray(q, q + 3), p);
  let s = '';
  for (let i = 0; i < rgb.length; i += 0x8000) s += String.fromCharCode(...rgb.subarray(i, i + 0x8000));
  return { width, height, rgb: btoa(s) };
}

async function main() {
  const meta = await (await fetch('metadata.json')).json();
  $('run').textContent = meta.run || '';
  const options = { backend: params.get('backend'), threads: Number(params.get('threads')) || 0 };
  model = await Model.load('generator.onnx', 'metadata.json', options);
  // The webcam runs the fast twin `make web` copied in (same styles and controls), unless ?webcam=full.
  const page = await fetch('page.json').then(r => (r.ok ? r.json() : {})).catch(() => ({}));
  webcamModel = model;
  if (page.webcam && params.get('webcam') !== 'full') {
    webcamModel = await Model.load(page.webcam.model, page.webcam.metadata, options);
    webcamName = page.webcam.name;
  }
  buildControls(model.styles, model.hasStrength);
  const threads = model.backend === 'wasm'
    ? ` × ${model.threads} thread${model.threads > 1 ? 's' : ''}${crossOriginIsolated ? '' : ' (not cross-origin isolated)'}`
    : '';
  ui.status.textContent = `backend ${model.backend === 'webgpu' ? 'WebGPU' : 'wasm'}${threads} · `
    + `${model.styles.join(', ')}${model.hasStrength ? ' · strength control' : ''}`
    + (webcamName ? ` · webcam: ${webcamName}` : '');
  // The PNG is encoded when asked for, not after every render.
  ui.save.addEventListener('click', () => { ui.save.href = ui.result.toDataURL('image/png'); });
  ui.photo.addEventListener('change', () => ui.photo.files[0] && loadPhoto(ui.photo.files[0]));
  ui.webcam.disabled = !navigator.mediaDevices?.getUserMedia;
  ui.webcam.addEventListener('click', () => (camera ? stopWebcam() : startWebcam().catch(e => { stopWebcam(); fail(e); })));
}

const ready = main();
ready.catch(fail);

// The test and benchmark hook: same functions the page uses, pixels as base64 RGB.
window.instyle = {
  ready: () => ready.then(() => ({ backend: model.backend, threads: model.threads, crossOriginIsolated,
                                   styles: model.styles, strength: model.hasStrength, inputs: model.inputs,
                                   webcam: webcamName })),
  /** Stylize the image at `url` at its own size with {weights, strength, preserveColor}. */
  async stylizeUrl(url, options = {}) {
    const bitmap = await createImageBitmap(await (await fetch(url)).blob(),
                                           { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    return rgbBase64(await model.stylize(ctx.getImageData(0, 0, bitmap.width, bitmap.height), options));
  },
  /** The photo renders done so far, once the queued ones have finished. */
  async settled() {
    for (let q = null; q !== photoQueue;) { q = photoQueue; await q; }
    return photosDone;
  },
  output: () => rgbBase64(outCtx.getImageData(0, 0, ui.result.width, ui.result.height)),
  fps,
  counter: () => ({ frames, last: lastFrame, t: performance.now(), width: ui.result.width, height: ui.result.height }),
  startWebcam: () => { startWebcam().catch(fail); },
  stopWebcam,
};
