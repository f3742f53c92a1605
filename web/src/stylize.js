// The model in the browser: onnxruntime-web session, and the exact pre/post-processing of
// `python -m pipeline stylize` (pipeline/serve/inference.py, pipeline/common/image_codec.py,
// pipeline/serve/color.py), so the page's pixels match the CLI's within the tolerance in docs/web.md.

const ORT_DIR = new URL('./ort/', import.meta.url).href;

// BT.601 full range, as pipeline/serve/color.py (chroma centred on 0.5 in [0, 1] units).
const TO_YCC = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]];
const TO_RGB = invert3(TO_YCC);

function invert3(m) {
  // The exact inverse (color.py uses torch.linalg.inv of the same matrix), not rounded textbook constants.
  const [[a, b, c], [d, e, f], [g, h, i]] = m;
  const A = e * i - f * h, B = -(d * i - f * g), C = d * h - e * g;
  const det = a * A + b * B + c * C;
  return [[A / det, -(b * i - c * h) / det, (b * f - c * e) / det],
          [B / det, (a * i - c * g) / det, -(a * f - c * d) / det],
          [C / det, -(a * h - b * g) / det, (a * e - b * d) / det]];
}

/** Which backend this browser offers: WebGPU when navigator.gpu gives an adapter, else wasm. */
export async function pickBackend(forced) {
  if (forced === 'wasm' || forced === 'webgpu') return forced;
  if (navigator.gpu) {
    try {
      if (await navigator.gpu.requestAdapter()) return 'webgpu';
    } catch (e) { /* no adapter: wasm */ }
  }
  return 'wasm';
}

/** Wasm threads: >1 only when the page is cross-origin isolated (SharedArrayBuffer); ORT's own
 * default (half the cores) would give 1 thread on a 2-vCPU machine. */
export function wasmThreads(requested) {
  if (!self.crossOriginIsolated) return 1;
  const cores = navigator.hardwareConcurrency || 1;
  return Math.max(1, Math.min(requested || cores, 16));
}

export class Model {
  /** Load ORT (the WebGPU build only when it is used: the wasm build is half the download) and the model. */
  static async load(modelUrl, metadataUrl, { backend, threads } = {}) {
    const chosen = await pickBackend(backend);
    const ort = await import(ORT_DIR + (chosen === 'webgpu' ? 'ort.webgpu.min.mjs' : 'ort.wasm.min.mjs'));
    ort.env.wasm.wasmPaths = ORT_DIR;
    ort.env.wasm.proxy = chosen === 'wasm';  // inference in a worker: the page stays responsive during a run
    ort.env.logLevel = 'error';  // not the warning that shape ops stay on the CPU under WebGPU (by design)
    ort.env.wasm.numThreads = wasmThreads(threads);
    const meta = await (await fetch(metadataUrl)).json();
    let session, used = chosen;
    try {
      session = await ort.InferenceSession.create(modelUrl, { executionProviders: [chosen] });
    } catch (e) {
      if (chosen !== 'webgpu') throw e;
      console.warn('WebGPU session failed, using wasm:', e);
      session = await ort.InferenceSession.create(modelUrl, { executionProviders: ['wasm'] });
      used = 'wasm';
    }
    return new Model(ort, session, meta, used);
  }

  constructor(ort, session, meta, backend) {
    this.ort = ort;
    this.session = session;
    this.meta = meta;
    this.backend = backend;
    this.threads = backend === 'wasm' ? ort.env.wasm.numThreads : null;
    this.styles = meta.styles || ['style'];
    // The graph's own inputs decide what is fed (image[, style][, strength]), not the metadata.
    this.inputs = session.inputNames;
    this.hasStrength = this.inputs.includes('strength');
    this.busy = Promise.resolve();
  }

  /** Stylize an ImageData with controls {weights: [...] (normalized here), strength, preserveColor};
   * returns a new ImageData (opaque). Calls are serialized: one session.run at a time. */
  stylize(imageData, controls = {}) {
    const run = this.busy.then(() => this._stylize(imageData, controls));
    this.busy = run.catch(() => {});
    return run;
  }

  async _stylize(imageData, { weights, strength = 1, preserveColor = false } = {}) {
    const { width: w, height: h, data } = imageData;
    const plane = w * h;
    const x = new Float32Array(3 * plane);
    for (let p = 0, q = 0; p < plane; p++, q += 4) {  // RGBA HWC uint8 → RGB CHW float in [0, 1]
      x[p] = data[q] / 255;
      x[plane + p] = data[q + 1] / 255;
      x[2 * plane + p] = data[q + 2] / 255;
    }
    const feeds = { image: new this.ort.Tensor('float32', x, [1, 3, h, w]) };
    if (this.inputs.includes('style')) {
      feeds.style = new this.ort.Tensor('float32', Float32Array.from(normalize(weights, this.styles.length)),
                                        [1, this.styles.length]);
    }
    if (this.hasStrength) feeds.strength = new this.ort.Tensor('float32', Float32Array.of(strength), [1]);
    const results = await this.session.run(feeds);
    const output = results[this.session.outputNames[0]];
    const y = output.data instanceof Float32Array ? output.data : await output.getData();
    for (const t of Object.values(feeds)) t.dispose?.();
    output.dispose?.();
    return toImageData(y, preserveColor ? data : null, w, h);
  }
}

/** Convex weights over `n` styles (pipeline/serve/controls.py parse_style): none or all zero → the first style. */
export function normalize(weights, n) {
  const w = Array.from({ length: n }, (_, i) => Math.max(0, Number(weights?.[i]) || 0));
  const total = w.reduce((a, b) => a + b, 0);
  return total > 0 ? w.map(v => v / total) : w.map((_, i) => (i === 0 ? 1 : 0));
}

/** CHW float RGB → opaque ImageData, as to_uint8 (clamp, ×255, round); with `photo` (RGBA bytes) the
 * stylized luminance with the photo's chroma (pipeline/serve/color.py preserve_color). The bytes are
 * written as v·255 into ImageData's Uint8ClampedArray, which clamps to 0..255 and rounds half to even,
 * as torch.round does (and twice as fast as clamping and rounding in script). */
export function toImageData(y, photo, w, h) {
  const plane = w * h;
  const out = new ImageData(w, h);
  const o = out.data;
  const g0 = plane, b0 = 2 * plane;
  if (!photo) {
    for (let p = 0, q = 0; p < plane; p++, q += 4) {
      o[q] = y[p] * 255;
      o[q + 1] = y[g0 + p] * 255;
      o[q + 2] = y[b0 + p] * 255;
      o[q + 3] = 255;
    }
    return out;
  }
  const [m0, m1, m2] = TO_YCC, [r0, r1, r2] = TO_RGB;
  for (let p = 0, q = 0; p < plane; p++, q += 4) {
    const r = y[p], g = y[g0 + p], b = y[b0 + p];
    const lum = m0[0] * r + m0[1] * g + m0[2] * b;
    const pr = photo[q] / 255, pg = photo[q + 1] / 255, pb = photo[q + 2] / 255;
    const cb = m1[0] * pr + m1[1] * pg + m1[2] * pb, cr = m2[0] * pr + m2[1] * pg + m2[2] * pb;
    o[q] = (r0[0] * lum + r0[1] * cb + r0[2] * cr) * 255;
    o[q + 1] = (r1[0] * lum + r1[1] * cb + r1[2] * cr) * 255;
    o[q + 2] = (r2[0] * lum + r2[1] * cb + r2[2] * cr) * 255;
    o[q + 3] = 255;
  }
  return out;
}
