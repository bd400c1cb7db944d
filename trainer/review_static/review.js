// The review page: one crop at a time, keyboard only. Every answer goes to the server as it is given
// (POST /api/answer) and the page moves on only once the server has saved it.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const input = $("text");
  const message = $("message");
  const REVIEWED = new Set(["accepted", "corrected", "not_plate"]);
  let crops = [];       // in review order, as the server gives them
  let current = -1;     // index into crops of the crop shown; -1: none (all answered, or none at all)
  let history = [];     // crops shown before, for going back
  let busy = false;     // an answer is being saved: keys wait for it
  const images = new Map();

  function say(text, isError) {
    message.textContent = text;
    message.className = isError ? "error" : "";
  }

  async function api(path, body) {
    const options = body === undefined
      ? { cache: "no-store" }
      : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new Error(`the review server does not answer (${err.message})`);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
    }
    return data;
  }

  function image(crop) {
    let img = images.get(crop.key);
    if (!img) {
      img = new Image();
      img.src = "/image?key=" + encodeURIComponent(crop.key);
      images.set(crop.key, img);
    }
    return img;
  }

  // Scale (w, h) to fit (maxW, maxH), enlarging small crops up to `most` times.
  function fit(w, h, maxW, maxH, most) {
    const s = Math.min(maxW / w, maxH / h, most);
    return [Math.max(1, Math.round(w * s)), Math.max(1, Math.round(h * s)), s];
  }

  function draw(crop, img) {
    const plate = $("plate");
    const frame = $("frame");
    const ctx = plate.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    if (!crop.box) {
      const [w, h] = fit(img.naturalWidth, img.naturalHeight, 640, 240, 6);
      plate.width = w;
      plate.height = h;
      ctx.drawImage(img, 0, 0, w, h);
      frame.hidden = true;
      return;
    }
    // A frame with a box: the plate's region, with some of its surroundings, and the whole image beside it.
    const [x1, y1, x2, y2] = crop.box;
    const mx = (x2 - x1) * 0.25;
    const my = (y2 - y1) * 0.5;
    const sx = Math.max(0, x1 - mx);
    const sy = Math.max(0, y1 - my);
    const sw = Math.min(img.naturalWidth, x2 + mx) - sx;
    const sh = Math.min(img.naturalHeight, y2 + my) - sy;
    const [w, h, s] = fit(sw, sh, 640, 240, 6);
    plate.width = w;
    plate.height = h;
    ctx.drawImage(img, sx, sy, sw, sh, 0, 0, w, h);
    ctx.strokeStyle = "#f0f";
    ctx.lineWidth = 2;
    ctx.strokeRect((x1 - sx) * s, (y1 - sy) * s, (x2 - x1) * s, (y2 - y1) * s);
    const [fw, fh, fs] = fit(img.naturalWidth, img.naturalHeight, 360, 240, 1);
    frame.width = fw;
    frame.height = fh;
    const fctx = frame.getContext("2d");
    fctx.drawImage(img, 0, 0, fw, fh);
    fctx.strokeStyle = "#f0f";
    fctx.lineWidth = 2;
    fctx.strokeRect(x1 * fs, y1 * fs, (x2 - x1) * fs, (y2 - y1) * fs);
    frame.hidden = false;
  }

  function showCounts(counts) {
    $("reviewed").textContent = counts.reviewed;
    $("remaining").textContent = counts.remaining;
    $("skipped").textContent = counts.skipped;
    $("total").textContent = counts.total;
  }

  // The next crop to show after index `from`: the first with no answer at all, else the first skipped one,
  // each looked for in order after `from`, going round; -1 when every crop is reviewed.
  function nextOpen(from) {
    const n = crops.length;
    for (const wanted of [null, "skipped"]) {
      for (let k = 1; k <= n; k++) {
        const i = (((from + k) % n) + n) % n;
        if (crops[i].answer === wanted) return i;
      }
    }
    return -1;
  }

  function show(i) {
    current = i;
    const section = $("crop");
    section.dataset.key = i < 0 ? "" : crops[i].key;
    section.dataset.file = i < 0 ? "" : crops[i].file;
    section.hidden = i < 0;
    $("done").hidden = !(i < 0 && crops.length > 0);
    if (i < 0) {
      if (crops.length === 0) say("labels.tsv has no crops to review.", false);
      document.body.dataset.state = "done";
      return;
    }
    const crop = crops[i];
    $("file").textContent = crop.file;
    $("confidence").textContent = crop.confidence === null ? "–" : crop.confidence.toFixed(2);
    $("read").textContent = crop.read;
    const answer = $("answer");
    answer.textContent = crop.answer ? crop.answer.replace("_", " ") : "";
    answer.className = crop.answer || "";
    input.value = crop.answer === "not_plate" ? crop.read : crop.text;
    input.focus();
    input.select();
    const img = image(crop);
    const paint = () => { if (current === i) draw(crop, img); };
    if (img.complete && img.naturalWidth) paint(); else img.onload = paint;
    img.onerror = () => { if (current === i) say(`${crop.file}: the image cannot be shown`, true); };
    const next = nextOpen(i);
    if (next >= 0) image(crops[next]);  // fetched ahead, so the next crop shows at once
    document.body.dataset.state = "ready";
  }

  async function submit(verb) {
    if (busy || current < 0) return;
    const i = current;
    const crop = crops[i];
    if (verb === "skip" && REVIEWED.has(crop.answer)) {  // skipping a reviewed crop leaves its answer
      history.push(i);
      say("", false);
      show(nextOpen(i));
      return;
    }
    busy = true;
    input.readOnly = true;
    document.body.dataset.state = "saving";
    try {
      const data = await api("/api/answer", { key: crop.key, answer: verb, text: input.value });
      crops[i] = data.crop;
      showCounts(data.counts);
      history.push(i);
      say("", false);
      input.readOnly = false;
      show(nextOpen(i));
    } catch (err) {
      input.readOnly = false;
      say("Not saved: " + err.message, true);
      document.body.dataset.state = "error";
      input.focus();
    } finally {
      busy = false;
      input.readOnly = false;
    }
  }

  function back() {
    if (busy || crops.length === 0) return;
    let i = history.pop();
    if (i === undefined) i = current > 0 ? current - 1 : (current < 0 ? crops.length - 1 : -1);
    if (i >= 0) {
      say("", false);
      show(i);
    }
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.isComposing) return;
    const key = ev.key;
    if (key === "Enter") {
      ev.preventDefault();
      submit("accept");
    } else if (key === "Escape") {
      ev.preventDefault();
      submit("not_plate");
    } else if ((key === "Tab" && !ev.shiftKey) || key === "PageDown") {
      ev.preventDefault();
      submit("skip");
    } else if ((key === "Tab" && ev.shiftKey) || key === "PageUp") {
      ev.preventDefault();
      back();
    } else if (current >= 0 && document.activeElement !== input) {
      input.focus();  // typing always goes to the text box
    }
  });
  input.addEventListener("input", () => {
    const at = input.selectionStart;
    input.value = input.value.toUpperCase();
    input.setSelectionRange(at, at);
  });

  async function start() {
    document.body.dataset.state = "loading";
    try {
      const state = await api("/api/state");
      crops = state.crops;
      $("folder").textContent = state.folder;
      document.title = `Plate review: ${state.folder}`;
      showCounts(state.counts);
      show(nextOpen(-1));
    } catch (err) {
      say("Cannot load the crops: " + err.message, true);
      document.body.dataset.state = "error";
    }
  }

  start();
})();
