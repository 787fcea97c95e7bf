// The deepvis explorer: plain JavaScript, no build step, nothing from any other origin.
// Every URL is relative to the page, so the explorer works behind a proxy path.
//
// The page holds each result's raw float32 arrays and draws them itself with the colormap
// tables and scale rules of deepvis.render (the tables come from api/config): the 2-D map of a
// method (map_of), the scale (scale_of: the 99th percentile of |a|, shared_scale), the colours
// (colorize), the resampling onto the image (resample) and the overlay (gray base, integer
// blend). Opacity, colormap, sign and scale therefore change here without a request.
(() => {
  "use strict";

  const $ = (sel) => document.querySelector(sel);
  const DEFAULT_METHODS = ["guided_backprop", "grad_cam", "saliency"];
  const MAX_OVERLAY = 512;

  const state = {
    model: "", sample: "", methods: [], target: "", layer: "", topk: 16,
    scale: "shared", cmap: "auto", sign: "auto", overlay: "auto", alpha: 0.5,
  };
  let config = null;
  let models = [];
  let model = null;         // the chosen model's entry of api/models
  let layers = null;        // its DescribeModel
  let image = null;         // {blob, name, width, height, pixels: Uint8ClampedArray RGBA}
  let results = {};         // method -> decoded result (or {error})
  let checks = null;        // the shown view's api/evaluate answer: {run, methods, ...}
  let predictions = [];
  let runId = 0;
  let layerRun = 0;
  let layerResults = null;  // {activations, cam}
  let fv = null;            // the running or last feature visualization
  let pending = 0;

  // --- requests ----------------------------------------------------------------------------

  function busy(delta) {
    pending += delta;
    document.body.dataset.pending = String(pending);
  }

  async function request(url, options) {
    busy(1);
    try {
      let response;
      try {
        response = await fetch(url, withPageHeader(options));
      } catch (err) {
        return { error: { code: "UNREACHABLE", message: "the explorer's gateway cannot be reached: " + err.message } };
      }
      let body = null;
      try { body = await response.json(); } catch (err) { body = null; }
      if (!response.ok) {
        const e = body && body.code ? body : { code: "HTTP " + response.status, message: response.statusText };
        return { error: e };
      }
      return { body };
    } finally {
      busy(-1);
    }
  }

  // Every POST says it comes from this page: another origin's page cannot send this header
  // without a CORS preflight, which the gateway never grants.
  function withPageHeader(options) {
    if (!options || options.method !== "POST") return options;
    return { ...options, headers: { "X-Deepvis-Page": "1" } };
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, String(v));
    return q.toString();
  }

  function errorText(e) {
    return e.code + ": " + e.message + (e.hint ? "\n" + e.hint : "");
  }

  function showError(el, e) {
    const p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = errorText(e);
    el.replaceChildren(p);
  }

  // --- arrays ------------------------------------------------------------------------------

  function decode(enc) {
    const bin = atob(enc.data);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const data = enc.dtype === "int32" ? new Int32Array(bytes.buffer) : new Float32Array(bytes.buffer);
    return { shape: enc.shape, data, dtype: enc.dtype };
  }

  // An array as a .npy file (format 1.0), for the NPY downloads.
  function npy(arr) {
    const descr = arr.dtype === "int32" ? "<i4" : "<f4";
    const shape = arr.shape.length === 1 ? "(" + arr.shape[0] + ",)" : "(" + arr.shape.join(", ") + ")";
    let header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
    const total = 10 + header.length + 1;
    header += " ".repeat((64 - (total % 64)) % 64) + "\n";
    const head = new Uint8Array(10 + header.length);
    head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0], 0);
    head[8] = header.length & 0xff;
    head[9] = header.length >> 8;
    for (let i = 0; i < header.length; i++) head[10 + i] = header.charCodeAt(i);
    return new Blob([head, arr.data], { type: "application/octet-stream" });
  }

  // --- deepvis.render, in the page ---------------------------------------------------------

  const f32 = Math.fround;
  const clean = (v) => (Number.isFinite(v) ? v : 0);

  function styleOf(method) {
    const s = model && model.styles[method];
    return s || { signed: null, reduce: "sum", overlay: false };
  }

  // render.map_of: [H, W] or [C, H, W] -> a float32 [H, W] map, signed or |a|.
  function mapOf(method, arr, sign) {
    const style = styleOf(method);
    const shape = arr.shape;
    const [c, h, w] = shape.length === 2 ? [1, shape[0], shape[1]] : shape;
    const a = new Float32Array(arr.data.length);
    let negative = false;
    for (let i = 0; i < a.length; i++) { a[i] = clean(arr.data[i]); if (a[i] < 0) negative = true; }
    let signed = sign === "auto" ? style.signed : sign === "signed";
    if (signed === null) signed = negative;
    const n = h * w;
    const out = new Float32Array(n);
    let reduction = "";
    if (shape.length === 3) {
      const several = c > 1;
      if (style.reduce === "mean") {
        for (let i = 0; i < n; i++) { let s = 0; for (let k = 0; k < c; k++) s = f32(s + a[k * n + i]); out[i] = f32(s / c); }
        reduction = several ? "mean over channels" : "";
      } else if (signed) {
        for (let i = 0; i < n; i++) { let s = 0; for (let k = 0; k < c; k++) s = f32(s + a[k * n + i]); out[i] = s; }
        reduction = several ? "signed sum over channels" : "";
      } else if (style.reduce === "max") {
        for (let i = 0; i < n; i++) { let m = 0; for (let k = 0; k < c; k++) m = Math.max(m, Math.abs(a[k * n + i])); out[i] = m; }
        reduction = several ? "max |a| over channels" : "";
      } else {
        for (let i = 0; i < n; i++) { let s = 0; for (let k = 0; k < c; k++) s = f32(s + Math.abs(a[k * n + i])); out[i] = s; }
        reduction = several ? "sum of |a| over channels" : "";
      }
    } else {
      out.set(a);
    }
    if (!signed) for (let i = 0; i < n; i++) out[i] = Math.abs(out[i]);
    return { values: out, h, w, signed, reduction };
  }

  function cmapName(signed) {
    if (state.cmap !== "auto") return state.cmap;
    return signed ? config.defaults.signed_cmap : config.defaults.unsigned_cmap;
  }

  // numpy.percentile's default ("linear"), on sorted float64 values.
  function percentile(sorted, q) {
    const n = sorted.length;
    const vi = (n - 1) * (q / 100);
    let lo = Math.floor(vi);
    let hi = lo + 1;
    if (vi >= n - 1) { lo = n - 1; hi = n - 1; }
    const g = vi - lo;
    const a = sorted[lo];
    const b = sorted[hi];
    const d = b - a;
    return g >= 0.5 ? b - d * (1 - g) : a + d * g;
  }

  // render.scale_of: the bound of one map, or of several pooled.
  function scaleOf(maps, signed, cmap) {
    const clip = config.defaults.clip;
    let total = 0;
    for (const m of maps) total += m.length;
    const flat = new Float64Array(total);
    let j = 0;
    for (const m of maps) for (let i = 0; i < m.length; i++) flat[j++] = Math.abs(m[i]);
    let peak = 0;
    for (let i = 0; i < flat.length; i++) if (flat[i] > peak) peak = flat[i];
    const name = cmap || cmapName(signed);
    if (!(peak >= config.defaults.zero_below)) return { signed, vmax: 0, peak, clip, cmap: name };
    flat.sort();
    let vmax = clip === null || clip === 100 ? peak : percentile(flat, clip);
    let used = clip === 100 ? null : clip;
    if (vmax <= 0) { vmax = peak; used = null; }
    return { signed, vmax, peak, clip: used, cmap: name };
  }

  // render.shared_scale: the widest bound and the largest peak.
  function sharedScale(scales) {
    const first = scales[0];
    return {
      signed: first.signed,
      vmax: Math.max(...scales.map((s) => s.vmax)),
      peak: Math.max(...scales.map((s) => s.peak)),
      clip: scales.every((s) => s.clip === first.clip) ? first.clip : null,
      cmap: first.cmap,
    };
  }

  const tables = {};
  function table(name) {
    if (!tables[name]) {
      const hex = config.colormaps[name].rgb;
      const t = new Uint8Array(hex.length / 2);
      for (let i = 0; i < t.length; i++) t[i] = parseInt(hex.substr(2 * i, 2), 16);
      tables[name] = t;
    }
    return tables[name];
  }

  // render.colorize: the LUT index of one value.
  function lutIndex(v, scale, n) {
    let t = scale.vmax <= 0 ? 0 : clean(v) / scale.vmax;
    if (scale.signed) t = (Math.min(Math.max(t, -1), 1) + 1) / 2;
    else t = Math.min(Math.max(t, 0), 1);
    return Math.floor(t * (n - 1) + 0.5);
  }

  function colorize(values, scale) {
    const lut = table(scale.cmap);
    const n = lut.length / 3;
    const out = new Uint8ClampedArray(values.length * 4);
    for (let i = 0; i < values.length; i++) {
      const k = lutIndex(values[i], scale, n) * 3;
      out[4 * i] = lut[k]; out[4 * i + 1] = lut[k + 1]; out[4 * i + 2] = lut[k + 2]; out[4 * i + 3] = 255;
    }
    return out;
  }

  // render._axis_weights: bilinear weights with pixel centres at +0.5, widened when shrinking.
  function axisWeights(nOut, nIn, start, length) {
    const w = new Float64Array(nOut * nIn);
    const inside = new Uint8Array(nOut);
    const ratio = nIn / length;
    const support = Math.max(1, ratio);
    for (let i = 0; i < nOut; i++) {
      const centre = i + 0.5;
      inside[i] = centre >= start && centre < start + length ? 1 : 0;
      const src = (centre - start) * ratio - 0.5;
      let total = 0;
      for (let j = 0; j < nIn; j++) {
        const v = Math.max(0, 1 - Math.abs(j - src) / support);
        w[i * nIn + j] = v;
        total += v;
      }
      if (total === 0) {
        const nearest = Math.min(Math.max(Math.floor(src + 0.5), 0), nIn - 1);
        w[i * nIn + nearest] = 1;
        total = 1;
      }
      for (let j = 0; j < nIn; j++) w[i * nIn + j] = inside[i] ? w[i * nIn + j] / total : 0;
    }
    return { w, inside };
  }

  // render.resample: the map on a width x height grid, placed on the region.
  function resample(map, width, height, region) {
    const [x0, y0, rw, rh] = region || [0, 0, width, height];
    const wy = axisWeights(height, map.h, y0, rh);
    const wx = axisWeights(width, map.w, x0, rw);
    const tmp = new Float64Array(height * map.w);  // wy @ values
    for (let i = 0; i < height; i++) {
      for (let k = 0; k < map.h; k++) {
        const f = wy.w[i * map.h + k];
        if (f === 0) continue;
        for (let j = 0; j < map.w; j++) tmp[i * map.w + j] += f * map.values[k * map.w + j];
      }
    }
    const out = new Float64Array(height * width);  // @ wx.T
    for (let i = 0; i < height; i++) {
      for (let j = 0; j < width; j++) {
        let s = 0;
        for (let k = 0; k < map.w; k++) s += tmp[i * map.w + k] * wx.w[j * map.w + k];
        out[i * width + j] = s;
      }
    }
    const inside = new Uint8Array(height * width);
    for (let i = 0; i < height; i++) for (let j = 0; j < width; j++) inside[i * width + j] = wy.inside[i] & wx.inside[j];
    return { values: out, inside };
  }

  function roundHalfEven(x) {
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  // render._blend over render.gray_base (Pillow's "L": ITU-R 601 luma, in fixed point).
  function overlayPixels(colours, inside, alpha) {
    const a = roundHalfEven(alpha * 256);
    const src = image.pixels;
    const out = new Uint8ClampedArray(src.length);
    for (let i = 0; i < inside.length; i++) {
      const base = (src[4 * i] * 19595 + src[4 * i + 1] * 38470 + src[4 * i + 2] * 7471 + 0x8000) >> 16;
      for (let c = 0; c < 3; c++) {
        out[4 * i + c] = inside[i] ? (a * colours[4 * i + c] + (256 - a) * base + 128) >> 8 : base >> 1;
      }
      out[4 * i + 3] = 255;
    }
    return out;
  }

  function pixelsToURI(pixels, width, height) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
    return canvas.toDataURL("image/png");
  }

  const number = (v) => (v === 0 ? "0" : Number(v.toPrecision(3)).toString());

  function describe(scale) {
    if (scale.vmax === 0) return "zero everywhere (max |a| = " + number(scale.peak) + "), " + scale.cmap;
    let how = scale.clip !== null ? "p" + scale.clip + " of |a|" : "max |a|";
    if (scale.peak > scale.vmax) how += "; max " + number(scale.peak);
    return number(scale.signed ? -scale.vmax : 0) + " .. " + number(scale.vmax) + " (" + how + "), " + scale.cmap;
  }

  function colorbarURI(scale) {
    const rows = 64;
    const values = new Float64Array(rows);
    for (let i = 0; i < rows; i++) {
      const r = (i + 0.5) / rows;
      const vmin = scale.signed ? -scale.vmax : 0;
      values[i] = scale.vmax - r * (scale.vmax - vmin);
    }
    return pixelsToURI(colorize(values, scale), 1, rows);
  }

  // A picture of a map: over the image or alone, as render.draw draws it.
  function drawMap(method, arr, region, scale, overlay) {
    const m = mapOf(method, arr, state.sign);
    if (overlay && image) {
      // The region is in the image's own pixels; scaled with it, as render.draw does.
      const [x, y, rw, rh] = region || [0, 0, image.original[0], image.original[1]];
      const box = [x * image.sx, y * image.sy, rw * image.sx, rh * image.sy];
      const { values, inside } = resample(m, image.width, image.height, box);
      const pixels = overlayPixels(colorize(values, scale), inside, state.alpha);
      return { uri: pixelsToURI(pixels, image.width, image.height), width: image.width, height: image.height, map: m, overlay: true, box };
    }
    return { uri: pixelsToURI(colorize(m.values, scale), m.w, m.h), width: m.w, height: m.h, map: m, overlay: false };
  }

  function isOverlay(method) {
    if (state.overlay === "on") return true;
    if (state.overlay === "off") return false;
    return styleOf(method).overlay;
  }

  // Each method's scale: its own, or shared within its family (Comparison.scales).
  function scalesFor(entries) {
    const own = {};
    for (const [key, method, arr] of entries) {
      const m = mapOf(method, arr, state.sign);
      own[key] = scaleOf([m.values], m.signed, null);
    }
    if (state.scale !== "shared") return own;
    const out = {};
    for (const signed of [true, false]) {
      const keys = Object.keys(own).filter((k) => own[k].signed === signed);
      if (!keys.length) continue;
      const shared = sharedScale(keys.map((k) => own[k]));
      for (const k of keys) out[k] = { ...shared, cmap: own[k].cmap };
    }
    return out;
  }

  // --- cards -------------------------------------------------------------------------------

  function targetText(target, preds) {
    if (!target) return "the predicted class";
    if (target.class !== undefined) {
      const p = (preds || []).find((q) => q.index === target.class);
      const label = p ? p.label : "";
      let text = label === "" || label === String(target.class) ? "class " + target.class : label + " [" + target.class + "]";
      if (p) text += " (p=" + p.score.toFixed(3) + ")";
      return text;
    }
    const where = target.y === null || target.y === undefined ? "" : "[" + target.y + "," + target.x + "]";
    return "neuron " + target.layer + ":" + target.channel + where;
  }

  function link(text, href, filename) {
    const a = document.createElement("a");
    a.textContent = text;
    a.href = href;
    a.download = filename;
    return a;
  }

  function npyLink(text, arr, filename) {
    const a = document.createElement("a");
    a.textContent = text;
    a.href = "#";
    a.download = filename;
    a.addEventListener("click", (ev) => {
      if (a.dataset.ready) return;
      ev.preventDefault();
      a.href = URL.createObjectURL(npy(arr));
      a.dataset.ready = "1";
      a.click();
    });
    return a;
  }

  function fileStem() {
    return (image ? image.name : "image").replace(/\.[^.]*$/, "").replace(/[^\w.-]/g, "_");
  }

  function renderCard(card, key, method, result, scale, title) {
    const arr = result.array;
    const pic = drawMap(method, arr, result.input_region, scale, isOverlay(method));
    const head = document.createElement("h3");
    head.textContent = title;
    const picture = document.createElement("div");
    picture.className = "picture";
    const img = document.createElement("img");
    img.className = "map";
    img.alt = title;
    img.src = pic.uri;
    img.dataset.method = method;
    const bar = document.createElement("div");
    bar.className = "bar";
    const top = document.createElement("span");
    top.textContent = (scale.peak > scale.vmax ? "≥ " : "") + number(scale.vmax);
    const barImg = document.createElement("img");
    barImg.alt = "colour scale of " + method;
    barImg.src = colorbarURI(scale);
    const bottom = document.createElement("span");
    bottom.textContent = number(scale.signed ? -scale.vmax : 0);
    bar.append(top, barImg, bottom);
    picture.append(img, bar);
    const info = document.createElement("p");
    info.className = "scale muted";
    info.textContent = describe(scale) + (pic.map.reduction ? " · " + pic.map.reduction : "");
    const hover = document.createElement("p");
    hover.className = "hover";
    hover.textContent = "hover the map for its value";
    img.addEventListener("mousemove", (ev) => {
      const r = img.getBoundingClientRect();
      const px = Math.floor(((ev.clientX - r.left) / r.width) * pic.width);
      const py = Math.floor(((ev.clientY - r.top) / r.height) * pic.height);
      let mx = px, my = py;
      if (pic.overlay) {
        const [x0, y0, rw, rh] = pic.box;
        mx = Math.floor(((px + 0.5 - x0) / rw) * pic.map.w);
        my = Math.floor(((py + 0.5 - y0) / rh) * pic.map.h);
      }
      if (mx < 0 || my < 0 || mx >= pic.map.w || my >= pic.map.h) {
        hover.textContent = "(" + px + ", " + py + "): outside what the model saw";
        return;
      }
      const v = pic.map.values[my * pic.map.w + mx];
      hover.textContent = "value " + v.toPrecision(4) + " at map (" + mx + ", " + my + ")";
      hover.dataset.value = String(v);
    });
    const notes = document.createElement("div");
    if (scale.vmax === 0) {
      const p = document.createElement("p");
      p.textContent = "map is zero everywhere (max |a| = " + number(scale.peak) + "): drawn neutral";
      notes.append(p);
    }
    for (const w of result.warnings || []) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = "note: " + w;
      notes.append(p);
    }
    const timing = document.createElement("p");
    timing.className = "muted";
    timing.textContent = "batch of " + result.batch_size + " · queue " + result.queue_ms.toFixed(1) + " ms · compute " + result.compute_ms.toFixed(1) + " ms";
    const downloads = document.createElement("div");
    downloads.className = "downloads";
    const stem = fileStem() + "-" + key;
    downloads.append(link("PNG", pic.uri, stem + ".png"), npyLink("NPY", arr, stem + ".npy"));
    card.replaceChildren(head, picture, info, hover, notes, timing, downloads);
    card.dataset.state = "drawn";
    drawChecks(card, key);  // the grid's cards (key = method), not the layer view's
  }

  // --- checks: deletion, insertion and randomization beside each picture ---------------------

  // The curves come as PNGs drawn by the gateway with deepvis.curve_plot: the same pictures
  // as deepvis report --checks and deepvis evaluate --plots, and the raw numbers beside them.
  function checkFigure(uri, alt, caption) {
    const f = document.createElement("figure");
    f.className = "curve";
    const img = document.createElement("img");
    img.alt = alt;
    img.src = uri;
    const c = document.createElement("figcaption");
    c.append(...caption);
    f.append(img, c);
    return f;
  }

  function valueSpan(cls, value, text, data) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    span.dataset.value = String(value);
    Object.assign(span.dataset, data || {});
    return span;
  }

  function drawChecks(card, method) {
    const old = card.querySelector(".checks");
    if (old) old.remove();
    if (!checks || !checks.methods[method]) return;
    const m = checks.methods[method];
    const box = document.createElement("div");
    box.className = "checks";
    box.dataset.method = method;
    for (const [kind, better] of [["deletion", "lower is better"], ["insertion", "higher is better"]]) {
      const c = m[kind];
      if (!c) continue;
      box.append(checkFigure(c.plot, kind + " curve of " + method,
        [kind + " AUC ", valueSpan("auc", c.auc, c.auc.toFixed(3), { kind }), " (" + better + ")"]));
    }
    const r = m.randomization;
    if (r) {
      const top = r.top_layer;
      const verdict = document.createElement("strong");
      verdict.className = r.passes === null ? "fail" : r.passes ? "pass" : "fail";
      verdict.textContent = r.passes === null ? "no reading (a constant map)" : r.passes ? "passes" : "fails";
      box.append(checkFigure(r.plot, "randomization curve of " + method, [
        "Spearman after " + r.layers[0] + " re-initialized: ",
        valueSpan("rho", top === null ? "NaN" : top, top === null ? "NaN" : top.toFixed(2)),
        " — ", verdict, " (below " + r.pass_below + " passes)",
      ]));
    }
    const info = document.createElement("p");
    info.className = "muted";
    info.textContent = "checks: class " + checks.class + ", " + checks.steps + " steps, seed " + checks.seed +
      ", computed " + (checks.compute_ms / 1000).toFixed(2) + " s";
    box.append(info);
    card.append(box);
  }

  async function runChecks() {
    const status = $("#checks-status");
    if (!image || !model) { status.textContent = "choose an image first"; return; }
    // activations attributes no class: evaluate would refuse it, so it is left out.
    const shown = state.methods.filter((m) => m !== "activations" && results[m] && !results[m].error);
    if (!shown.length) { status.textContent = "no attribution picture to check (activations has no checks)"; return; }
    const run = runId;
    const steps = $("#checks-steps").value;
    status.dataset.state = "running";
    status.textContent = "checking " + shown.join(", ") + "…";
    const r = await request("api/evaluate?" + query({ model: state.model, methods: shown.join(","),
      target: state.target, steps }), { method: "POST", body: image.blob });
    if (run !== runId) return;  // the view changed meanwhile
    if (r.error) {
      status.dataset.state = "error";
      showError(status, r.error);
      return;
    }
    checks = r.body;
    for (const method of shown) {
      const card = $("#grid").querySelector('[data-card="' + method + '"]');
      if (card && card.dataset.state === "drawn") drawChecks(card, method);
    }
    status.dataset.state = "done";
    status.textContent = "checked " + shown.join(", ") + " in " + (checks.compute_ms / 1000).toFixed(2) + " s";
  }

  function cardTitle(method, result) {
    const parts = [method, targetText(result.target, result.predictions)];
    if (result.layer) parts.push(result.layer);
    return parts.join(" · ");
  }

  function drawGrid() {
    const grid = $("#grid");
    const entries = state.methods.filter((m) => results[m] && results[m].array).map((m) => [m, m, results[m].array]);
    const scales = scalesFor(entries);
    for (const method of state.methods) {
      const card = grid.querySelector('[data-card="' + method + '"]');
      const r = results[method];
      if (!card || !r) continue;
      if (r.error) { showError(card, r.error); card.dataset.state = "error"; continue; }
      renderCard(card, method, method, r, scales[method], cardTitle(method, r));
    }
    drawLayer();
  }

  // --- predictions and target ----------------------------------------------------------------

  function drawPredictions() {
    const chips = $("#chips");
    chips.replaceChildren();
    const first = state.methods.map((m) => results[m]).find((r) => r && !r.error);
    predictions = first ? first.predictions : [];
    const target = first ? first.target : null;
    for (const p of predictions) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "chip";
      b.dataset.index = String(p.index);
      b.textContent = (p.label || String(p.index)) + " · " + p.score.toFixed(3);
      b.setAttribute("aria-pressed", target && target.class === p.index ? "true" : "false");
      b.addEventListener("click", () => setTarget(String(p.index)));
      chips.append(b);
    }
    const t = $("#target");
    t.textContent = "target: " + (first ? targetText(target, predictions) : "-") + (state.target ? "" : " (the predicted class)");
    if (state.target) {
      const reset = document.createElement("button");
      reset.type = "button";
      reset.textContent = "back to the predicted class";
      reset.addEventListener("click", () => setTarget(""));
      t.append(" ", reset);
    }
  }

  function setTarget(target) {
    state.target = target;
    saveState();
    explainAll();
  }

  // --- explaining ----------------------------------------------------------------------------

  async function explainOne(params) {
    const r = await request("api/explain?" + query(params), { method: "POST", body: image.blob });
    if (r.error) return r;
    const body = r.body;
    body.array = body.array ? decode(body.array) : null;
    const arrays = {};
    for (const [k, v] of Object.entries(body.arrays)) arrays[k] = decode(v);
    body.arrays = arrays;
    return body;
  }

  async function explainAll() {
    if (!image || !model) return;
    const run = ++runId;
    const grid = $("#grid");
    grid.replaceChildren();
    results = {};
    checks = null;
    $("#checks-status").textContent = "";
    $("#checks-status").dataset.state = "idle";
    for (const method of state.methods) {
      const card = document.createElement("article");
      card.className = "card";
      card.dataset.card = method;
      card.dataset.state = "loading";
      const p = document.createElement("p");
      p.className = "busy";
      p.textContent = method + ": computing…";
      card.append(p);
      grid.append(card);
    }
    // Sent together: the server batches them (and other pages' requests) as it would any
    // clients' concurrent calls.
    const answers = await Promise.all(state.methods.map((method) =>
      explainOne({ model: state.model, method, target: state.target })));
    if (run !== runId) return;
    state.methods.forEach((m, i) => { results[m] = answers[i]; });
    drawPredictions();
    drawGrid();
    loadLayer();
  }

  // --- layer browser ------------------------------------------------------------------------

  function spatialLayers() {
    return (layers ? layers.layers : []).filter((l) => l.name && l.output_shape.length === 3);
  }

  async function loadLayer() {
    if (!image || !layers || !state.layer) return;
    const run = ++layerRun;
    $("#fmaps").replaceChildren(Object.assign(document.createElement("p"), { className: "busy", textContent: "reading " + state.layer + "…" }));
    $("#layer-cam").replaceChildren();
    const [acts, cam] = await Promise.all([
      explainOne({ model: state.model, method: "activations", layer: state.layer, target: state.target, top_k_channels: state.topk }),
      explainOne({ model: state.model, method: "grad_cam", layer: state.layer, target: state.target }),
    ]);
    if (run !== layerRun) return;
    layerResults = { acts, cam };
    drawLayer();
  }

  function drawLayer() {
    if (!layerResults) return;
    const { acts, cam } = layerResults;
    const fmaps = $("#fmaps");
    if (acts.error) { showError(fmaps, acts.error); } else {
      const maps = acts.arrays[acts.layer];
      const channels = acts.arrays[acts.layer + ".channels"];
      const [k, h, w] = maps.shape;
      const tiles = [];
      let negative = false;
      for (let i = 0; i < k; i++) {
        const t = new Float32Array(maps.data.buffer, i * h * w * 4, h * w);
        for (const v of t) if (v < 0) negative = true;
        tiles.push(t);
      }
      const scale = scaleOf(tiles, negative, null);  // one scale for every tile (render.grid)
      fmaps.replaceChildren();
      tiles.forEach((t, i) => {
        const channel = channels ? channels.data[i] : i;
        const b = document.createElement("button");
        b.type = "button";
        b.className = "fmap";
        b.dataset.channel = String(channel);
        b.title = acts.layer + " channel " + channel;
        const img = document.createElement("img");
        img.alt = acts.layer + " channel " + channel;
        img.src = pixelsToURI(colorize(t, scale), w, h);
        const label = document.createElement("span");
        label.textContent = String(channel);
        b.append(img, label);
        b.addEventListener("click", () => openFeatureVis(acts.layer, channel));
        fmaps.append(b);
      });
      $("#fmaps-scale").textContent = k + " channels of " + acts.layer + ", one scale: " + describe(scale);
    }
    const holder = $("#layer-cam");
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.card = "layer-grad_cam";
    holder.replaceChildren(card);
    if (cam.error) { showError(card, cam.error); return; }
    const m = mapOf("grad_cam", cam.array, state.sign);
    renderCard(card, "grad_cam-" + cam.layer, "grad_cam", cam, scaleOf([m.values], m.signed, null), "Grad-CAM · " + targetText(cam.target, cam.predictions) + " · " + cam.layer);
  }

  // --- feature visualization ----------------------------------------------------------------

  function openFeatureVis(layer, channel) {
    $("#fv-hint").hidden = true;
    $("#fv-start").disabled = false;
    $("#fv-target").disabled = false;
    $("#fv-title").textContent = layer + ":" + channel;
    $("#fv-panel").dataset.layer = layer;
    $("#fv-panel").dataset.channel = String(channel);
    startFeatureVis();
  }

  function fvStatus(text, st) {
    const s = $("#fv-status");
    s.textContent = text;
    if (st) s.dataset.state = st;
  }

  async function cancelFeatureVis() {
    const job = fv;
    if (!job || job.done) return;
    job.done = true;
    $("#fv-cancel").disabled = true;
    if (job.id) await request("api/jobs/" + job.id + "/cancel", { method: "POST" });
    job.abort.abort();
    fvStatus("cancelled at step " + job.step, "cancelled");
  }

  async function startFeatureVis() {
    await cancelFeatureVis();
    const panel = $("#fv-panel");
    const layer = panel.dataset.layer;
    const channel = panel.dataset.channel;
    const steps = Math.max(8, parseInt($("#fv-steps").value, 10) || 128);
    const every = Math.max(1, Math.round(steps / 16));
    const job = { id: "", step: 0, frames: 0, done: false, abort: new AbortController() };
    fv = job;
    $("#fv-image").hidden = true;
    $("#fv-downloads").replaceChildren();
    $("#fv-attribution").replaceChildren();
    $("#fv-progress").value = 0;
    $("#fv-status").dataset.frames = "0";
    $("#fv-cancel").disabled = false;
    fvStatus("starting…", "running");
    const url = "api/visualize?" + query({ model: state.model, layer, channel, steps, progress_every: every });
    busy(1);
    let response;
    try {
      response = await fetch(url, withPageHeader({ method: "POST", body: image ? image.blob : null, signal: job.abort.signal }));
    } catch (err) {
      busy(-1);
      if (!job.done) { job.done = true; fvStatus("the explorer's gateway cannot be reached: " + err.message, "error"); }
      return;
    }
    if (!response.ok) {
      busy(-1);
      let e = { code: "HTTP " + response.status, message: response.statusText };
      try { e = await response.json(); } catch (err) { /* keep the HTTP status */ }
      job.done = true;
      $("#fv-cancel").disabled = true;
      fvStatus(errorText(e), "error");
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) name = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          onFeatureVisEvent(job, name, data ? JSON.parse(data) : null);
        }
      }
    } catch (err) {
      if (!job.done) fvStatus("the stream broke: " + err.message, "error");
    } finally {
      busy(-1);
      if (fv === job) $("#fv-cancel").disabled = true;
    }
  }

  function onFeatureVisEvent(job, name, data) {
    if (fv !== job) return;
    if (name === "job") { job.id = data.id; return; }
    if (name === "progress") {
      job.step = data.step;
      $("#fv-progress").max = data.steps || 1;
      $("#fv-progress").value = data.step;
      if (data.image) {
        job.frames += 1;
        const img = $("#fv-image");
        img.src = data.image;
        img.hidden = false;
        $("#fv-status").dataset.frames = String(job.frames);
      }
      fvStatus("step " + data.step + " / " + data.steps + " · objective " + data.objective.toPrecision(4) + " · frame " + job.frames);
      return;
    }
    if (name === "result") {
      job.done = true;
      const img = $("#fv-image");
      img.src = data.images[0];
      img.hidden = false;
      $("#fv-progress").value = $("#fv-progress").max;
      $("#fv-caption").textContent = "after " + data.steps + " steps, objective " + data.objective.toPrecision(4);
      const stem = "featurevis-" + $("#fv-title").textContent.replace(/[^\w.-]/g, "_");
      const array = decode(data.array);
      $("#fv-downloads").replaceChildren(link("PNG", data.images[0], stem + ".png"), npyLink("NPY", array, stem + ".npy"));
      if (data.attribution && image) {
        const card = document.createElement("article");
        card.className = "card";
        card.dataset.card = "fv-attribution";
        $("#fv-attribution").replaceChildren(card);
        const attribution = decode(data.attribution);
        const m = mapOf("guided_backprop", attribution, state.sign);
        const r = { array: attribution, input_region: data.attribution_region, warnings: [], batch_size: 1, queue_ms: data.queue_ms, compute_ms: data.compute_ms };
        renderCard(card, "attribution-" + stem, "guided_backprop", r, scaleOf([m.values], m.signed, null), "this channel's guided backprop on the image");
      }
      fvStatus("done: " + data.steps + " steps, " + job.frames + " progress frames", "done");
      return;
    }
    if (name === "error") { job.done = true; fvStatus(errorText(data), "error"); return; }
    if (name === "cancelled") { job.done = true; fvStatus("cancelled at step " + job.step, "cancelled"); }
  }

  // --- export ------------------------------------------------------------------------------

  // The current view as deepvis report's self-contained page (one file, nothing elsewhere).
  async function exportReport() {
    const status = $("#export-status");
    if (!image) { status.textContent = "choose an image first"; return; }
    status.textContent = "writing the report…";
    const params = { model: state.model, methods: state.methods.join(","), target: state.target,
                     cmap: state.cmap === "auto" ? "" : state.cmap, name: image.name };
    busy(1);
    try {
      let response;
      try {
        response = await fetch("api/report?" + query(params), withPageHeader({ method: "POST", body: image.blob }));
      } catch (err) {
        status.textContent = "the explorer's gateway cannot be reached: " + err.message;
        return;
      }
      if (!response.ok) {
        let e = { code: "HTTP " + response.status, message: response.statusText };
        try { e = await response.json(); } catch (err) { /* keep the HTTP status */ }
        status.textContent = errorText(e);
        return;
      }
      const a = link("report", URL.createObjectURL(await response.blob()), fileStem() + "-report.html");
      document.body.append(a);
      a.click();
      a.remove();
      status.textContent = "report written: " + fileStem() + "-report.html";
    } finally {
      busy(-1);
    }
  }

  // --- the image ----------------------------------------------------------------------------

  async function setImage(blob, name) {
    const url = URL.createObjectURL(blob);
    const img = new Image();
    try {
      img.src = url;
      await img.decode();
    } catch (err) {
      URL.revokeObjectURL(url);
      $("#banner").hidden = false;
      $("#banner").textContent = name + " is not an image this browser can read";
      return;
    }
    // Overlays are drawn at the image's size, as deepvis.render draws them; a larger image
    // is first reduced to MAX_OVERLAY on its longer side (by the browser's own resampling),
    // so that redrawing stays instant.
    const factor = Math.min(1, MAX_OVERLAY / Math.max(img.naturalWidth, img.naturalHeight));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(img.naturalWidth * factor));
    canvas.height = Math.max(1, Math.round(img.naturalHeight * factor));
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    URL.revokeObjectURL(url);
    image = {
      blob, name, width: canvas.width, height: canvas.height, pixels,
      sx: canvas.width / img.naturalWidth, sy: canvas.height / img.naturalHeight,
      original: [img.naturalWidth, img.naturalHeight],
    };
    const shown = $("#source");
    shown.src = canvas.toDataURL("image/png");
    shown.hidden = false;
    $("#source-name").textContent = name + " · " + image.original[0] + "×" + image.original[1] +
      (image.sx < 1 ? " (overlays drawn at " + image.width + "×" + image.height + ")" : "");
    for (const b of document.querySelectorAll("#samples button")) b.setAttribute("aria-pressed", b.dataset.name === state.sample ? "true" : "false");
    await explainAll();
  }

  async function pickSample(name, keepTarget) {
    busy(1);
    try {
      const response = await fetch("api/samples/" + encodeURIComponent(name));
      if (!response.ok) {
        $("#banner").hidden = false;
        $("#banner").textContent = "sample " + name + ": HTTP " + response.status;
        return;
      }
      state.sample = name;
      if (!keepTarget) state.target = "";
      saveState();
      await setImage(await response.blob(), name);
    } finally {
      busy(-1);
    }
  }

  function upload(file) {
    if (!file) return;
    state.sample = "";
    state.target = "";
    saveState();
    setImage(file, file.name || "pasted image");
  }

  // --- state in the URL ---------------------------------------------------------------------

  function saveState() {
    const p = new URLSearchParams();
    p.set("model", state.model);
    if (state.sample) p.set("sample", state.sample);
    p.set("methods", state.methods.join(","));
    if (state.target) p.set("target", state.target);
    if (state.layer) p.set("layer", state.layer);
    p.set("topk", String(state.topk));
    p.set("scale", state.scale);
    p.set("cmap", state.cmap);
    p.set("sign", state.sign);
    p.set("overlay", state.overlay);
    p.set("alpha", String(state.alpha));
    history.replaceState(null, "", "#" + p.toString());
  }

  function loadState() {
    const p = new URLSearchParams(location.hash.slice(1));
    const get = (k, d) => (p.has(k) ? p.get(k) : d);
    state.model = get("model", "");
    state.sample = get("sample", "");
    state.methods = get("methods", "").split(",").filter(Boolean);
    state.target = get("target", "");
    state.layer = get("layer", "");
    state.topk = [8, 16, 32, 64].includes(Number(get("topk", "16"))) ? Number(get("topk", "16")) : 16;
    state.scale = get("scale", "shared") === "own" ? "own" : "shared";
    state.cmap = get("cmap", "auto");
    if (state.cmap !== "auto" && !config.colormaps[state.cmap]) state.cmap = "auto";
    state.sign = ["auto", "signed", "unsigned"].includes(get("sign", "auto")) ? get("sign", "auto") : "auto";
    state.overlay = ["auto", "on", "off"].includes(get("overlay", "auto")) ? get("overlay", "auto") : "auto";
    const alpha = parseFloat(get("alpha", String(config.defaults.alpha)));
    state.alpha = Number.isFinite(alpha) ? Math.min(Math.max(alpha, 0), 1) : config.defaults.alpha;
  }

  function showControls() {
    $("#cmap").value = state.cmap;
    $("#sign").value = state.sign;
    $("#overlay").value = state.overlay;
    $("#topk").value = String(state.topk);
    $("#alpha").value = String(state.alpha);
    $("#alpha-value").textContent = state.alpha.toFixed(2);
    for (const r of document.querySelectorAll("input[name=scale]")) r.checked = r.value === state.scale;
  }

  // --- the model ----------------------------------------------------------------------------

  async function chooseModel(name) {
    model = models.find((m) => m.name === name) || models[0];
    state.model = model.name;
    $("#model").value = model.name;
    const methods = model.methods;
    state.methods = state.methods.filter((m) => methods.includes(m));
    if (!state.methods.length) state.methods = DEFAULT_METHODS.filter((m) => methods.includes(m));
    const box = $("#methods");
    box.replaceChildren(Object.assign(document.createElement("legend"), { textContent: "Methods" }));
    for (const m of methods) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox";
      input.value = m;
      input.checked = state.methods.includes(m);
      input.addEventListener("change", () => {
        state.methods = methods.filter((x) => (x === m ? input.checked : state.methods.includes(x)));
        saveState();
        explainAll();
      });
      label.append(input, " " + m);
      box.append(label);
    }
    const r = await request("api/models/" + encodeURIComponent(model.name) + "/layers");
    const select = $("#layer");
    select.replaceChildren();
    if (r.error) { showError($("#fmaps"), r.error); layers = null; } else {
      layers = r.body;
      for (const l of spatialLayers()) {
        const o = document.createElement("option");
        o.value = l.name;
        o.textContent = l.name + " · " + l.type + " · " + l.output_shape.join("×") + (l.calls > 1 ? " · called " + l.calls + "×" : "");
        select.append(o);
      }
      if (!spatialLayers().some((l) => l.name === state.layer)) state.layer = layers.default_cam_layer || (spatialLayers()[0] || {}).name || "";
      select.value = state.layer;
      $("#layer-info").textContent = "Grad-CAM's default layer: " + (layers.default_cam_layer || "-");
    }
    saveState();
  }

  // --- start --------------------------------------------------------------------------------

  function wire() {
    $("#model").addEventListener("change", async (ev) => {
      state.target = "";
      state.layer = "";
      state.methods = [];
      await chooseModel(ev.target.value);
      explainAll();
    });
    $("#file").addEventListener("change", (ev) => upload(ev.target.files[0]));
    const drop = $("#drop");
    drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (ev) => {
      ev.preventDefault();
      drop.classList.remove("over");
      upload(ev.dataTransfer.files[0]);
    });
    document.addEventListener("paste", (ev) => {
      const item = [...(ev.clipboardData ? ev.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
      if (item) upload(item.getAsFile());
    });
    const redraw = () => { saveState(); drawGrid(); };
    $("#cmap").addEventListener("change", (ev) => { state.cmap = ev.target.value; redraw(); });
    $("#sign").addEventListener("change", (ev) => { state.sign = ev.target.value; redraw(); });
    $("#overlay").addEventListener("change", (ev) => { state.overlay = ev.target.value; redraw(); });
    for (const r of document.querySelectorAll("input[name=scale]")) {
      r.addEventListener("change", () => { state.scale = r.value; redraw(); });
    }
    $("#alpha").addEventListener("input", (ev) => {
      state.alpha = parseFloat(ev.target.value);
      $("#alpha-value").textContent = state.alpha.toFixed(2);
      redraw();
    });
    $("#layer").addEventListener("change", (ev) => { state.layer = ev.target.value; saveState(); loadLayer(); });
    $("#topk").addEventListener("change", (ev) => { state.topk = Number(ev.target.value); saveState(); loadLayer(); });
    $("#export").addEventListener("click", () => exportReport());
    $("#checks").addEventListener("click", () => runChecks());
    $("#fv-start").addEventListener("click", () => startFeatureVis());
    $("#fv-cancel").addEventListener("click", () => cancelFeatureVis());
    $("#fv-target").addEventListener("click", () => {
      const panel = $("#fv-panel");
      setTarget(panel.dataset.layer + ":" + panel.dataset.channel);
    });
  }

  async function main() {
    wire();
    const c = await request("api/config");
    if (c.error) { $("#banner").hidden = false; $("#banner").textContent = errorText(c.error); return; }
    config = c.body;
    $("#server").textContent = "server " + config.server;
    for (const name of Object.keys(config.colormaps)) {
      const o = document.createElement("option");
      o.value = name;
      o.textContent = name + " (" + config.colormaps[name].kind + ")";
      $("#cmap").append(o);
    }
    loadState();
    showControls();
    const m = await request("api/models");
    if (m.error) {
      const banner = $("#banner");
      banner.hidden = false;
      banner.textContent = errorText(m.error);
      document.body.dataset.ready = "error";
      return;
    }
    models = m.body;
    if (!models.length) {
      $("#banner").hidden = false;
      $("#banner").textContent = "the server serves no model";
      return;
    }
    for (const info of models) {
      const o = document.createElement("option");
      o.value = info.name;
      o.textContent = info.name + " (" + info.channels + "×" + info.height + "×" + info.width + ", " + info.num_classes + " classes)";
      $("#model").append(o);
    }
    await chooseModel(state.model);
    const s = await request("api/samples");
    if (!s.error) {
      for (const name of s.body.names) {
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.name = name;
        b.title = name;
        const img = document.createElement("img");
        img.alt = "sample " + name;
        img.src = "api/samples/" + encodeURIComponent(name);
        b.append(img);
        b.addEventListener("click", () => pickSample(name));
        $("#samples").append(b);
      }
    }
    document.body.dataset.ready = "yes";
    if (state.sample) await pickSample(state.sample, true);
  }

  main();
})();
