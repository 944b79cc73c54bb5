// The vision-maas playground: plain browser JavaScript against the documented HTTP API.
// No framework and no CDN: the page must work on an offline machine.
"use strict";

(() => {
  const { $, el, ApiError, api, showError } = window.maas;

  // A fixed palette (class index -> colour), so a class keeps its colour across runs and views.
  const PALETTE = [
    [230, 25, 75], [60, 180, 75], [67, 99, 216], [245, 130, 49], [145, 30, 180],
    [66, 212, 244], [240, 50, 230], [154, 99, 36], [70, 153, 144], [128, 0, 0],
    [128, 128, 0], [0, 0, 117], [191, 239, 69], [250, 190, 212], [220, 190, 255],
    [170, 255, 195], [255, 216, 177], [255, 250, 200], [169, 169, 169], [255, 225, 25],
  ];
  const BACKGROUND_LABELS = new Set(["background", "__background__"]);
  const DISPLAY_SIDE = 512; // small inputs (digits, scenes) are upscaled to about this many pixels

  const state = { models: new Map(), file: null, fileUrl: null, redraw: null };

  // ---- helpers ------------------------------------------------------------------------

  const colour = (index) => PALETTE[((index % PALETTE.length) + PALETTE.length) % PALETTE.length];
  const css = (rgb) => `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
  const inkOn = (rgb) => (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 150 ? "#000" : "#fff");
  const pngSrc = (b64) => `data:image/png;base64,${b64}`;

  function b64ToBlob(b64, type) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Blob([bytes], { type });
  }

  function scaleFor(width, height) {
    // Whole-number upscaling keeps small digits crisp; large photos are left at full size.
    return Math.max(1, Math.min(8, Math.floor(DISPLAY_SIDE / Math.max(width, height))));
  }

  function sizedCanvas(width, height, testid) {
    const scale = scaleFor(width, height);
    const canvas = el("canvas", { "data-testid": testid, width: width * scale, height: height * scale });
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = scale === 1;
    return { canvas, ctx, scale };
  }

  async function fileBitmap() {
    if (!state.file || !state.file.type.startsWith("image/")) return null;
    try {
      return await createImageBitmap(state.file);
    } catch {
      return null; // a format this browser cannot draw: the lists still show every result
    }
  }

  // ---- status and errors ----------------------------------------------------------------

  function setState(value) {
    $("output").dataset.state = value;
  }

  function clearOutput() {
    $("error").hidden = true;
    $("results").replaceChildren();
    $("raw-box").hidden = true;
    state.redraw = null;
  }

  function showRaw(bodies) {
    // Base64 images would drown the JSON: show their length instead.
    const shorten = (key, value) =>
      typeof value === "string" && value.length > 120 ? `${value.slice(0, 48)}… (${value.length} chars)` : value;
    $("raw").textContent = bodies.map((b) => JSON.stringify(b, shorten, 2)).join("\n\n");
    $("raw-box").hidden = false;
  }

  // ---- models -----------------------------------------------------------------------------

  function currentModel() {
    return state.models.get($("model").value) || null;
  }

  async function loadModels() {
    const select = $("model");
    const wanted = select.value || new URLSearchParams(location.search).get("model");
    try {
      const body = await api("/v1/models");
      state.models = new Map(body.models.map((m) => [m.name, m]));
      select.replaceChildren(
        ...body.models.map((m) => el("option", { value: m.name, text: `${m.name} — ${m.task.replace("_", " ")}` })),
      );
      if (wanted && state.models.has(wanted)) select.value = wanted;
      $("error").hidden = true;
    } catch (exc) {
      state.models = new Map();
      select.replaceChildren(el("option", { value: "", text: "No models (see the error)" }));
      showError(exc);
    }
    onModelChange();
  }

  function onModelChange() {
    const model = currentModel();
    const task = model ? model.task : "";
    for (const node of document.querySelectorAll("[data-tasks]")) {
      node.hidden = !node.dataset.tasks.split(" ").includes(task);
    }
    $("file-field").hidden = !model || task === "generation";
    const video = task === "video_classification";
    $("file").accept = video ? "video/*,image/gif,image/webp,image/png" : "image/*";
    $("drop-text").firstChild.textContent = video ? "Drop a video clip here, or " : "Drop an image here, or ";
    $("run").disabled = !model;
    const info = $("model-info");
    info.replaceChildren();
    if (!model) return;
    const weights = model.weights.source === "random" ? "random" : `${model.weights.source}:${model.weights.name}`;
    info.append(`${model.task.replace("_", " ")} · ${model.labels.length} labels · weights ${weights}`);
    if (model.weights.source === "random") {
      info.append(" ", el("span", { class: "badge", text: "random weights: scores are meaningless" }));
    }
    if (model.description) info.append(el("br"), model.description);
    const labels = $("gen-label");
    labels.replaceChildren(el("option", { value: "", text: "random" }), ...model.labels.map((l) => el("option", { value: l, text: l })));
    state.redraw = null;
  }

  // ---- files ------------------------------------------------------------------------------

  function setFile(file) {
    state.file = file || null;
    if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
    state.fileUrl = file ? URL.createObjectURL(file) : null;
    $("file-name").textContent = file ? `${file.name} (${file.type || "unknown type"}, ${file.size} bytes)` : "";
    const preview = $("preview");
    preview.replaceChildren();
    if (!file) return;
    if (file.type.startsWith("image/")) preview.append(el("img", { src: state.fileUrl, alt: `Selected image ${file.name}` }));
    else if (file.type.startsWith("video/")) {
      preview.append(el("video", { src: state.fileUrl, controls: "", muted: "", "aria-label": `Selected clip ${file.name}` }));
    }
  }

  function wireDropzone() {
    const zone = $("dropzone");
    const stop = (event) => {
      event.preventDefault();
      event.stopPropagation();
    };
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => {
        stop(event);
        zone.classList.add("over");
      });
    }
    zone.addEventListener("dragleave", (event) => {
      stop(event);
      zone.classList.remove("over");
    });
    zone.addEventListener("drop", (event) => {
      stop(event);
      zone.classList.remove("over");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) {
        $("file").files = files;
        setFile(files[0]);
      }
    });
    $("file").addEventListener("change", () => setFile($("file").files[0]));
  }

  // ---- requests -----------------------------------------------------------------------------

  function paramsFor(task) {
    const params = new URLSearchParams();
    const number = (id) => {
      const value = $(id).value.trim();
      if (value !== "") params.set(id, value);
    };
    if (task === "classification" || task === "video_classification") number("top_k");
    if (task === "detection") {
      number("score_threshold");
      number("max_detections");
    }
    if (task === "segmentation") number("min_fraction");
    if (task === "denoising" && $("return_latent").checked) params.set("return_latent", "true");
    return params;
  }

  function upload(model, route, params) {
    const form = new FormData();
    form.append(model.task === "video_classification" ? "video" : "image", state.file, state.file.name);
    const query = params && params.toString() ? `?${params}` : "";
    return api(`/v1/models/${encodeURIComponent(model.name)}:${route}${query}`, { method: "POST", body: form });
  }

  function generate(model) {
    const body = { num_images: Number($("num_images").value || 1) };
    if ($("seed").value.trim() !== "") body.seed = Number($("seed").value);
    if ($("gen-label").value !== "") body.label = $("gen-label").value;
    return api(`/v1/models/${encodeURIComponent(model.name)}:generate`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  async function run(event) {
    event.preventDefault();
    const model = currentModel();
    if (!model) return;
    clearOutput();
    if (model.task !== "generation" && !state.file) {
      showError(new ApiError(0, "no_file", "choose or drop a file first"));
      setState("error");
      return;
    }
    $("run").disabled = true;
    setState("running");
    $("status").textContent = `Running ${model.name}…`;
    const started = performance.now();
    try {
      await runTask(model);
      $("status").textContent = `${model.name}: done in ${Math.round(performance.now() - started)} ms`;
      setState("done");
    } catch (exc) {
      showError(exc);
      $("status").textContent = `${model.name}: failed`;
      setState("error");
    } finally {
      $("run").disabled = false;
    }
  }

  async function runTask(model) {
    const results = $("results");
    if (model.task === "generation") {
      const body = await generate(model);
      results.append(meta(body), renderGenerated(body));
      showRaw([body]);
      return;
    }
    const explain = model.task === "classification" && $("explain").checked;
    const [body, explained] = await Promise.all([
      upload(model, "predict", paramsFor(model.task)),
      explain ? upload(model, "explain", null) : Promise.resolve(null),
    ]);
    const prediction = body.predictions[0];
    results.append(meta(body));
    if (model.task === "classification" || model.task === "video_classification") {
      results.append(renderLabels(prediction.labels));
      if (explained) results.append(renderExplanations(explained.explanations));
    } else if (model.task === "detection") {
      results.append(renderDetections(prediction.detections, await fileBitmap()));
    } else if (model.task === "segmentation") {
      results.append(await renderSegmentation(prediction, await fileBitmap()));
    } else if (model.task === "denoising") {
      results.append(renderDenoised(prediction));
    }
    showRaw(explained ? [body, explained] : [body]);
  }

  // ---- rendering ------------------------------------------------------------------------------

  function meta(body) {
    const line = el("p", { class: "hint", "data-testid": "result-meta" });
    line.append(`${body.model} · version ${body.model_version} · weights ${body.weights}`);
    if (body.warning) line.append(" ", el("span", { class: "badge", "data-testid": "warning", text: body.warning }));
    return line;
  }

  function scoreBar(score) {
    const bar = el("span", { class: "bar", "aria-hidden": "true" }, el("span"));
    bar.firstChild.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
    return bar;
  }

  function renderLabels(labels) {
    const list = el("ol", { class: "labels", "aria-label": "Labels, highest score first" });
    for (const item of labels) {
      list.append(
        el(
          "li",
          { "data-testid": "label", "data-label": item.label, "data-score": item.score },
          el("span", { class: "name", text: item.label }),
          scoreBar(item.score),
          el("span", { class: "score", text: item.score.toFixed(3) }),
        ),
      );
    }
    return el("section", {}, el("h2", { text: "Labels" }), list);
  }

  function renderExplanations(explanations) {
    const section = el("section", {}, el("h2", { text: "Explanation" }));
    for (const item of explanations) {
      const caption = `${item.method.replace("_", "-")} for “${item.label}” (score ${item.score.toFixed(3)})`;
      section.append(
        el(
          "div",
          { class: "pair" },
          el(
            "figure",
            {},
            el("img", { src: pngSrc(item.overlay), alt: `Explanation overlay: ${caption}`, "data-testid": "explanation" }),
            el("figcaption", { text: caption }),
          ),
          el(
            "figure",
            {},
            el("img", { src: pngSrc(item.heatmap), alt: "Heatmap: brighter is more important", "data-testid": "heatmap" }),
            el("figcaption", { text: "heatmap" }),
          ),
        ),
      );
    }
    return section;
  }

  function renderDetections(detections, bitmap) {
    const section = el("section", {}, el("h2", { text: `Detections (${detections.length})` }));
    if (bitmap) {
      const { canvas, ctx, scale } = sizedCanvas(bitmap.width, bitmap.height, "detection-canvas");
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `The image with ${detections.length} detection boxes`);
      ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 200));
      const font = Math.max(12, line * 6);
      ctx.font = `bold ${font}px system-ui, sans-serif`;
      ctx.textBaseline = "top";
      for (const d of detections) {
        const rgb = colour(d.index);
        const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
        ctx.lineWidth = line;
        ctx.strokeStyle = css(rgb);
        ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
        const text = `${d.label} ${d.score.toFixed(2)}`;
        const width = ctx.measureText(text).width + 2 * line;
        const top = y1 - font - 2 * line >= 0 ? y1 - font - 2 * line : y1;
        ctx.fillStyle = css(rgb);
        ctx.fillRect(x1 - line / 2, top, width, font + 2 * line);
        ctx.fillStyle = inkOn(rgb);
        ctx.fillText(text, x1 + line / 2, top + line);
      }
      section.append(el("figure", { class: "stage" }, canvas));
    }
    if (!detections.length) {
      section.append(el("p", { "data-testid": "empty", text: "No detection at or above the score threshold." }));
      return section;
    }
    const list = el("ul", { class: "boxes", "aria-label": "Detections" });
    for (const d of detections) {
      const box = d.box.map((v) => Math.round(v));
      list.append(
        el(
          "li",
          { "data-testid": "box", "data-label": d.label, "data-score": d.score, "data-box": d.box.join(",") },
          el("span", { class: "swatch", style: `background:${css(colour(d.index))}`, "aria-hidden": "true" }),
          el("span", { class: "name", text: d.label }),
          el("span", { class: "score", text: d.score.toFixed(3) }),
          el("span", { class: "hint", text: `[${box.join(", ")}]` }),
        ),
      );
    }
    section.append(list);
    return section;
  }

  async function renderSegmentation(prediction, bitmap) {
    // The mask is a greyscale PNG whose pixel values are class indices: read them back exactly.
    const maskBitmap = await createImageBitmap(b64ToBlob(prediction.mask, "image/png"), {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
    const [w, h] = [maskBitmap.width, maskBitmap.height];
    const scratch = new OffscreenCanvas(w, h).getContext("2d", { willReadFrequently: true });
    scratch.drawImage(maskBitmap, 0, 0);
    const values = scratch.getImageData(0, 0, w, h).data;
    const background = new Set(prediction.classes.filter((c) => BACKGROUND_LABELS.has(c.label)).map((c) => c.index));
    if (!background.size) background.add(0);
    const overlay = new ImageData(w, h);
    let painted = 0;
    for (let i = 0; i < values.length; i += 4) {
      const index = values[i];
      if (background.has(index)) continue;
      const rgb = colour(index);
      overlay.data.set([rgb[0], rgb[1], rgb[2], 255], i);
      painted += 1;
    }
    const layer = new OffscreenCanvas(w, h);
    layer.getContext("2d").putImageData(overlay, 0, 0);

    const base = bitmap || maskBitmap;
    const { canvas, ctx } = sizedCanvas(base.width, base.height, "segmentation-canvas");
    canvas.dataset.maskPixels = String(painted);
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "The image with its class mask overlaid");
    const draw = () => {
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      if (bitmap) ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      ctx.globalAlpha = Number($("opacity").value);
      ctx.drawImage(layer, 0, 0, canvas.width, canvas.height);
      ctx.globalAlpha = 1;
    };
    draw();
    state.redraw = draw;

    const legend = el("ul", { class: "legend", "aria-label": "Classes in the mask" });
    for (const c of prediction.classes) {
      const swatch = background.has(c.index) ? "transparent" : css(colour(c.index));
      legend.append(
        el(
          "li",
          { "data-testid": "class", "data-label": c.label, "data-index": c.index, "data-fraction": c.fraction },
          el("span", { class: "swatch", style: `background:${swatch}`, "aria-hidden": "true" }),
          el("span", { class: "name", text: c.label }),
          el("span", { class: "score", text: `${(c.fraction * 100).toFixed(1)}%` }),
        ),
      );
    }
    return el("section", {}, el("h2", { text: "Segmentation" }), el("div", { class: "pair" }, el("figure", { class: "stage" }, canvas), legend));
  }

  function renderDenoised(prediction) {
    const section = el(
      "section",
      {},
      el("h2", { text: "Denoised" }),
      el(
        "div",
        { class: "pair" },
        el("figure", {}, el("img", { class: "pixels", src: state.fileUrl, alt: "Input image", "data-testid": "input-image" }), el("figcaption", { text: "input" })),
        el("figure", {}, el("img", { class: "pixels", src: pngSrc(prediction.image), alt: "Denoised image", "data-testid": "denoised" }), el("figcaption", { text: "denoised" })),
      ),
    );
    if (prediction.latent) {
      const values = prediction.latent.map((v) => v.toFixed(3)).join(", ");
      section.append(el("p", { class: "hint", "data-testid": "latent", text: `Latent code (${prediction.latent.length}): ${values}` }));
    }
    return section;
  }

  function renderGenerated(body) {
    const grid = el("div", { class: "grid" });
    body.images.forEach((item, i) => {
      grid.append(
        el(
          "figure",
          {},
          el("img", { class: "pixels", src: pngSrc(item.image), alt: `Generated image ${i + 1}: ${item.label}`, "data-testid": "generated", "data-label": item.label }),
          el("figcaption", { text: item.label }),
        ),
      );
    });
    return el(
      "section",
      {},
      el("h2", { text: `Generated (${body.images.length})` }),
      el("p", { "data-testid": "result-seed", "data-seed": body.seed, text: `Seed ${body.seed} (the same seed and label give the same images)` }),
      grid,
    );
  }

  // ---- start ----------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    wireDropzone();
    $("model").addEventListener("change", () => {
      clearOutput();
      onModelChange();
    });
    $("api-key").addEventListener("change", loadModels);
    $("opacity").addEventListener("input", () => state.redraw && state.redraw());
    $("run-form").addEventListener("submit", run);
    loadModels();
  });
})();
