// The feedback studio page: render the round from /api/state, save each pick with /api/picks, train with /api/train.
// The server's answer is the truth: after every save the page shows the picks the server wrote to picks.json.
"use strict";

const $ = (selector) => document.querySelector(selector);
let picks = new Set();
let target = 10;
let training = { phase: "idle" };
let saving = Promise.resolve(); // saves run one after another, in click order

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  Object.entries(attributes).forEach(([name, value]) => node.setAttribute(name, value));
  node.append(...children);
  return node;
}

function pixelateWhenSmall(img) { // 64x64 shapes-world images stay crisp when enlarged
  img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < img.clientWidth));
}

function render(state) {
  const round = state.round;
  $("#style-name").textContent = `style: ${round.style}`;
  $("#round-info").textContent =
    `${round.prompts.length} prompts × ${round.per_prompt} candidates · base model ${round.base_model} · ${round.folder}`;
  if (state.reference) {
    document.querySelectorAll("#reference img, #header-reference").forEach((img) => {
      pixelateWhenSmall(img);
      img.src = state.reference;
      img.hidden = false;
    });
  }
  const byPrompt = new Map();
  state.candidates.forEach((c) => {
    if (!byPrompt.has(c.prompt_index)) byPrompt.set(c.prompt_index, []);
    byPrompt.get(c.prompt_index).push(c);
  });
  const main = $("#prompts");
  main.replaceChildren();
  byPrompt.forEach((candidates, p) => {
    const best = candidates.reduce((a, b) => (b.text_score > a.text_score ? b : a));
    const cards = element("div", { class: "cards" });
    candidates.forEach((c) => {
      const img = element("img", { src: c.url, alt: `candidate ${c.file}`, loading: "lazy" });
      pixelateWhenSmall(img);
      const style = c.style_score === null ? "" : `style ${c.style_score.toFixed(3)}`;
      const scores = element("span", { class: "scores" }, `text ${c.text_score.toFixed(3)}`, element("span", {}, style));
      const card = element(
        "button",
        { type: "button", class: "card", "data-file": c.file, "aria-pressed": "false", title: c.file },
        img, scores,
      );
      if (c === best) card.append(element("span", { class: "best", title: "best CLIP text score of this prompt" }, "★ best"));
      card.addEventListener("click", () => toggle(c.file));
      cards.append(card);
    });
    const heading = element(
      "h2", {}, element("span", { class: "index" }, `${p + 1}.`), round.prompts[p],
      element("span", { class: "picked-here" }),
    );
    main.append(element("section", { class: "prompt", "data-prompt": p }, heading, cards));
  });
  showPicks(state.picks, state.target);
  showTraining(state.training);
}

function showPicks(files, newTarget) {
  picks = new Set(files);
  target = newTarget;
  document.querySelectorAll(".card").forEach((card) => {
    card.setAttribute("aria-pressed", String(picks.has(card.dataset.file)));
  });
  document.querySelectorAll(".prompt").forEach((section) => {
    const n = section.querySelectorAll('.card[aria-pressed="true"]').length;
    section.querySelector(".picked-here").textContent = n ? `${n} picked` : "";
  });
  $("#count").textContent = picks.size;
  $("#target").textContent = target;
  $("#counter").classList.toggle("reached", picks.size >= target);
  $("#train").disabled = picks.size === 0 || running();
}

function toggle(file) {
  if (running()) return say("Picks are locked while Round 2 trains on them", true);
  const picked = !picks.has(file);
  const shown = new Set(picks);
  picked ? shown.add(file) : shown.delete(file);
  showPicks([...shown], target); // immediate feedback; the server's answer below replaces it
  say("Saving…");
  saving = saving.then(async () => {
    try {
      const saved = await api("/api/picks", { file, picked });
      showPicks(saved.picks, saved.target);
      say("Saved");
    } catch (error) {
      say(`Not saved: ${error.message}`, true);
      const state = await api("/api/state").catch(() => null);
      if (state) showPicks(state.picks, state.target);
    }
  });
}

function say(message, failed = false) {
  $("#save-status").textContent = message;
  $("#save-status").classList.toggle("failed", failed);
}

// ---- Round 2 --------------------------------------------------------------------------------------------------
const running = () => ["loading", "training", "sampling"].includes(training.phase);

function minutes(seconds) {
  const s = Math.round(seconds || 0);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function showTraining(job) {
  training = job;
  const phase = $("#train-phase");
  const bar = $("#train-progress");
  const result = $("#result");
  phase.classList.toggle("error", job.phase === "error");
  $("#train-detail").textContent = "";
  bar.hidden = !running();
  bar.removeAttribute("value"); // indeterminate unless the trainer has reported a step
  result.hidden = true;
  if (job.phase === "idle") {
    phase.textContent = `Pick about ${target} images, then train Round 2 on them.`;
  } else if (job.phase === "loading") {
    phase.textContent = `Loading the base model… (${minutes(job.elapsed)})`;
  } else if (job.phase === "training") {
    if (job.step) {
      bar.max = job.steps;
      bar.value = job.step;
      const loss = job.loss === null || job.loss === undefined ? "" : ` · loss ${job.loss.toFixed(3)}`;
      phase.textContent = `Training on ${job.trained_on} picks: step ${job.step} / ${job.steps}${loss} · ${minutes(job.elapsed)}`;
    } else {
      phase.textContent = `Training ${job.steps} steps on ${job.trained_on} picks · ${minutes(job.elapsed)}`;
    }
  } else if (job.phase === "sampling") {
    phase.textContent = `Trained. Sampling the Round-2 adapter… (${minutes(job.elapsed)})`;
  } else if (job.phase === "done") {
    const how = job.earlier ? `from an earlier session${job.method ? ` (${job.method} selection)` : ""}`
      : `trained on ${job.trained_on} picks in ${minutes(job.seconds)}`;
    phase.textContent = `Round-2 adapter ${how}.`;
    $("#train-detail").textContent = `Saved in ${job.adapter}`;
    if (job.grid) {
      result.querySelector("a").href = job.grid;
      const img = result.querySelector("img");
      pixelateWhenSmall(img);
      img.src = job.grid;
      result.querySelector("figcaption").textContent =
        "Samples with the Round-2 adapter (rows: the first prompts; candidates' sampling settings). Click to enlarge.";
      result.hidden = false;
    }
  } else if (job.phase === "error") {
    phase.textContent = `Training failed: ${job.error}`;
  }
  document.body.classList.toggle("locked", running());
  $("#train").disabled = picks.size === 0 || running();
  $("#train").textContent = running() ? "Training…" : "Train Round 2";
  if (running()) setTimeout(poll, 1000);
}

async function poll() {
  try {
    showTraining(await api("/api/train"));
  } catch (error) {
    $("#train-phase").textContent = `Lost contact with the server (${error.message}); retrying…`;
    setTimeout(poll, 3000);
  }
}

async function train() {
  if (picks.size < target && !confirm(`You picked ${picks.size} of ${target}. Train Round 2 on these ${picks.size}?`)) {
    return;
  }
  const replace = training.phase === "done" || training.phase === "error";
  if (training.phase === "done" && !confirm("Replace the existing Round-2 adapter?")) return;
  await saving; // train on exactly the saved picks
  try {
    showTraining(await api("/api/train", { overwrite: replace }));
  } catch (error) {
    $("#train-phase").textContent = `Could not start: ${error.message}`;
  }
}

// ---- keyboard -------------------------------------------------------------------------------------------------
function move(key) {
  const cards = [...document.querySelectorAll(".card")];
  const current = cards.indexOf(document.activeElement);
  let next = current === -1 ? 0 : current;
  if (current !== -1 && (key === "ArrowLeft" || key === "h")) next = Math.max(0, current - 1);
  if (current !== -1 && (key === "ArrowRight" || key === "l")) next = Math.min(cards.length - 1, current + 1);
  if (current !== -1 && ["ArrowUp", "ArrowDown", "k", "j"].includes(key)) {
    const sections = [...document.querySelectorAll(".prompt")];
    const section = cards[current].closest(".prompt");
    const column = [...section.querySelectorAll(".card")].indexOf(cards[current]);
    const s = sections.indexOf(section) + (key === "ArrowUp" || key === "k" ? -1 : 1);
    if (s >= 0 && s < sections.length) {
      const row = [...sections[s].querySelectorAll(".card")];
      next = cards.indexOf(row[Math.min(column, row.length - 1)]);
    }
  }
  cards[next]?.focus();
  cards[next]?.scrollIntoView({ block: "nearest" });
}

document.addEventListener("keydown", (event) => {
  const help = $("#help");
  if (event.key === "?") {
    help.open ? help.close() : help.showModal();
    event.preventDefault();
  } else if (!help.open && !event.ctrlKey && !event.metaKey && !event.altKey &&
    ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "h", "j", "k", "l"].includes(event.key)) {
    move(event.key);
    event.preventDefault();
  } else if (event.key === " " && !document.activeElement.classList.contains("card") && !help.open) {
    move(event.key); // nothing focused yet: Space starts at the first candidate instead of scrolling
    event.preventDefault();
  }
});

$("#help-button").addEventListener("click", () => $("#help").showModal());
$("#train").addEventListener("click", train);
api("/api/state").then(render).catch((error) => {
  $("#prompts").textContent = `Could not load the round: ${error.message}`;
});
