// The playground's training page: upload a data set, train a model on it with a live curve from
// the job's event stream, read its report, and roll its versions out and back. Plain browser
// JavaScript against the documented HTTP API (the admin-scope routes), no library, no CDN.
"use strict";

(() => {
  const { $, el, ApiError, api, answer, errorFrom, authHeaders, showError } = window.maas;

  const TAR_BLOCK = 512;
  const RECONNECTS = 5; // in a row, without an event in between
  const state = { datasets: [], job: null, points: [], source: "live", versions: [] };

  // ---- helpers ----------------------------------------------------------------------------

  const fixed = (value, digits = 3) => (value === null || value === undefined ? "" : Number(value).toFixed(digits));
  const path = (...parts) => parts.map(encodeURIComponent).join("/");

  function hideError() {
    $("error").hidden = true;
  }

  async function attempt(work) {
    hideError();
    try {
      return await work();
    } catch (exc) {
      showError(exc);
      return undefined;
    }
  }

  function table(headers, rows, attrs = {}) {
    const head = el("tr", {}, ...headers.map((h) => el("th", { scope: "col", text: h })));
    return el("table", attrs, el("thead", {}, head), el("tbody", {}, ...rows));
  }

  // ---- 1. data sets -------------------------------------------------------------------------

  // A folder as a tar archive (POSIX ustar), built as a Blob of the files themselves: nothing is
  // read into memory. By hand: browsers have no archive writer, and ustar is a 512-byte header per file.
  function tarHeader(name, size) {
    const encoder = new TextEncoder();
    const header = new Uint8Array(TAR_BLOCK);
    const put = (text, offset, length) => header.set(encoder.encode(text).subarray(0, length), offset);
    let bytes = encoder.encode(name);
    let prefix = "";
    if (bytes.length > 100) {
      // Longer names go in two parts: a folder prefix (155 bytes at most) and the rest (100).
      const cut = name.lastIndexOf("/", name.length - 1);
      prefix = name.slice(0, cut);
      name = name.slice(cut + 1);
      bytes = encoder.encode(name);
      if (cut < 0 || bytes.length > 100 || encoder.encode(prefix).length > 155) {
        throw new ApiError(0, "name_too_long", `the file name ${prefix}/${name} is too long for a tar archive`);
      }
    }
    put(name, 0, 100);
    put("0000644\0", 100, 8); // mode
    put("0000000\0", 108, 8); // uid
    put("0000000\0", 116, 8); // gid
    put(`${size.toString(8).padStart(11, "0")}\0`, 124, 12);
    put("00000000000\0", 136, 12); // mtime 0: the same folder gives the same bytes, so the same data set
    put("        ", 148, 8); // the checksum counts its own field as spaces
    put("0", 156, 1); // a regular file
    put("ustar\0", 257, 6);
    put("00", 263, 2);
    put(prefix, 345, 155);
    const sum = header.reduce((total, byte) => total + byte, 0);
    put(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8);
    return header;
  }

  // The folder's files as LABEL/IMAGE (the chosen folder's own name dropped), hidden ones left out.
  function folderMembers(files) {
    const members = [];
    for (const file of files) {
      const parts = (file.webkitRelativePath || file.name).split("/").slice(1);
      if (!parts.length || parts.some((part) => part.startsWith("."))) continue;
      members.push({ name: parts.join("/"), file });
    }
    return members.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  function tarOf(members) {
    const parts = [];
    for (const { name, file } of members) {
      parts.push(tarHeader(name, file.size), file);
      const padding = (TAR_BLOCK - (file.size % TAR_BLOCK)) % TAR_BLOCK;
      if (padding) parts.push(new Uint8Array(padding));
    }
    parts.push(new Uint8Array(2 * TAR_BLOCK)); // the end: two empty blocks
    return new Blob(parts, { type: "application/x-tar" });
  }

  function chosenArchive() {
    const archive = $("archive").files[0];
    if (archive) return { blob: archive, name: archive.name };
    const files = $("folder").files;
    if (!files.length) throw new ApiError(0, "no_file", "choose a folder or an archive first");
    const members = folderMembers(files);
    if (!members.length) throw new ApiError(0, "no_file", "the folder holds no files (hidden ones are left out)");
    const folder = files[0].webkitRelativePath.split("/")[0] || "dataset";
    return { blob: tarOf(members), name: `${folder}.tar`, count: members.length };
  }

  // XMLHttpRequest rather than fetch: only it reports an upload's progress.
  function post(url, form, onProgress) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("POST", url);
      request.setRequestHeader("Accept", "application/json");
      for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
      request.upload.addEventListener("progress", (event) => onProgress(event.loaded, event.total));
      request.addEventListener("load", () => {
        try {
          resolve(answer(request.status, request.statusText, request.responseText));
        } catch (exc) {
          reject(exc);
        }
      });
      request.addEventListener("error", () => reject(new ApiError(0, "network_error", "could not reach the server")));
      request.send(form);
    });
  }

  async function upload(event) {
    event.preventDefault();
    const bar = $("upload-progress");
    $("upload").disabled = true;
    await attempt(async () => {
      const { blob, name } = chosenArchive();
      const form = new FormData();
      form.append("archive", blob, name);
      bar.hidden = false;
      bar.value = 0;
      const dataset = await post("/v1/datasets", form, (loaded, total) => {
        bar.value = total ? loaded / total : 0;
      });
      showDataset(dataset);
      await loadDatasets(dataset.id);
    });
    $("upload").disabled = false;
  }

  function showDataset(dataset) {
    const rows = Object.entries(dataset.classes)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([label, count]) => el("tr", { "data-testid": "dataset-class", "data-label": label, "data-count": count }, el("td", { text: label }), el("td", { text: count })));
    const info = $("dataset-info");
    info.replaceChildren(
      el("p", { "data-testid": "dataset-id", "data-id": dataset.id, text: `Data set ${dataset.id}: ${dataset.images} images in ${Object.keys(dataset.classes).length} classes` }),
      table(["class", "images"], rows, { class: "data" }),
    );
    if (dataset.rejected.length) {
      const list = el("ul", { class: "rejected", "aria-label": "Files not kept" });
      for (const item of dataset.rejected) {
        list.append(el("li", { "data-testid": "rejected", "data-file": item.file }, el("code", { text: item.file }), ` ${item.error}`));
      }
      info.append(el("p", { class: "hint", text: `${dataset.rejected.length} file(s) not kept:` }), list);
    }
  }

  async function loadDatasets(selected) {
    const select = $("dataset");
    const wanted = selected || select.value;
    const body = await api("/v1/datasets");
    state.datasets = body.datasets;
    select.replaceChildren(
      el("option", { value: "", text: body.datasets.length ? "Choose a data set" : "No data set yet: upload one" }),
      ...body.datasets.map((d) => el("option", { value: d.id, text: `${d.id} · ${d.images} images, ${Object.keys(d.classes).length} classes` })),
    );
    if (wanted && state.datasets.some((d) => d.id === wanted)) select.value = wanted;
  }

  // ---- 2. training --------------------------------------------------------------------------

  async function loadBaseModels() {
    const body = await api("/v1/models");
    const select = $("base_model");
    const classifiers = body.models.filter((m) => m.task === "classification");
    select.replaceChildren(...classifiers.map((m) => el("option", { value: m.name, text: m.name })));
    if (classifiers.some((m) => m.name === "digits_cnn")) select.value = "digits_cnn";
  }

  // Defaults and bounds from the API's own OpenAPI document: the contract is their one home.
  async function loadRequestSchema() {
    const openapi = await api("/openapi.json");
    const schema = ((openapi.components || {}).schemas || {}).TrainingJobRequest;
    if (!schema) return; // then only what is filled in or ticked is sent, and the server's defaults apply
    for (const input of document.querySelectorAll("#train-form [data-field]")) {
      const field = schema.properties[input.dataset.field];
      if (!field) continue;
      if (input.type === "checkbox") {
        input.checked = Boolean(field.default);
        input.dataset.set = "true";
      } else if (field.default !== undefined && input.value === "") input.value = field.default;
      if (field.minimum !== undefined) input.min = field.minimum;
      if (field.maximum !== undefined) input.max = field.maximum;
      if (field.description) input.title = field.description;
    }
  }

  function trainingRequest() {
    const request = {};
    for (const input of document.querySelectorAll("#train-form [data-field]")) {
      const field = input.dataset.field;
      if (input.type === "checkbox") {
        if (input.dataset.set) request[field] = input.checked; // a box neither loaded nor touched says nothing
      }
      else if (input.type === "number") {
        if (input.value.trim() !== "") request[field] = Number(input.value);
      } else request[field] = input.value.trim();
    }
    request.dataset = $("dataset").value;
    return request;
  }

  async function train(event) {
    event.preventDefault();
    $("train").disabled = true;
    await attempt(async () => {
      const job = await api("/v1/training/jobs", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(trainingRequest()),
      });
      startCurve();
      $("report").replaceChildren();
      showJob(job);
      await follow(job.id);
    });
    $("train").disabled = false;
  }

  // The job's Server-Sent Events, read from a fetch stream (EventSource cannot send the API key).
  async function follow(jobId) {
    let failures = 0;
    while (failures < RECONNECTS) {
      const response = await fetch(`/v1/training/jobs/${path(jobId)}/events`, {
        headers: { Accept: "text/event-stream", ...authHeaders() },
      });
      if (!response.ok) throw errorFrom(response.status, response.statusText, await response.text());
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let type = "";
      let data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        // A line ends at CRLF, LF or CR; a CR last in the buffer may be half of a CRLF: kept for later.
        const lines = buffer.split(/\r\n|\n|\r(?!$)/);
        buffer = lines.pop();
        for (const line of lines) {
          if (line === "") {
            if (data.length && (type === "progress" || type === "done")) {
              failures = 0;
              showJob(JSON.parse(data.join("\n")));
              if (type === "done") {
                await reader.cancel();
                return;
              }
            }
            type = "";
            data = [];
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const name = colon < 0 ? line : line.slice(0, colon);
            let text = colon < 0 ? "" : line.slice(colon + 1);
            if (text.startsWith(" ")) text = text.slice(1);
            if (name === "event") type = text;
            else if (name === "data") data.push(text);
          }
        }
      }
      failures += 1; // the stream ended before its done event: connect again
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    showJob(await api(`/v1/training/jobs/${path(jobId)}`));
  }

  function showJob(job) {
    state.job = job;
    const output = $("output");
    output.dataset.state = job.status;
    output.dataset.job = job.id;
    const p = job.progress;
    const parts = [`Job ${job.id} (${job.request.name}): ${job.status}`];
    if (p) {
      parts.push(`epoch ${p.epoch}/${p.epochs}, step ${p.step}`);
      if (p.loss !== null && p.loss !== undefined) parts.push(`loss ${fixed(p.loss, 4)}`);
      if (p.val_accuracy !== null && p.val_accuracy !== undefined) parts.push(`validation accuracy ${fixed(p.val_accuracy)}`);
      if (p.eta_s !== null && p.eta_s !== undefined && job.status === "running") parts.push(`ETA ${Math.round(p.eta_s)} s`);
    }
    if (job.version) parts.push(`version ${job.version}`);
    if (job.error) parts.push(job.error);
    $("job-status").textContent = parts.join(" · ");
    if (job.status === "failed") showError(new ApiError(0, "job_failed", job.error || "the job failed"));
    if (p && p.loss !== null && p.loss !== undefined) addPoint(p);
    if (job.report) {
      drawCurve(job.report.curve.map((c) => ({ x: c.epoch, loss: c.loss, accuracy: c.val_accuracy })), "report");
      showReport(job.report);
    }
    if (job.status === "succeeded") {
      $("versions-name").value = job.request.name;
      attempt(loadVersions);
    }
  }

  // ---- the curve ----------------------------------------------------------------------------

  function startCurve() {
    state.points = [];
    drawCurve([], "live");
  }

  function addPoint(progress) {
    // Live points in the order the job reported them; the report's curve, once it comes, by epoch.
    const last = state.points[state.points.length - 1];
    const same = last && last.epoch === progress.epoch && last.step === progress.step && last.loss === progress.loss;
    if (same) return;
    const point = { x: state.points.length + 1, epoch: progress.epoch, step: progress.step, loss: progress.loss, accuracy: progress.val_accuracy };
    state.points.push(point);
    if (state.source === "live") drawCurve(state.points, "live");
  }

  function drawCurve(points, source) {
    state.source = source;
    const canvas = $("curve");
    canvas.dataset.points = String(points.length);
    canvas.dataset.source = source;
    const ctx = canvas.getContext("2d");
    const [w, h] = [canvas.width, canvas.height];
    const pad = { left: 48, right: 48, top: 12, bottom: 28 };
    ctx.clearRect(0, 0, w, h);
    ctx.font = "12px system-ui, sans-serif";
    ctx.strokeStyle = "#d7dce5";
    ctx.fillStyle = "#5b6475";
    ctx.strokeRect(pad.left, pad.top, w - pad.left - pad.right, h - pad.top - pad.bottom);
    if (!points.length) {
      ctx.fillText("The curve appears as the job reports its progress.", pad.left + 8, pad.top + 20);
      return;
    }
    const xs = points.map((p) => p.x);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    const lossMax = Math.max(...points.map((p) => p.loss), 1e-9);
    const sx = (x) => pad.left + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (w - pad.left - pad.right);
    const sy = (fraction) => h - pad.bottom - fraction * (h - pad.top - pad.bottom);
    ctx.textAlign = "right";
    ctx.fillText(lossMax.toPrecision(3), pad.left - 4, pad.top + 10);
    ctx.fillText("0", pad.left - 4, h - pad.bottom);
    ctx.textAlign = "left";
    ctx.fillText("1", w - pad.right + 4, pad.top + 10);
    ctx.fillText("0", w - pad.right + 4, h - pad.bottom);
    ctx.textAlign = "center";
    const unit = source === "report" ? "epoch" : "update";
    ctx.fillText(`${unit} ${x0}`, pad.left + 24, h - 8);
    ctx.fillText(`${unit} ${x1}`, w - pad.right - 24, h - 8);
    const series = (values, colour) => {
      const drawn = points.filter((p) => values(p) !== null && values(p) !== undefined);
      ctx.strokeStyle = colour;
      ctx.fillStyle = colour;
      ctx.lineWidth = 2;
      ctx.beginPath();
      drawn.forEach((p, i) => (i ? ctx.lineTo(sx(p.x), sy(values(p))) : ctx.moveTo(sx(p.x), sy(values(p)))));
      ctx.stroke();
      for (const p of drawn) ctx.fillRect(sx(p.x) - 2, sy(values(p)) - 2, 4, 4);
    };
    series((p) => p.loss / lossMax, "#b3261e");
    series((p) => p.accuracy, "#2457c5");
  }

  // ---- the report ---------------------------------------------------------------------------

  function showReport(report) {
    const summary = el("p", {
      "data-testid": "report-summary",
      "data-accuracy": report.accuracy,
      text: `Held out: ${report.val_images} images (trained on ${report.train_images}). Accuracy ${fixed(report.accuracy)} · macro precision ${fixed(report.macro_precision)} · macro recall ${fixed(report.macro_recall)} · macro F1 ${fixed(report.macro_f1)}`,
    });
    const perClass = report.labels.map((label) => {
      const m = report.per_class[label];
      return el(
        "tr",
        { "data-testid": "class-metrics", "data-label": label, "data-f1": m.f1 },
        el("th", { scope: "row", text: label }),
        el("td", { text: fixed(m.precision) }),
        el("td", { text: fixed(m.recall) }),
        el("td", { text: fixed(m.f1) }),
        el("td", { text: m.support }),
      );
    });
    const rows = report.confusion_matrix.map((counts, i) => {
      const total = counts.reduce((a, b) => a + b, 0) || 1;
      return el(
        "tr",
        {},
        el("th", { scope: "row", text: report.labels[i] }),
        ...counts.map((n, j) => {
          const cell = el("td", { "data-testid": "cm-cell", "data-true": report.labels[i], "data-predicted": report.labels[j], "data-count": n, text: n });
          // Shade by the share of the true class: blue where right, red where mistaken.
          const alpha = (0.1 + 0.6 * (n / total)).toFixed(2);
          if (n) cell.style.background = i === j ? `rgba(36, 87, 197, ${alpha})` : `rgba(179, 38, 30, ${alpha})`;
          return cell;
        }),
      );
    });
    $("report").replaceChildren(
      el("h2", { text: "Report" }),
      summary,
      table(["class", "precision", "recall", "F1", "support"], perClass, { class: "data", "data-testid": "per-class" }),
      el("h3", { text: "Confusion matrix (rows: true label, columns: predicted)" }),
      table(["true \\ predicted", ...report.labels], rows, { class: "data matrix", "data-testid": "confusion-matrix" }),
    );
  }

  // ---- 3. versions and rollout ------------------------------------------------------------------

  async function loadVersions() {
    const name = $("versions-name").value.trim();
    if (!name) throw new ApiError(0, "no_model", "name the model first");
    const [body, rollout] = await Promise.all([api(`/v1/models/${path(name)}/versions`), api(`/v1/models/${path(name)}/rollout`)]);
    state.versions = body.versions;
    const rows = body.versions.map((v) =>
      el(
        "tr",
        { "data-testid": "version", "data-version": v.version, "data-state": v.state, "data-percent": v.percent },
        el("td", {}, el("code", { text: v.version })),
        el("td", { text: v.state }),
        el("td", { text: `${v.percent}%` }),
        el("td", { text: fixed(v.report.accuracy) }),
        el("td", { text: fixed(v.report.macro_f1) }),
        el("td", { text: new Date(v.created * 1000).toISOString().replace("T", " ").slice(0, 19) }),
      ),
    );
    $("versions").replaceChildren(table(["version", "state", "traffic", "accuracy", "macro F1", "created (UTC)"], rows, { class: "data" }));
    const select = $("rollout-version");
    const previous = select.value;
    select.replaceChildren(...body.versions.map((v) => el("option", { value: v.version, text: `${v.version} (${v.state})` })));
    if (body.versions.some((v) => v.version === previous)) select.value = previous;
    showRollout(rollout);
  }

  function showRollout(rollout) {
    const line = $("rollout-state");
    line.dataset.stable = rollout.stable || "";
    line.dataset.canary = rollout.canary || "";
    line.dataset.percent = rollout.percent;
    const stable = rollout.stable ? `stable ${rollout.stable} (${rollout.canary ? 100 - rollout.percent : 100}%)` : "no stable version";
    const canary = rollout.canary ? ` · canary ${rollout.canary} (${rollout.percent}%)` : "";
    line.textContent = `${rollout.name}: ${stable}${canary}`;
  }

  async function rollout(event) {
    event.preventDefault();
    await attempt(async () => {
      const name = $("versions-name").value.trim();
      const body = { version: $("rollout-version").value, percent: Number($("rollout-percent").value) };
      showRollout(await api(`/v1/models/${path(name)}/rollout`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }));
      await loadVersions();
    });
  }

  async function rollback() {
    await attempt(async () => {
      const name = $("versions-name").value.trim();
      showRollout(await api(`/v1/models/${path(name)}/rollback`, { method: "POST" }));
      await loadVersions();
    });
  }

  // ---- start ------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("upload-form").addEventListener("submit", upload);
    $("train-form").addEventListener("submit", train);
    $("versions-form").addEventListener("submit", (event) => {
      event.preventDefault();
      attempt(loadVersions);
    });
    $("rollout-form").addEventListener("submit", rollout);
    $("rollback").addEventListener("click", rollback);
    const describe = () => {
      const archive = $("archive").files[0];
      const files = $("folder").files;
      $("upload-choice").textContent = archive ? `Archive ${archive.name} (${archive.size} bytes)` : files.length ? `Folder: ${folderMembers(files).length} files` : "";
    };
    $("folder").addEventListener("change", () => {
      $("archive").value = "";
      describe();
    });
    $("archive").addEventListener("change", () => {
      $("folder").value = "";
      describe();
    });
    for (const box of document.querySelectorAll("#train-form input[type=checkbox]")) {
      box.addEventListener("change", () => {
        box.dataset.set = "true";
      });
    }
    const load = () =>
      attempt(async () => {
        try {
          await Promise.all([loadDatasets(), loadBaseModels(), loadRequestSchema()]);
        } catch (exc) {
          if (exc instanceof ApiError && exc.status === 404) {
            throw new ApiError(404, exc.code, "this server has no training routes: they are on when `training.enabled` is set in its config");
          }
          throw exc;
        }
      });
    $("api-key").addEventListener("change", load);
    startCurve();
    load().then(() => {
      $("output").dataset.ready = "true";
    });
  });
})();
