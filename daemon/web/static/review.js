// The review queue's keys: 1-9 file into a class, 0 into Clases/_none/, x selects, u undoes, arrows move.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const flash = document.getElementById("flash");
  const cards = () => Array.from(document.querySelectorAll("#queue .card"));
  let focused = null;

  function focusCard(card) {
    if (!card) return;
    focused = card;
    card.focus();
    card.scrollIntoView({ block: "nearest" });
  }

  function open(card) {
    return !card.classList.contains("settled");
  }

  function step(by) {
    const all = cards();
    const at = all.indexOf(focused);
    focusCard(all[Math.min(all.length - 1, Math.max(0, at + by))]);
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "X-CSRF-Token": csrf },
      body: body,
      credentials: "same-origin",
    });
    return { response, html: await response.text() };
  }

  function replaceCard(id, html) {
    const old = document.getElementById("card-" + id);
    const holder = document.createElement("div");
    holder.innerHTML = html.trim();
    const fresh = holder.firstElementChild;
    if (old && fresh) {
      old.replaceWith(fresh);
      bind(fresh);
      return fresh;
    }
    return null;
  }

  async function fileInto(label, targets) {
    for (const card of targets) {
      const body = new URLSearchParams({ label: label });
      const { html } = await post("/entries/" + card.dataset.entry + "/file", body);
      replaceCard(card.dataset.entry, html);
    }
    const next = cards().find(open);
    focusCard(next || document.getElementById("card-" + targets[targets.length - 1].dataset.entry));
  }

  async function undo() {
    const { response, html } = await post("/undo", new URLSearchParams());
    const id = response.headers.get("X-Clipsort-Entry");
    if (id) {
      focusCard(replaceCard(id, html));
      flash.textContent = "undone";
    } else {
      flash.textContent = "nothing to undo";
    }
  }

  function chosen() {
    const selected = cards().filter((c) => c.querySelector(".select")?.checked && open(c));
    return selected.length ? selected : focused && open(focused) ? [focused] : [];
  }

  function labelFor(key, card) {
    const classes = JSON.parse(card.dataset.classes || "[]");
    if (key === "0") return card.dataset.negatives === "yes" ? "_none" : null;
    return classes[Number(key) - 1] || null;
  }

  function bind(card) {
    card.addEventListener("focus", () => { focused = card; });
    card.addEventListener("click", () => { focused = card; });
    card.querySelectorAll("button.file").forEach((button) => {
      button.addEventListener("click", (event) => {
        event.stopPropagation();
        fileInto(button.dataset.label, [card]);
      });
    });
  }

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.type !== "checkbox") return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (key === "ArrowDown" || key === "ArrowRight" || key === "j") { step(1); event.preventDefault(); }
    else if (key === "ArrowUp" || key === "ArrowLeft" || key === "k") { step(-1); event.preventDefault(); }
    else if (key === "x" && focused) { const box = focused.querySelector(".select"); if (box) box.checked = !box.checked; }
    else if (key === "u") { undo(); }
    else if (/^[0-9]$/.test(key)) {
      const targets = chosen();
      if (!targets.length) return;
      const label = labelFor(key, targets[0]);
      if (label) fileInto(label, targets);
      else flash.textContent = "no class on key " + key;
    }
  });

  cards().forEach(bind);
  focusCard(cards().find(open));
})();
